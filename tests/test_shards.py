"""The shard format: plain tars that webdataset reads, byte-reproducible, seekable per sample."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import tarfile

import numpy as np
import pytest
import webdataset as wds
from PIL import Image, JpegImagePlugin

from shardgan.shards import (
    IMAGE_FORMATS,
    Sample,
    decode_image,
    decode_sample,
    encode_image,
    read_sample,
    sample_key,
    write_shard,
)
from shardgan.synthetic import game_frame


def _samples(n: int, fmt: str, channels: int = 3) -> list[Sample]:
    return [
        Sample(sample_key(i), encode_image(game_frame(i, 22, 14)[:, :, :channels], fmt), {"src": f"a/b.{i}.png"})
        for i in range(n)
    ]


@pytest.mark.parametrize("fmt", IMAGE_FORMATS)
def test_roundtrip_through_plain_webdataset(tmp_path, fmt):
    info = write_shard(tmp_path / "train-000000.tar", _samples(5, fmt), fmt)
    assert info.num_samples == 5
    rows = list(wds.WebDataset(str(tmp_path / "train-000000.tar"), shardshuffle=False))
    assert [r["__key__"] for r in rows] == [sample_key(i) for i in range(5)]
    ext = "npy" if fmt == "raw" else fmt
    for i, row in enumerate(rows):
        pixels = decode_image(row[ext], fmt, 14, 22, 3)
        assert pixels.shape == (14, 22, 3)
        if fmt in ("png", "raw"):
            np.testing.assert_array_equal(pixels, game_frame(i, 22, 14))


def test_same_samples_give_same_bytes(tmp_path):
    a = write_shard(tmp_path / "a.tar", _samples(4, "png"), "png")
    b = write_shard(tmp_path / "b.tar", _samples(4, "png"), "png")
    assert a.sha256 == b.sha256 and a.offsets == b.offsets
    with tarfile.open(tmp_path / "a.tar") as tar:
        assert {(m.mtime, m.uname, m.mode) for m in tar} == {(0, "shardgan", 0o444)}


def test_offsets_give_each_sample_with_one_read(tmp_path):
    info = write_shard(tmp_path / "s.tar", _samples(6, "raw", channels=1), "raw")
    with open(tmp_path / "s.tar", "rb") as f:
        for i in reversed(range(6)):
            members = read_sample(f, info.offsets[i], info.offsets[i + 1])
            assert members["__key__"] == sample_key(i)
            np.testing.assert_array_equal(decode_image(members["npy"], "raw", 14, 22, 1), game_frame(i, 22, 14)[:, :, :1])


def test_decode_sample_finds_the_image_member_of_the_format(tmp_path):
    info = write_shard(tmp_path / "s.tar", _samples(2, "png"), "png")
    with open(tmp_path / "s.tar", "rb") as f:
        members = read_sample(f, info.offsets[1], info.offsets[2])
    np.testing.assert_array_equal(decode_sample(members, "png", 14, 22, 3), game_frame(1, 22, 14))
    with pytest.raises(ValueError, match=r"^no \.npy member$"):
        decode_sample(members, "raw", 14, 22, 3)
    with pytest.raises(ValueError, match="expected"):
        decode_sample(members, "png", 22, 14, 3)


def test_tar_tool_lists_members(tmp_path):
    write_shard(tmp_path / "s.tar", _samples(2, "png"), "png")
    names = subprocess.run(["tar", "tf", str(tmp_path / "s.tar")], capture_output=True, text=True, check=True).stdout.split()
    assert names == ["000000000.json", "000000000.png", "000000001.json", "000000001.png"]


def test_decode_rejects_wrong_shape_and_garbage():
    png = encode_image(game_frame(0, 22, 14), "png")
    with pytest.raises(ValueError, match="expected"):
        decode_image(png, "png", 10, 10, 3)
    with pytest.raises(ValueError, match="cannot decode"):
        decode_image(b"not an image", "png", 14, 22, 3)
    with pytest.raises(ValueError, match="raw sample"):
        decode_image(b"\x00" * 10, "raw", 14, 22, 3)


def _webdataset_tar(path, samples: list[Sample], fmt: str) -> list[int]:
    """The reference writer write_shard replaces, and the sample offsets tarfile finds in its output."""
    ext = "npy" if fmt == "raw" else fmt
    with open(path, "wb") as f, wds.TarWriter(f, user="shardgan", group="shardgan", mode=0o444, encoder=False, mtime=0) as writer:
        for s in samples:
            writer.write({"__key__": s.key, "json": json.dumps(s.meta, sort_keys=True).encode(), ext: s.image})
    with tarfile.open(path) as tar:
        members = list(tar)
    return [m.offset for m in members[::2]] + [members[-1].offset_data + -(-members[-1].size // 512) * 512]


@pytest.mark.parametrize("fmt", IMAGE_FORMATS)
def test_one_pass_writer_gives_webdataset_tarwriter_bytes_and_offsets(tmp_path, fmt):
    samples = _samples(7, fmt) + [Sample(sample_key(7, 12), b"", {"src": "v.mkv", "frame": 12})]
    info = write_shard(tmp_path / "ours.tar", samples, fmt)
    offsets = _webdataset_tar(tmp_path / "theirs.tar", samples, fmt)
    ours = (tmp_path / "ours.tar").read_bytes()
    assert ours == (tmp_path / "theirs.tar").read_bytes()
    assert info.offsets == offsets and info.num_bytes == len(ours) and info.sha256 == hashlib.sha256(ours).hexdigest()


def test_raw_encoding_is_np_save(tmp_path):
    for pixels in (game_frame(1, 22, 14), game_frame(2, 9, 5)[:, :, :1], game_frame(3, 22, 14)[:, ::-1]):
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(pixels), allow_pickle=False)
        assert encode_image(pixels, "raw") == buf.getvalue()


def test_jpg_chroma_subsampling_is_chosen_or_follows_quality():
    """--chroma 420 writes what OpenCV (and so FFCV) writes; without it, quality decides, as before."""
    pixels = game_frame(3, 22, 14)

    def sampling(data: bytes) -> int:  # Pillow's code: 0 is 4:4:4, 2 is 4:2:0
        with Image.open(io.BytesIO(data)) as image:
            return JpegImagePlugin.get_sampling(image)

    assert [sampling(encode_image(pixels, "jpg", 95)), sampling(encode_image(pixels, "jpg", 80))] == [0, 2]
    assert [sampling(encode_image(pixels, "jpg", 95, "420")), sampling(encode_image(pixels, "jpg", 80, "444"))] == [2, 0]
    assert encode_image(pixels, "jpg", 95, "444") == encode_image(pixels, "jpg", 95)
    decoded = decode_image(encode_image(pixels, "jpg", 95, "420"), "jpg", 14, 22, 3)
    assert decoded.shape == pixels.shape and np.abs(decoded.astype(int) - pixels).mean() < 20
