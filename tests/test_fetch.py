"""Fetching from a real HTTP server on 127.0.0.1 with injected faults, and from `pipe:` commands."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest

import shardgan.fetch as fetching
from shardgan.errors import DataError
from shardgan.fetch import FetchPolicy, fetch, sibling, url_name

from .http_server import serve

FAST = FetchPolicy(attempts=3, backoff_s=0.01, timeout_s=0.5)
DATA = bytes(range(256)) * 4000  # ~1 MB, so "drop" cuts a real stream


@pytest.fixture
def server(tmp_path: Path):
    (tmp_path / "a.tar").write_bytes(DATA)
    with serve(tmp_path, slow_s=1.5) as srv:
        yield srv


def get(url: str, policy: FetchPolicy = FAST, check: bool = True) -> bytes:
    out = io.BytesIO()
    fetch(url, out, policy, *((len(DATA), hashlib.sha256(DATA).hexdigest()) if check else ()))
    return out.getvalue()


@pytest.mark.parametrize("fault", ["500", "drop", "slow", "corrupt"])
def test_each_fault_is_retried_and_the_next_try_succeeds(server, fault):
    server.once["a.tar"] = [fault]
    assert get(f"{server.url}/a.tar") == DATA
    assert server.requests["a.tar"] == 2


@pytest.mark.parametrize("fault,reason", [
    ("500", "HTTP 500 Internal Server Error"),
    ("drop", "got 512000 of 1024000 bytes"),
    ("slow", "timed out"),
    ("corrupt", "differs from the manifest's"),
])  # fmt: skip
def test_a_fault_that_persists_ends_in_one_line_naming_the_url(server, fault, reason):
    server.always["a.tar"] = fault
    with pytest.raises(DataError) as err:
        get(f"{server.url}/a.tar")
    message = str(err.value)
    assert message.startswith(f"cannot fetch {server.url}/a.tar: ") and message.endswith("(gave up after 3 tries)")
    assert reason in message and "\n" not in message
    assert server.requests["a.tar"] == 3


def test_backoff_doubles_between_tries(server, monkeypatch):
    waits: list[float] = []
    monkeypatch.setattr(fetching.time, "sleep", waits.append)
    server.once["a.tar"] = ["500", "500", "500"]
    assert get(f"{server.url}/a.tar", FetchPolicy(attempts=4, backoff_s=0.5, timeout_s=1)) == DATA
    assert waits == [0.5, 1.0, 2.0]


def test_a_missing_object_fails_at_once(server):
    with pytest.raises(DataError, match=r"cannot fetch http://127.0.0.1:\d+/nope.tar: HTTP 404"):
        get(f"{server.url}/nope.tar")
    assert server.requests["nope.tar"] == 1


def test_without_an_expected_size_the_content_length_catches_a_drop(server):
    server.once["a.tar"] = ["drop"]
    assert get(f"{server.url}/a.tar", check=False) == DATA
    assert server.requests["a.tar"] == 2


def test_pipe_commands_and_their_failures(tmp_path):
    (tmp_path / "a.tar").write_bytes(DATA)
    assert get(f"pipe:cat {tmp_path}/a.tar") == DATA
    with pytest.raises(DataError, match=r"cannot fetch pipe:cat /nope.tar: command exited with 1: cat: /nope.tar: No such file"):
        get("pipe:cat /nope.tar")


def test_file_urls_and_unsupported_schemes(tmp_path):
    (tmp_path / "a.tar").write_bytes(DATA)
    assert get(f"file://{tmp_path}/a.tar") == DATA
    with pytest.raises(DataError, match="unsupported URL scheme 'gs'"):
        get("gs://bucket/a.tar")


def test_nothing_answers_on_a_closed_port(unused_port):
    with pytest.raises(DataError, match=rf"cannot fetch http://127.0.0.1:{unused_port}/a.tar: .*refused"):
        get(f"http://127.0.0.1:{unused_port}/a.tar")


@pytest.fixture
def unused_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("url,name,beside", [
    ("http://h:8/d/train-000001.tar", "train-000001.tar", "http://h:8/d/manifest.json"),
    ("https://h/d/train-000001.tar?sig=x", "train-000001.tar", "https://h/d/manifest.json"),
    ("s3://bucket/prefix/val-000000.tar", "val-000000.tar", "s3://bucket/prefix/manifest.json"),
    ("pipe:cat /d/train-000001.tar", "train-000001.tar", "pipe:cat /d/manifest.json"),
    ("pipe:aws s3 cp s3://b/d/train-000001.tar -", "train-000001.tar", "pipe:aws s3 cp s3://b/d/manifest.json -"),
])  # fmt: skip
def test_url_name_and_sibling(url, name, beside):
    assert url_name(url) == name and sibling(url, "manifest.json") == beside
