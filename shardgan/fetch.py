"""Where remote bytes come from: http(s) (urllib), `pipe:` commands, s3:// (boto3) and file: URLs.

A fetch copies one whole object. A try that fails on the way (connection refused or
dropped, timeout, HTTP 5xx, non-zero exit, fewer bytes than expected, a sha256 that
is not the manifest's) is repeated after a backoff that doubles; after the last try a
one-line DataError names the URL and the last reason. A missing object (HTTP 404, no
such key) fails at once: trying again will not make it appear.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.client
import io
import logging
import os
import posixpath
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO
from urllib.parse import urlsplit, urlunsplit

from .errors import DataError

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
RETRY_HTTP_CODES = (408, 429)
"""Besides 5xx: request timeout and rate limiting are worth another try."""


@dataclass(frozen=True)
class FetchPolicy:
    attempts: int = 5
    backoff_s: float = 1.0
    """Wait before the second try; doubles for each further one."""
    timeout_s: float = 60.0
    """Socket timeout (http, s3): a stalled connection fails the try."""


class RetryableError(Exception):
    """One try failed in a way another try may not."""


def fetch(url: str, out: BinaryIO, policy: FetchPolicy, num_bytes: int | None = None, sha256: str | None = None) -> None:
    """Copy the object at `url` into `out` (from its start), checking size and sha256 when given."""
    reason = ""
    for attempt in range(policy.attempts):
        if attempt:
            delay = policy.backoff_s * 2 ** (attempt - 1)
            log.warning("fetch of %s failed (%s); try %d of %d in %.1f s", url, reason, attempt + 1, policy.attempts, delay)
            time.sleep(delay)
        out.seek(0)
        out.truncate()
        try:
            _fetch_once(url, out, policy.timeout_s, num_bytes, sha256)
            return
        except RetryableError as e:
            reason = str(e)
    raise DataError(f"cannot fetch {url}: {reason} (gave up after {policy.attempts} tries)")


def fetch_bytes(url: str, policy: FetchPolicy) -> bytes:
    buffer = io.BytesIO()
    fetch(url, buffer, policy)
    return buffer.getvalue()


def _fetch_once(url: str, out: BinaryIO, timeout_s: float, num_bytes: int | None, sha256: str | None) -> None:
    digest = hashlib.sha256()
    count = 0
    try:
        with open_stream(url, timeout_s) as (stream, expected):
            while chunk := stream.read(CHUNK_BYTES):
                digest.update(chunk)
                out.write(chunk)
                count += len(chunk)
    except (OSError, http.client.HTTPException) as e:  # dropped, reset, timed out (socket.timeout is an OSError)
        raise RetryableError(f"{type(e).__name__} after {count} bytes: {e}".splitlines()[0]) from None
    expected = num_bytes if num_bytes is not None else expected
    if expected is not None and count != expected:
        raise RetryableError(f"got {count} of {expected} bytes")
    if sha256 is not None and digest.hexdigest() != sha256:
        raise RetryableError(f"sha256 {digest.hexdigest()[:12]}... differs from the manifest's {sha256[:12]}...")


@contextlib.contextmanager
def open_stream(url: str, timeout_s: float) -> Iterator[tuple[BinaryIO, int | None]]:
    """(readable stream, expected size or None) of one try; RetryableError or DataError if it cannot open."""
    scheme = urlsplit(url).scheme if not url.startswith("pipe:") else "pipe"
    opener = {"http": _open_http, "https": _open_http, "pipe": _open_pipe, "s3": _open_s3, "file": _open_file}.get(scheme)
    if opener is None:
        raise DataError(f"{url}: unsupported URL scheme {scheme!r} (use http(s)://, s3://, file: or pipe:COMMAND)")
    with opener(url, timeout_s) as opened:
        yield opened


@contextlib.contextmanager
def _open_http(url: str, timeout_s: float) -> Iterator[tuple[BinaryIO, int | None]]:
    try:
        response = urllib.request.urlopen(url, timeout=timeout_s)
    except urllib.error.HTTPError as e:
        if e.code >= 500 or e.code in RETRY_HTTP_CODES:
            raise RetryableError(f"HTTP {e.code} {e.reason}") from None
        raise DataError(f"cannot fetch {url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        raise RetryableError(str(getattr(e, "reason", e))) from None
    with response:
        length = response.headers.get("Content-Length")
        yield response, int(length) if length is not None else None


@contextlib.contextmanager
def _open_pipe(url: str, timeout_s: float) -> Iterator[tuple[BinaryIO, int | None]]:
    """`pipe:COMMAND`: the command's stdout; a non-zero exit fails the try."""
    with tempfile.TemporaryFile() as errors:  # a file, not a pipe: a chatty command cannot block on it
        proc = subprocess.Popen(url[len("pipe:") :], shell=True, stdout=subprocess.PIPE, stderr=errors)
        try:
            yield proc.stdout, None
        finally:
            proc.stdout.close()
            code = proc.wait()
        if code != 0:
            errors.seek(0)
            last = (errors.read().decode(errors="replace").strip().splitlines() or [""])[-1]
            raise RetryableError(f"command exited with {code}" + (f": {last}" if last else ""))


@contextlib.contextmanager
def _open_file(url: str, timeout_s: float) -> Iterator[tuple[BinaryIO, int | None]]:
    path = urlsplit(url).path
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise DataError(f"cannot fetch {url}: no such file") from None
    with f:
        yield f, os.fstat(f.fileno()).st_size


@contextlib.contextmanager
def _open_s3(url: str, timeout_s: float) -> Iterator[tuple[BinaryIO, int | None]]:
    """s3://BUCKET/KEY through boto3, with its usual credentials and AWS_ENDPOINT_URL for S3-compatible stores."""
    try:
        import botocore.exceptions
    except ImportError:
        raise DataError(f"{url}: s3:// shards need boto3 (pip install 'shardgan[s3]')") from None
    parts = urlsplit(url)
    try:
        response = _s3_client(os.getpid(), timeout_s).get_object(Bucket=parts.netloc, Key=parts.path.lstrip("/"))
    except botocore.exceptions.ClientError as e:
        code = e.response.get("Error", {}).get("Code", "")
        if code in ("NoSuchKey", "NoSuchBucket", "AccessDenied", "404", "403"):
            raise DataError(f"cannot fetch {url}: {code}") from None
        raise RetryableError(f"{code}: {e}".splitlines()[0]) from None
    except botocore.exceptions.BotoCoreError as e:
        raise RetryableError(str(e).splitlines()[0]) from None
    body = response["Body"]
    try:
        yield body, int(response["ContentLength"])
    except botocore.exceptions.BotoCoreError as e:  # read errors surface as these, not OSError
        raise RetryableError(str(e).splitlines()[0]) from None
    finally:
        body.close()


@functools.lru_cache(maxsize=4)
def _s3_client(pid: int, timeout_s: float):
    """One client per process (keyed by pid: a client must not cross a fork); retries are ours."""
    import boto3
    from botocore.config import Config

    config = Config(connect_timeout=timeout_s, read_timeout=timeout_s, retries={"max_attempts": 1, "mode": "standard"})
    return boto3.client("s3", config=config)


def sibling(url: str, name: str) -> str:
    """The URL of file `name` in the same place as `url` (in a `pipe:` command: beside its shard path)."""
    if url.startswith("pipe:"):
        words = url.split(" ")
        i = _path_word(words)
        words[i] = posixpath.join(posixpath.dirname(words[i]), name)
        return " ".join(words)
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, posixpath.join(posixpath.dirname(parts.path), name), "", ""))


def url_name(url: str) -> str:
    """The file name a URL points at: `pipe:cat /d/train-000001.tar` -> train-000001.tar."""
    if url.startswith("pipe:"):
        words = url.split(" ")
        return posixpath.basename(words[_path_word(words)])
    return posixpath.basename(urlsplit(url).path)


def _path_word(words: list[str]) -> int:
    """Which word of a `pipe:` command is the shard's path: the last one ending in .tar, else the last."""
    return max((i for i, w in enumerate(words) if w.endswith(".tar")), default=len(words) - 1)
