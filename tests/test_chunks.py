"""Pack's stage 1: the chunk footer rows every version has written, and a chunk file that reads
back exactly what its worker returned."""

from __future__ import annotations

from pathlib import Path

import pytest

from shardgan.atomic import publish
from shardgan.chunks import Blank, ChunkTask, EncodeOptions, Kept, encode_chunk, list_work, read_chunk_records, record_from_row, record_row
from shardgan.errors import ConfigError
from shardgan.frames import FrameSpec, Skip
from shardgan.synthetic import write_frames


def test_records_keep_the_chunk_footer_rows_of_earlier_versions() -> None:
    rows = [[3, None, "ok", "ab" * 16, 0, 120], [4, 7, "ok", "cd" * 16, 120, 80], [5, 2, "blank", "", 0, 0], [6, None, "skip", "corrupt: x", 0, 0]]
    paths = [f"in{i}.png" for i in range(7)]
    records = [record_from_row(row, paths) for row in rows]
    assert records == [Kept(3, None, "ab" * 16, 0, 120), Kept(4, 7, "cd" * 16, 120, 80), Blank(5, 2), Skip("in6.png", "corrupt: x")]
    assert [record_row(r, {path: i for i, path in enumerate(paths)}) for r in records] == rows


def test_a_chunk_file_reads_back_the_records_its_worker_returned(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_frames(src, 5)
    (src / "bad.png").write_bytes(b"not a png")
    options = EncodeOptions(FrameSpec(40, 30))
    work_list = list_work(src, options)
    (chunk,) = work_list.chunks()
    task = ChunkTask([(i, work_list.inputs[i][0]) for i in chunk], str(src), str(tmp_path / "chunk.bin"), options)
    result = encode_chunk(task)
    publish(result.temp, task.path)
    assert result.records[0] == Skip("bad.png", "not an image: unrecognised format") and result.frames == 5
    assert read_chunk_records(Path(task.path), [path for path, _ in work_list.inputs]) == result.records


def test_encode_options_are_checked_by_flag() -> None:
    with pytest.raises(ConfigError, match="--mode"):
        EncodeOptions(FrameSpec(8, 8, mode="zoom"))
    assert EncodeOptions(FrameSpec(40, 30), chroma="420").args()["chroma"] == "420"
    assert "chroma" not in EncodeOptions(FrameSpec(40, 30)).args()  # as the packs made before --chroma
