"""ShardReader: a batch in one call equals the samples read one by one with the reference path
(tarfile + Pillow), bit for bit and in order, with the same corrupt-sample reports."""

from __future__ import annotations

import io
import os
import tarfile
import threading

import numpy as np
import pytest
from PIL import Image

from .conftest import all_positions, build_dataset, corrupt_images, write_dataset, write_tiny_shards
from shardgan.errors import CorruptSampleError, DataError
from shardgan.manifest import Manifest, load_manifest
from shardgan.reader import ShardReader, load_samples
from shardgan.shards import EXTENSIONS, decode_image, sample_key
from shardgan.source import ShardSource
from shardgan.synthetic import game_frame


def reference(manifest: Manifest) -> dict[str, np.ndarray]:
    """key -> image, read with tarfile and decoded with Pillow (what the loader gave before)."""
    ext = "." + EXTENSIONS[manifest.image_format]
    images = {}
    for shard in manifest.split("train").shards:
        with tarfile.open(manifest.shard_path(shard)) as tar:
            for member in tar:
                if member.name.endswith(ext):
                    data = tar.extractfile(member).read()
                    if manifest.image_format == "raw":
                        pixels = np.load(io.BytesIO(data))
                    else:
                        pixels = np.asarray(Image.open(io.BytesIO(data)))
                    images[member.name.split(".")[0]] = pixels.reshape(manifest.height, manifest.width, manifest.channels)
    return images


def read_all(reader: ShardReader, positions: np.ndarray, batch: int) -> tuple[list[str], np.ndarray, list]:
    keys, images, corrupt = [], [], []
    for lo in range(0, len(positions) - batch + 1, batch):
        out = np.zeros((batch, *reader.shape), np.uint8)
        k, c = reader.read_batch(positions[lo : lo + batch], out)
        keys += k
        images.append(out)
        corrupt += c
    return keys, np.concatenate(images), corrupt


@pytest.mark.parametrize(
    "image_format,channels,quality", [("raw", 3, 95), ("raw", 1, 95), ("png", 3, 95), ("png", 1, 95), ("jpg", 3, 95), ("jpg", 3, 75), ("jpg", 1, 90), ("webp", 3, 90)]
)
def test_batches_equal_the_reference_decode_bit_for_bit_in_order(tmp_path, image_format, channels, quality):
    manifest = write_dataset(tmp_path, image_format, channels, quality)
    want = reference(manifest)
    positions = all_positions(manifest)
    reader = ShardReader(ShardSource(manifest, "train", None))
    keys, images, corrupt = read_all(reader, positions, batch=23)  # one batch spans both shards
    assert corrupt == []
    shards = manifest.split("train").shards
    assert keys == [sample_key(int(sum(s.num_samples for s in shards[:k])) + int(i)) for k, i in positions]
    for key, image in zip(keys, images):
        np.testing.assert_array_equal(image, want[key])
        if image_format in ("raw", "png"):  # lossless: the frame itself
            np.testing.assert_array_equal(image, game_frame(int(key), 20, 14)[:, :, :channels])


@pytest.mark.parametrize("uneven", [False, True])
def test_raw_batches_read_as_a_group_equal_the_batches_read_one_by_one(tmp_path, uneven):
    """read_batches copies a group with one index_select per shard run, through a table of rows
    one stride apart (as pack writes them) or of every byte offset (uneven samples)."""
    manifest = write_dataset(tmp_path, "raw", uneven=uneven)
    want = reference(manifest)
    positions = all_positions(manifest)[:20].reshape(4, 5, 2)  # batch 1 spans both shards
    grouped, one = ShardReader(ShardSource(manifest, "train", None)), ShardReader(ShardSource(manifest, "train", None))
    out = np.zeros((4, 5, *grouped.shape), np.uint8)
    answers = grouped.read_batches(positions, out)
    assert bool(grouped._layouts[0].stride) is not uneven  # the path under test was taken
    for k in range(4):
        single = np.zeros((5, *one.shape), np.uint8)
        assert answers[k] == one.read_batch(positions[k], single)
        np.testing.assert_array_equal(out[k], single)
        for key, image in zip(answers[k][0], out[k]):
            np.testing.assert_array_equal(image, want[key])


@pytest.mark.parametrize("image_format", ["raw", "png"])
def test_a_batch_whose_shards_alternate_is_read_right(tmp_path, image_format):
    """Not the loader's order, but any caller's: shard 0, 1, 0 is three runs, not one."""
    manifest = write_dataset(tmp_path, image_format)
    want = reference(manifest)
    reader = ShardReader(ShardSource(manifest, "train", None))
    positions = np.array([[0, 2], [1, 4], [1, 0], [0, 7]])
    out = np.zeros((4, *reader.shape), np.uint8)
    keys, corrupt = reader.read_batch(positions, out)
    assert keys == [sample_key(2), sample_key(9 + 4), sample_key(9), sample_key(7)] and corrupt == []
    for key, image in zip(keys, out):
        np.testing.assert_array_equal(image, want[key])


def test_a_corrupt_sample_in_a_group_is_filled_from_its_own_batch(tmp_path):
    """A group touching a shard with a bad sample is read batch by batch: the same reports and
    fills as read_batch, never a sample of a neighbouring batch."""
    manifest = build_dataset(tmp_path, [12, 10], image_format="raw")
    shard = manifest.split("train").shards[0]
    blob = bytearray((tmp_path / shard.name).read_bytes())
    blob[int(shard.offsets[5]) + 130] ^= 0xFF  # sample 5: its first header's size field
    (tmp_path / shard.name).write_bytes(bytes(blob))
    source = ShardSource(load_manifest(tmp_path), "train", None)
    grouped, one = ShardReader(source), ShardReader(source)
    positions = np.stack([np.r_[np.zeros(12, int), np.ones(8, int)], np.r_[np.arange(12), np.arange(8)]], 1).reshape(5, 4, 2)
    out = np.zeros((5, 4, *grouped.shape), np.uint8)
    answers = grouped.read_batches(positions, out)
    assert [len(corrupt) for _, corrupt in answers] == [0, 1, 0, 0, 0]
    keys, corrupt = answers[1]
    assert corrupt[0].key == "#5" and keys[1] in keys[:1] + keys[2:]  # sample 5 is slot 1 of batch 1
    for k in range(5):
        single = np.zeros((4, *one.shape), np.uint8)
        assert answers[k] == one.read_batch(positions[k], single)
        np.testing.assert_array_equal(out[k], single)


def test_corrupt_samples_get_the_reference_reasons_and_good_ones_fill_their_slots(tmp_path):
    manifest = build_dataset(tmp_path, [12, 10])
    shard = manifest.split("train").shards[0]
    corrupt_images(tmp_path / shard.name, ["000000003"])  # image data
    path = tmp_path / shard.name
    blob = bytearray(path.read_bytes())
    blob[int(shard.offsets[5]) + 130] ^= 0xFF  # sample 5: its first header's size field
    blob[int(shard.offsets[7])] ^= 0x01  # sample 7: a name byte, so the checksum fails
    path.write_bytes(bytes(blob))
    reader = ShardReader(ShardSource(load_manifest(tmp_path), "train", None))
    expected = {}
    for i in range(12):
        try:
            reader.image(0, i)
        except CorruptSampleError as e:
            expected[e.key] = e.reason
    assert len(expected) == 3
    out = np.zeros((12, 12, 16, 3), np.uint8)
    keys, corrupt = reader.read_batch(np.stack([np.zeros(12, int), np.arange(12)], 1), out)
    assert {r.key: r.reason for r in corrupt} == expected
    assert {r.shard for r in corrupt} == {shard.name}
    good = [k for k in keys if k not in expected]
    assert len(good) == 12 and len(set(good)) == 9  # the 3 bad slots hold good samples of the batch
    for key, image in zip(keys, out):
        np.testing.assert_array_equal(image, game_frame(int(key), 16, 12))
    with pytest.raises(CorruptSampleError):
        reader.read_batch(np.stack([np.zeros(12, int), np.arange(12)], 1), out, on_corrupt="fail")
    keys, images, corrupt = reader.encoded(np.stack([np.zeros(12, int), np.arange(12)], 1))  # undecoded, for nvjpeg
    assert set(expected) == {"000000003", "#5", "#7"}
    assert keys == [sample_key(i) for i in range(5)] + ["#5", sample_key(6), "#7"] + [sample_key(i) for i in range(8, 12)]
    assert sorted(r.key for r in corrupt) == ["#5", "#7"]
    assert [i for i, image in enumerate(images) if image is None] == [5, 7]  # sample 3's damage is in its pixels
    assert decode_image(images[4], "png", 12, 16, 3).tobytes() == game_frame(4, 16, 12).tobytes()


def test_a_shard_cut_short_after_it_was_mapped_reports_the_lost_samples_truncated(tmp_path):
    manifest = build_dataset(tmp_path, [10], image_format="raw")
    shard = manifest.split("train").shards[0]
    reader = ShardReader(ShardSource(manifest, "train", None))
    out = np.zeros((10, 12, 16, 3), np.uint8)
    positions = np.stack([np.zeros(10, int), np.arange(10)], 1)
    assert reader.read_batch(positions, out)[1] == []  # mapped, layout derived
    os.truncate(tmp_path / shard.name, int(shard.offsets[8]) + 600)  # no SIGBUS: sample 8 cut, 9 gone
    keys, corrupt = reader.read_batch(positions, out)
    assert sorted(r.key for r in corrupt) == ["#9", "000000008"]
    assert all("shard ends at byte" in r.reason for r in corrupt)


def test_a_replaced_shard_is_read_anew(tmp_path):
    build_dataset(tmp_path / "a", [6], image_format="raw")
    build_dataset(tmp_path / "b", [3, 6], image_format="raw")  # its second shard: keys 3..8, same byte layout
    reader = ShardReader(ShardSource(load_manifest(tmp_path / "a"), "train", None))
    out = np.zeros((6, 12, 16, 3), np.uint8)
    positions = np.stack([np.zeros(6, int), np.arange(6)], 1)
    assert reader.read_batch(positions, out)[0] == [sample_key(i) for i in range(6)]
    os.replace(tmp_path / "b" / "train-000001.tar", tmp_path / "a" / "train-000000.tar")
    reader.close()  # unmapped: the next read maps the new file, whose layout (keys) is derived again
    keys, corrupt = reader.read_batch(positions, out)
    assert corrupt == [] and keys == [sample_key(i) for i in range(3, 9)]
    for key, image in zip(keys, out):
        np.testing.assert_array_equal(image, game_frame(int(key), 16, 12))


def test_an_unusual_tar_layout_is_read_by_the_slow_path(tmp_path):
    """One member per sample, written by tarfile itself (no .json): not pack's layout, still readable."""
    write_tiny_shards(tmp_path, 5)
    reader = ShardReader(ShardSource(load_manifest(tmp_path), "train", None))
    out = np.zeros((5, 4, 4, 1), np.uint8)
    keys, corrupt = reader.read_batch(np.stack([np.arange(5), np.zeros(5, int)], 1), out)
    assert corrupt == [] and keys == [sample_key(i) for i in range(5)]
    assert [int(image[0, 0, 0]) for image in out] == list(range(5))


def test_threads_sharing_a_reader_get_the_same_batches(tmp_path):
    manifest = write_dataset(tmp_path, "raw", sizes=(30, 30, 30))
    positions = all_positions(manifest, seed=1)
    reader = ShardReader(ShardSource(manifest, "train", None), max_open_files=1)  # eviction under contention
    want_keys, want_images, _ = read_all(ShardReader(ShardSource(manifest, "train", None)), positions, 10)
    results = {}

    def work(t: int) -> None:
        results[t] = read_all(reader, positions, 10)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    for keys, images, corrupt in results.values():
        assert keys == want_keys and corrupt == []
        np.testing.assert_array_equal(images, want_images)


def test_load_samples_picks_the_same_samples_per_seed(tmp_path):
    manifest = build_dataset(tmp_path, [5, 7])
    reader = ShardReader(ShardSource(manifest, "train", None))
    a, b = load_samples(reader, 6, seed=3), load_samples(reader, 6, seed=3)
    assert a.shape == (6, 3, 12, 16) and a.is_contiguous() and bool((a == b).all())
    assert not bool((a == load_samples(reader, 6, seed=4)).all())
    assert load_samples(reader, 100, seed=0).shape[0] == 12  # all, when the split holds fewer


def test_a_shard_missing_at_read_time_is_one_line(tmp_path):
    manifest = build_dataset(tmp_path, [4])
    reader = ShardReader(ShardSource(manifest, "train", None))
    (tmp_path / "train-000000.tar").unlink()
    with pytest.raises(DataError, match=f"shard missing: {tmp_path}/train-000000.tar"):
        reader.read_batch(np.array([[0, 0]]), np.zeros((1, 12, 16, 3), np.uint8))
