"""Where a split's shards are: the manifest, local paths or URLs, and the cache for remote ones.

`data.shards` is a dataset directory (or manifest.json), a brace pattern of local shard paths,
or URLs (http(s), s3, `pipe:`, file:). `resolve_source` turns it into a `ShardSource`, checking
at start-up (stat only) that local shards are all there, so a missing one fails at once.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path

import webdataset as wds

from .cache import ShardCache, auto_limit, default_cache_dir
from .config import DataConfig
from .errors import DataError
from .manifest import MANIFEST_NAME, Manifest, ShardInfo, SplitInfo, check_shards_present, load_manifest, manifest_path, parse_manifest
from .fetch import FetchPolicy, fetch_bytes, sibling, url_name

URL_SCHEMES = ("pipe:", "http://", "https://", "s3://", "gs://", "file:")
"""gs:// is refused by fetch.py with a hint (pipe:gsutil cat URL)."""


@dataclass(frozen=True)
class ShardSource:
    """The split's shards: the manifest, and URLs when they are remote."""

    manifest: Manifest
    split: str
    urls: tuple[str, ...] | None
    """None: local files, read at the manifest's offsets; else one URL per shard, fetched into
    the node-local cache and read from there the same way."""

    @property
    def shards(self) -> list[ShardInfo]:
        return self.manifest.split(self.split).shards

    @property
    def num_samples(self) -> int:
        return self.manifest.split(self.split).num_samples

    @property
    def fingerprint(self) -> str:
        """Changes when the shard list or any shard's content changes."""
        items = [(s.name, s.num_samples, s.sha256) for s in self.shards]
        return hashlib.sha256(json.dumps(items).encode()).hexdigest()[:16]


def is_url_pattern(shards: str) -> bool:
    return shards.startswith(URL_SCHEMES) or "{" in shards or "::" in shards or shards.endswith(".tar")


def is_remote(location: str) -> bool:
    return location.startswith(URL_SCHEMES)


def resolve_source(cfg: DataConfig, split: str) -> ShardSource:
    """Load the manifest and check (stat only) that local shards are all there, at start-up.

    A pattern selects shards of `cfg.split`; any other split (val) is taken whole, from beside
    the pattern's first shard.
    """
    if not is_url_pattern(cfg.shards):
        setting, location = ("data.manifest", cfg.manifest) if cfg.manifest else ("data.shards", cfg.shards)
        if not manifest_path(location).parent.is_dir():
            raise DataError(f"{setting}={location}: no such directory; point {setting} at a packed dataset (shardgan pack FRAMES SHARDS makes one)")
        manifest = load_manifest(location)
        manifest.split(split)
        check_shards_present(manifest, split)
        return ShardSource(manifest, split, None)
    urls = wds.shardlists.expand_urls(cfg.shards)
    remote = [is_remote(u) for u in urls]
    if any(remote) and not all(remote):
        raise DataError(f"data.shards {cfg.shards!r} mixes local paths and URLs")
    manifest = _load_manifest(cfg.manifest or sibling(urls[0], MANIFEST_NAME), cfg)
    if split == cfg.split:
        selected = _select_shards(manifest, split, [url_name(u) for u in urls])
        manifest = replace(manifest, splits={**manifest.splits, split: SplitInfo(selected)})
    else:
        urls = [sibling(urls[0], s.name) for s in manifest.split(split).shards]
    if remote[0]:
        return ShardSource(manifest, split, tuple(urls))
    if len({Path(u).parent for u in urls}) != 1:
        raise DataError(f"data.shards {cfg.shards!r}: local shards must share one directory")
    manifest = replace(manifest, root=Path(urls[0]).parent)
    check_shards_present(manifest, split)
    return ShardSource(manifest, split, None)


def split_location(cfg: DataConfig, split: str) -> str:
    """Where `split`'s shards are looked for, as messages name them: beside the manifest, or
    beside the first shard of a data.shards pattern (never the pattern, which selects train shards)."""
    if not is_url_pattern(cfg.shards):
        return str(manifest_path(cfg.manifest or cfg.shards).parent / f"{split}-*.tar")
    return sibling(wds.shardlists.expand_urls(cfg.shards)[0], f"{split}-*.tar")


def _load_manifest(location: str, cfg: DataConfig) -> Manifest:
    if is_remote(location):
        return parse_manifest(fetch_bytes(location, fetch_policy(cfg)), location)
    return load_manifest(location)


def _select_shards(manifest: Manifest, split: str, names: list[str]) -> list[ShardInfo]:
    by_name = {s.name: s for s in manifest.split(split).shards}
    for name in names:
        if name not in by_name:
            raise DataError(f"shard {name} is not in split {split!r} of {manifest.origin}")
    if len(set(names)) != len(names):
        raise DataError(f"data.shards names a shard twice: {sorted(n for n in names if names.count(n) > 1)[0]}")
    return [by_name[n] for n in names]


def fetch_policy(cfg: DataConfig) -> FetchPolicy:
    return FetchPolicy(cfg.fetch_attempts, cfg.fetch_backoff_s, cfg.fetch_timeout_s)


def build_cache(cfg: DataConfig, source: ShardSource) -> ShardCache | None:
    """The node-local cache remote shards are read through; None for local shards."""
    if source.urls is None:
        return None
    directory = Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir()
    limit = cfg.cache_limit_bytes
    return ShardCache(directory, auto_limit(directory) if limit is None else limit, fetch_policy(cfg))
