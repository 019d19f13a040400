"""`shardgan pack`: frames under SRC -> shuffled WebDataset shards + manifest in DST.

Two stages, so that parts, resume and determinism all fall out of one design:

1. encode (parallel, the expensive part; `chunks`): the sorted input list is cut into fixed
   chunks; a worker decodes, resizes, filters and encodes one chunk and writes the
   results to `DST/.work/chunk-NNNNNN.bin` atomically. A chunk file that exists is
   complete, so a rerun skips it (resume), and `--part i/N` encodes chunks i, i+N, ...
2. write (cheap, no decoding; `cut`): drop blanks and exact duplicates (this selection runs in
   the main process as chunks complete in order, overlapping stage 1), shuffle globally
   with --seed, cut into shards, write them atomically, then the manifest last.

This module runs the two and owns DST's lifecycle: the work directory, reruns, clean-up.
Output bytes depend only on the inputs and the pack options, never on the number
of workers, parts, or how often the pack was interrupted.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import sys
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from multiprocessing.pool import Pool
from pathlib import Path
from typing import Any

from tqdm import tqdm

from .atomic import fsync_dir, publish, remove_stale_temps, write_bytes_atomic
from .chunks import ChunkTask, EncodeOptions, Record, WorkList, chunk_path, encode_chunk, list_work, read_chunk_records
from .cut import CutOptions, Selection, ShardTask, select_samples, split_and_cut, write_shard_task
from .errors import ConfigError, DataError, Interrupted
from .frames import MAX_UPSCALE, FrameSpec, is_video, scan, source_size
from .manifest import MANIFEST_NAME, Manifest, SplitInfo, load_manifest
from .pool import available_cores, ordered_map, worker_pool
from .progress import ProgressLines
from .stopwatch import Stopwatch
from .summary import Outcome, PackSummary

WORK_DIR = ".work"
WORKLIST_NAME = "plan.json"
"""The work list's file in DST/.work; named before the work list was, and kept so that an
unfinished pack of an earlier shardgan still resumes."""
SPLITS = ("train", "val")
_SHARD_NAME = re.compile(r"^(train|val)-\d{6}\.tar$")
ASPECT_TOLERANCE = 0.05
"""A stretch beyond 5 % of the frames' width/height ratio is pointed out (the packed frames look squashed)."""


@dataclass(frozen=True)
class PackOptions:
    """Everything that decides the packed bytes (and nothing that doesn't, like --workers): what
    the chunks depend on, and what the shuffle and the shard cut depend on."""

    encode: EncodeOptions
    cut: CutOptions = CutOptions()

    def args(self) -> dict[str, Any]:
        """All options as one flat dict: the manifest's `pack_args` (plus inputs_sha256). Flat, the
        frame's fields beside the others, as every manifest so far has them, so a rerun still
        finds an earlier pack of the same options complete."""
        return {**self.encode.args(), **asdict(self.cut)}


def resolve_size(src: Path, width: int | None, height: int | None) -> tuple[int, int]:
    """An auto side from the first readable input's aspect ratio (rounded to the nearest pixel)."""
    if width is not None and height is not None:
        return width, height
    _check_src(src)
    size = first_frame_size(src, scan(src)[0])
    if size is None:
        raise DataError(f"--size {width or 'auto'}x{height or 'auto'}: no readable frame in the first inputs of {src} to take the aspect ratio from; give both sides")
    w, h = size
    return (width, max(1, round(width * h / w))) if height is None else (max(1, round(height * w / h)), height)


def first_frame_size(src: Path, inputs: list[tuple[str, int]]) -> tuple[int, int] | None:
    """The size of the first of the first 16 inputs (scan order) whose header reads: the frames' aspect ratio."""
    return next((size for path, _ in inputs[:16] if (size := source_size(src / path)) is not None), None)


def aspect_note(source: tuple[int, int], frame: FrameSpec) -> str | None:
    """A line when --mode stretch changes the aspect ratio by more than ASPECT_TOLERANCE."""
    (w, h), change = source, (frame.width / frame.height) / (source[0] / source[1]) - 1
    if frame.mode != "stretch" or abs(change) <= ASPECT_TOLERANCE:
        return None
    kept = f"{frame.width}x{max(1, round(frame.width * h / w))}"
    return (
        f"note: --mode stretch changes the aspect ratio by {change:+.0%} ({w}x{h} frames to {frame.width}x{frame.height}); "
        f"--size {kept} (or {frame.width}xauto) keeps it, --mode crop or --mode pad keep the frames' proportions at this size"
    )


def pack_dataset(
    src: str | Path,
    dst: str | Path,
    options: PackOptions,
    *,
    workers: int | None = None,
    part: tuple[int, int] | None = None,
    merge: bool = False,
    overwrite: bool = False,
    keep_work: bool = False,
    progress_every_s: float = 60.0,
    log: Callable[[str], None] = print,
) -> PackSummary:
    """Pack SRC into DST (both stages), only encode a part (`part`), or only write (`merge`)."""
    started = time.monotonic()
    clock = Stopwatch()
    src, dst = Path(src), Path(dst)
    _check_locations(src, dst, part, merge, overwrite)
    work_list = list_work(src, options.encode)
    _check_val_fits(src, work_list, options.cut)
    clock.lap("scan")
    pack_args = {**options.args(), "inputs_sha256": work_list.fingerprint()}
    with _write_errors(dst), _interrupt_keeps_work(dst):
        if overwrite:
            clear_dataset(dst)
        elif (done := _finished_pack(dst, pack_args)) is not None:
            if not keep_work:  # a kill between manifest and clean-up left it
                shutil.rmtree(dst / WORK_DIR, ignore_errors=True)
            log(done.lines()[0])
            return done
        if not merge and (size := first_frame_size(src, work_list.inputs)) and (note := aspect_note(size, options.encode.frame)):
            log(note)
        work = _open_work_dir(dst, work_list, exclusive=part is None)
        summary = PackSummary(dst=dst, inputs=work_list.num_inputs)
        chunks = work_list.chunks()
        mine = range(len(chunks)) if part is None else range(part[0], len(chunks), part[1])
        if merge:
            _require_chunks(work, len(chunks))
        with worker_pool(min(workers or available_cores(), len(mine) or 1)) as pool:
            clock.lap("start-up")
            lines_every_s = 0 if sys.stderr.isatty() else progress_every_s  # on a terminal, tqdm's bar
            records = _chunk_records(src, work, work_list, options.encode, list(mine), pool, summary, ProgressLines("encode", None, "frame", lines_every_s, log))
            if part is not None:
                deque(records, maxlen=0)  # encode only
                clock.lap("encode stage")
            else:
                selection = select_samples(work_list, records)
                clock.lap("encode stage")
                manifest = _write_dataset(dst, work_list, options, pack_args, selection, pool)
                clock.lap("write stage")
        if part is None:
            if not keep_work:
                shutil.rmtree(work, ignore_errors=True)
            _remove_stale_shards(dst, manifest)
        clock.lap("clean-up")
    summary.seconds = time.monotonic() - started
    summary.stage_seconds.update(clock.seconds)
    if part is not None:
        summary.outcome, summary.part, summary.chunks = Outcome.PART_ENCODED, part, (len(mine), len(chunks))
    else:
        summary.add_manifest(manifest)
    for line in summary.lines():
        log(line)
    return summary


@contextlib.contextmanager
def _interrupt_keeps_work(dst: Path) -> Iterator[None]:
    """Ctrl-C: one line saying what is kept; encoded chunks are complete files, so a rerun goes on."""
    try:
        yield
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted: the frames encoded so far are kept in {dst / WORK_DIR}; run the same command again to go on") from None


@contextlib.contextmanager
def _write_errors(dst: Path) -> Iterator[None]:
    """Disk full, read-only or unwritable DST: one line, and what was finished stays for the rerun."""
    try:
        yield
    except OSError as e:
        where = e.filename or dst
        raise DataError(f"pack stopped writing to {where}: {e.strerror or e}; fix that and rerun the same command (finished work is kept)") from None


def _check_src(src: Path) -> None:
    if not src.is_dir():
        raise DataError(f"SRC {src} is not a directory" if src.exists() else f"SRC {src} does not exist")


def _check_val_fits(src: Path, work_list: WorkList, options: CutOptions) -> None:
    """A --val larger than the stills alone is known before encoding anything (a video's frames are not)."""
    num_inputs = len(work_list.inputs)
    if options.val >= num_inputs and not any(is_video(path) for path, _ in work_list.inputs):
        raise DataError(f"--val {options.val:g} asks for {options.num_val(num_inputs)} validation samples but {src} holds only {num_inputs} frames")


def _check_locations(src: Path, dst: Path, part: tuple[int, int] | None, merge: bool, overwrite: bool) -> None:
    _check_src(src)
    real_src, real_dst = src.resolve(), dst.resolve()
    if real_dst == real_src or real_src in real_dst.parents:
        raise ConfigError(f"DST {dst} is inside SRC {src}; put the shards somewhere else")
    if dst.exists() and not dst.is_dir():
        raise DataError(f"DST {dst} exists and is not a directory")
    if part is not None and (merge or overwrite):
        raise ConfigError("--part cannot be combined with --merge or --overwrite (parts share DST)")


def _finished_pack(dst: Path, pack_args: dict[str, Any]) -> PackSummary | None:
    """A summary if DST already holds this exact pack; an error if it holds a different dataset."""
    if not (dst / MANIFEST_NAME).exists():
        return None
    try:
        manifest = load_manifest(dst)
    except DataError as e:
        raise DataError(f"DST {dst} holds an unreadable dataset ({e}); add --overwrite to replace it") from None
    if manifest.pack_args != pack_args:
        changed = sorted(k for k in pack_args.keys() | manifest.pack_args.keys() if manifest.pack_args.get(k) != pack_args.get(k))
        raise DataError(f"DST {dst} already holds a different dataset (differs in: {', '.join(changed)}); add --overwrite to replace it")
    return PackSummary(Outcome.ALREADY_PACKED, dst)


def clear_dataset(dst: Path) -> None:
    """Remove what a pack writes (manifest first, so a half-cleared DST never looks complete)."""
    (dst / MANIFEST_NAME).unlink(missing_ok=True)
    for path in dst.glob("*.tar") if dst.is_dir() else []:
        if _SHARD_NAME.match(path.name):
            path.unlink()
    shutil.rmtree(dst / WORK_DIR, ignore_errors=True)


def _open_work_dir(dst: Path, work_list: WorkList, exclusive: bool) -> Path:
    """Create DST/.work with the work list, or check that the one there is this one (resume, parts)."""
    work = dst / WORK_DIR
    work.mkdir(parents=True, exist_ok=True)
    listed = work_list.to_bytes()
    path = work / WORKLIST_NAME
    if path.exists() and path.read_bytes() != listed:
        raise DataError(
            f"{work} holds an unfinished pack of different inputs or options; rerun that pack to finish it, or add --overwrite"
        )
    if exclusive:  # parts may run concurrently: never delete another writer's temp file
        remove_stale_temps(dst)
        remove_stale_temps(work)
        if (work / "shards").is_dir():
            remove_stale_temps(work / "shards")
    if not path.exists():
        write_bytes_atomic(path, listed)
    return work


def _chunk_records(
    src: Path, work: Path, work_list: WorkList, options: EncodeOptions, chunk_ids: list[int], pool: Pool | None, summary: PackSummary, lines: ProgressLines
) -> Iterator[tuple[int, list[Record]]]:
    """(chunk index, records) in chunk order, each as soon as it is done: encoded now (in the pool)
    if its file is missing, else read back. Encoded frames and worker seconds go to `summary`;
    the bar (a terminal) or `lines` (a job log; its total set here) show the progress."""
    chunks = work_list.chunks()
    paths = [path for path, _ in work_list.inputs]
    todo = {i for i in chunk_ids if not chunk_path(work, i).exists()}
    tasks = [ChunkTask([(j, work_list.inputs[j][0]) for j in chunks[i]], str(src), str(chunk_path(work, i)), options) for i in chunk_ids if i in todo]
    has_video = any(is_video(work_list.inputs[t.inputs[0][0]][0]) for t in tasks)
    # Videos have unknown frame counts: then the bar counts frames without a total.
    total = None if has_video else sum(len(t.inputs) for t in tasks)
    results = zip(tasks, ordered_map(pool, encode_chunk, tasks))
    bar = tqdm(total=total, unit="frame", desc="encode", dynamic_ncols=True, smoothing=0.1, disable=None if tasks else True)  # None: off a terminal
    lines.total = total
    # One thread fsyncs and renames finished chunks in order while the encoding goes on.
    with bar, ThreadPoolExecutor(1) as publisher:
        published = []
        for i in chunk_ids:
            if i not in todo:
                yield i, read_chunk_records(chunk_path(work, i), paths)
                continue
            task, result = next(results)
            published.append(publisher.submit(publish, result.temp, task.path))
            summary.frames_encoded += result.frames
            summary.stage_seconds.update(result.seconds)
            bar.update(result.frames if has_video else len(task.inputs))
            lines.update(result.frames if has_video else len(task.inputs))
            yield i, result.records
        for future in published:
            future.result()
    if tasks:
        fsync_dir(work)  # all the chunk renames at once


def _require_chunks(work: Path, num_chunks: int) -> None:
    missing = [i for i in range(num_chunks) if not chunk_path(work, i).exists()]
    if missing:
        listed = ", ".join(chunk_path(work, i).name for i in missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise DataError(
            f"{work} is missing {len(missing)} of {num_chunks} chunks ({listed}); finish the --part runs, or run without --merge to encode them here"
        )


def _write_dataset(dst: Path, work_list: WorkList, options: PackOptions, pack_args: dict[str, Any], selection: Selection, pool: Pool | None) -> Manifest:
    """Stage 2 after the selection: shuffle, cut, write shards (reusing finished ones), manifest last."""
    if not selection.kept:
        reasons = Counter(s.kind for s in selection.skipped)
        skipped = ", ".join(f"{n} {why}" for why, n in reasons.most_common()) or "none"
        frame = options.encode.frame
        hint = f"; --size {frame.width}x{frame.height} would upscale them more than {MAX_UPSCALE}x: pick a smaller --size" if "too small" in reasons else ""
        shutil.rmtree(dst / WORK_DIR, ignore_errors=True)  # nothing in it is worth a rerun
        with contextlib.suppress(OSError):
            dst.rmdir()  # only if empty: pack made it
        raise DataError(
            f"no usable frame among {work_list.num_inputs} inputs (skipped: {skipped}; "
            f"dropped: {selection.filtered['blank']} blank, {selection.filtered['duplicate']} duplicate){hint}"
        )
    fingerprint = work_list.fingerprint()
    tasks = [
        ShardTask(f"{split}-{i:06d}.tar", samples, str(dst), str(dst / WORK_DIR), options.encode.image_format, fingerprint)
        for split, shards in split_and_cut(selection.kept, options.cut).items()
        for i, samples in enumerate(shards)
    ]
    infos = list(tqdm(ordered_map(pool, write_shard_task, tasks), total=len(tasks), unit="shard", desc="write", dynamic_ncols=True, disable=None))
    splits = {split: SplitInfo([info for info in infos if info.name.startswith(f"{split}-")]) for split in SPLITS}
    manifest = Manifest(
        width=options.encode.frame.width,
        height=options.encode.frame.height,
        channels=options.encode.frame.channels,
        image_format=options.encode.image_format,
        splits=splits,
        pack_args=pack_args,
        num_inputs=work_list.num_inputs,
        filtered=selection.filtered,
        skipped=selection.skipped,
        root=dst,
    )
    manifest.write(dst)
    return manifest


def _remove_stale_shards(dst: Path, manifest: Manifest) -> None:
    """Shard files a previous, different pack left behind under our naming scheme."""
    listed = {s.name for split in manifest.splits.values() for s in split.shards}
    for path in dst.glob("*.tar"):
        if _SHARD_NAME.match(path.name) and path.name not in listed:
            path.unlink()
