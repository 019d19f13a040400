"""`shardgan inspect`: a packed dataset's summary, a full verify, and a contact sheet of samples.

The output side of the data: it reads what pack wrote through the manifest, the shard format
and the loader's reader, and nothing downstream of them depends on it.
"""

from __future__ import annotations

from pathlib import Path

from .errors import DataError
from .reader import ShardReader, load_samples
from .source import ShardSource
from .manifest import MANIFEST_NAME, Manifest, ShardInfo, load_manifest, sha256_file
from .shards import decode_sample, read_sample
from .viz import save_grid


def summary_lines(manifest: Manifest, max_skipped: int = 10) -> list[str]:
    """A human summary: image spec, per split samples/shards/bytes, filters, skipped inputs."""
    lines = [
        f"dataset {manifest.root}: {manifest.width}x{manifest.height}x{manifest.channels} {manifest.image_format}, "
        f"{manifest.num_inputs} inputs",
    ]
    for name, split in manifest.splits.items():
        if split.shards:
            lines.append(f"  {name}: {split.num_samples} samples in {len(split.shards)} shards, {split.num_bytes / 1e6:.1f} MB")
    if manifest.filtered:
        lines.append("  filtered: " + ", ".join(f"{n} {why}" for why, n in sorted(manifest.filtered.items())))
    lines.append(f"  skipped: {len(manifest.skipped)} inputs")
    lines += [f"    {s['path']}: {s['reason']}" for s in manifest.skipped[:max_skipped]]
    if len(manifest.skipped) > max_skipped:
        lines.append(f"    ... and {len(manifest.skipped) - max_skipped} more (see {manifest.root / MANIFEST_NAME})")
    if manifest.pack_args:
        lines.append("  pack args: " + " ".join(f"{k}={v}" for k, v in sorted(manifest.pack_args.items()) if k != "inputs_sha256"))
    return lines


def verify_dataset(manifest: Manifest) -> list[str]:
    """Every problem found re-reading every shard fully: checksum, size, sample layout, decoding."""
    problems = []
    for split in manifest.splits.values():
        for shard in split.shards:
            problems += verify_shard(manifest, shard)
    return problems


def verify_shard(manifest: Manifest, shard: ShardInfo) -> list[str]:
    path = manifest.shard_path(shard)
    if not path.exists():
        return [f"{path}: missing"]
    problems = []
    if (size := path.stat().st_size) != shard.num_bytes:
        problems.append(f"{path}: {size} bytes, manifest says {shard.num_bytes}")
    if (digest := sha256_file(path)) != shard.sha256:
        problems.append(f"{path}: sha256 {digest[:12]}..., manifest says {shard.sha256[:12]}...")
    with open(path, "rb") as f:
        for i in range(shard.num_samples):
            try:
                members = read_sample(f, shard.offsets[i], shard.offsets[i + 1])
                decode_sample(members, manifest.image_format, manifest.height, manifest.width, manifest.channels)
            except ValueError as e:
                problems.append(f"{path}: sample {i}: {e}")
    return problems


def inspect_dataset(
    location: str | Path, *, verify: bool = False, grid: str | Path | None = None, grid_count: int = 64, seed: int = 0
) -> None:
    """`shardgan inspect`: print the summary; optionally verify everything and/or save a grid."""
    manifest = load_manifest(location)
    print("\n".join(summary_lines(manifest)))
    if grid is not None:
        reader = ShardReader(ShardSource(manifest, "train", None))
        try:
            print(f"wrote {save_grid(load_samples(reader, grid_count, seed), grid)}")
        finally:
            reader.close()
    if verify:
        problems = verify_dataset(manifest)
        for line in problems:
            print(line)
        if problems:
            raise DataError(f"verify found {len(problems)} problems in {manifest.root}")
        total = sum(split.num_samples for split in manifest.splits.values())
        print(f"verified: all {total} samples decode and every shard matches its sha256")
