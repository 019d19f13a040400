"""`shardgan inspect`: a packed dataset's summary, a full verify, and a contact sheet of samples.

The output side of the data: it reads what pack wrote through the manifest, the shard format
and the loader's reader, and nothing downstream of them depends on it.
"""

from __future__ import annotations

from dataclasses import dataclass
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
    lines += [f"    {s.path}: {s.reason}" for s in manifest.skipped[:max_skipped]]
    if len(manifest.skipped) > max_skipped:
        lines.append(f"    ... and {len(manifest.skipped) - max_skipped} more (see {manifest.root / MANIFEST_NAME})")
    if manifest.pack_args:
        lines.append("  pack args: " + " ".join(f"{k}={v}" for k, v in sorted(manifest.pack_args.items()) if k != "inputs_sha256"))
    return lines


@dataclass(frozen=True)
class ShardVerdict:
    """One shard re-read in full: what is wrong with it ("" when nothing) and how many samples are lost."""

    path: Path
    num_samples: int
    lost: int = 0
    problem: str = ""

    def line(self) -> str:
        if not self.problem:
            return f"{self.path}: OK, {self.num_samples} samples"
        return f"{self.path}: BAD: {self.problem}; {self.lost} of {self.num_samples} samples lost"


def verify_dataset(manifest: Manifest) -> list[ShardVerdict]:
    """Every shard re-read fully (checksum, size, sample layout, decoding), one verdict each."""
    return [verify_shard(manifest, shard) for split in manifest.splits.values() for shard in split.shards]


def verify_shard(manifest: Manifest, shard: ShardInfo) -> ShardVerdict:
    path, offsets = manifest.shard_path(shard), shard.offsets
    if not path.exists():
        return ShardVerdict(path, shard.num_samples, shard.num_samples, "missing")
    size = path.stat().st_size
    bad: list[tuple[int, str]] = []
    with open(path, "rb") as f:
        for i in range(shard.num_samples):
            try:
                members = read_sample(f, offsets[i], offsets[i + 1])
                decode_sample(members, manifest.image_format, manifest.height, manifest.width, manifest.channels)
            except ValueError as e:
                bad.append((i, str(e)))
    problems = []
    if size < shard.num_bytes:
        problems.append(f"cut short: ends at byte {size} of {shard.num_bytes}")
    elif size > shard.num_bytes:
        problems.append(f"{size} bytes, manifest says {shard.num_bytes}")
    if bad:
        i, reason = bad[0]
        problems.append(f"first bad sample {i} at bytes {offsets[i]}..{offsets[i + 1]}: {reason}")
    if sha256_file(path) != shard.sha256:
        problems.append("sha256 differs from the manifest's" + ("" if problems else " (every sample decodes)"))
    return ShardVerdict(path, shard.num_samples, len(bad), "; ".join(problems))


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
        verdicts = verify_dataset(manifest)
        for verdict in verdicts:
            print(verdict.line())
        bad = [v for v in verdicts if v.problem]
        if bad:
            lost = sum(v.lost for v in bad)
            raise DataError(f"verify found {len(bad)} bad of {len(verdicts)} shards in {manifest.root}, {lost} samples lost")
        total = sum(split.num_samples for split in manifest.splits.values())
        print(f"verified: all {total} samples decode and every shard matches its sha256")
