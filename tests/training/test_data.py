"""Finding, checking and splitting the labelled images."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.inference import images
from training import data
from training.image_contract import MAX_IMAGE_BYTES, NOT_AN_IMAGE
from training.splits import stable_split


def test_labels_layout_splits_by_a_stable_hash_of_the_key(digits_labels):
    samples = data.discover({"training": digits_labels})
    assert len(samples) == 1797
    for sample in samples[:50]:
        key = "training-data/" + sample.path.relative_to(digits_labels).as_posix()
        assert sample.split == stable_split(key)
    shares = {split: sum(s.split == split for s in samples) / len(samples) for split in ("train", "valid", "test")}
    assert shares["train"] == pytest.approx(0.8, abs=0.04) and shares["test"] == pytest.approx(0.1, abs=0.03)


def test_old_images_keep_their_split_when_data_grows(tmp_path, digits_labels):
    shutil.copytree(digits_labels / "4", tmp_path / "4")
    shutil.copytree(digits_labels / "9", tmp_path / "9")
    before = {s.path.name: s.split for s in data.discover({"training": tmp_path})}
    shutil.copytree(digits_labels / "2", tmp_path / "2")
    after = {s.path.name: s.split for s in data.discover({"training": tmp_path})}
    assert all(after[name] == split for name, split in before.items())


def test_splits_layout_and_split_channels(digits_splits):
    from_layout = data.discover({"training": digits_splits})
    from_channels = data.discover({split: digits_splits / split for split in ("train", "valid", "test")})
    assert sorted((s.path, s.label, s.split) for s in from_layout) == sorted((s.path, s.label, s.split) for s in from_channels)
    assert {s.split for s in from_layout if s.path.parts[-3] == "test"} == {"test"}


def test_markers_and_hidden_files_are_not_images(tmp_path, digits_labels):
    shutil.copytree(digits_labels / "1", tmp_path / "1")
    (tmp_path / "_COMMIT").write_text("")
    (tmp_path / "1" / ".DS_Store").write_text("")
    assert all(s.label == "1" for s in data.discover({"training": tmp_path}))


def test_decode_all_sets_corrupt_images_aside_and_keeps_small_sets_in_memory(tmp_path, digits_labels):
    shutil.copytree(digits_labels / "1", tmp_path / "1")
    (tmp_path / "1" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 30)
    decoded = data.decode_all(data.discover({"training": tmp_path}))
    assert [Path(path).name for path, _ in decoded.rejected] == ["broken.png"]
    assert decoded.pixels is not None and len(decoded.pixels) == len(decoded.samples)
    assert data.decode_all(decoded.samples, keep_bytes=1000).pixels is None


def test_no_channel_and_bad_manifest_give_clear_errors(tmp_path):
    with pytest.raises(data.DataError, match="no data channel"):
        data.discover({})
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "run.jsonl").write_text('{"key": "training-data/a/1.png", "label": "a", "split": "holdout"}\n')
    with pytest.raises(data.DataError, match="split must be one of"):
        data.discover({"manifest": tmp_path / "m", "training": tmp_path})


def test_every_accepted_format_is_training_data_and_anything_else_is_set_aside_with_the_reason(tmp_path):
    made = {"a.gif": images.animated_gif(), "b.bmp": images.bmp(), "c.png": images.png(), "d.jpg": images.jpeg(),
            "e.webp": images.webp()}
    (tmp_path / "cat").mkdir()
    for name, content in made.items():
        (tmp_path / "cat" / name).write_bytes(content)
    (tmp_path / "cat" / "notes.gif").write_bytes(b"a text file named like an image")
    (tmp_path / "cat" / "huge.png").write_bytes(images.png() + bytes(MAX_IMAGE_BYTES))
    decoded = data.decode_all(data.discover({"training": tmp_path}))
    assert sorted(s.path.name for s in decoded.samples) == sorted(made)
    rejected = {Path(path).name: reason for path, reason in decoded.rejected}
    assert rejected == {"notes.gif": NOT_AN_IMAGE,
                        "huge.png": f"image too large: {len(images.png()) + MAX_IMAGE_BYTES} bytes, "
                                    f"the limit is {MAX_IMAGE_BYTES} bytes"}
    for name in ("a.gif", "b.bmp"):  # a GIF's first frame, a BMP: Pillow's RGB conversion, pixel for pixel
        expected = np.asarray(Image.open(io.BytesIO(made[name])).convert("RGB"))
        assert np.array_equal(decoded.pixels[tmp_path / "cat" / name].permute(1, 2, 0).numpy(), expected)
