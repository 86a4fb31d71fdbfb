"""The training job's evaluation path and the serving path give identical tensors."""

from __future__ import annotations

import shutil

import pytest
import torch

from inference import inference as handler
from tests.inference import images
from training import data
from training.presets import ClassificationPresetEval


@pytest.fixture(scope="module")
def served(model_dir):
    return handler.model_fn(model_dir)


@pytest.fixture(scope="module")
def odd_images_dir(digits_dir, tmp_path_factory):
    """The digits plus one test image of every colour mode, in the training job's layout."""
    root = tmp_path_factory.mktemp("mixed")
    shutil.copytree(digits_dir, root, dirs_exist_ok=True)
    for name, payload in images.variants().items():
        suffix = {"jpeg": ".jpg", "png": ".png", "webp": ".webp"}[name.split("-")[0]]
        (root / "test" / "0" / f"variant-{name}{suffix}").write_bytes(payload)
    return root


def training_eval_tensors(root, preprocessing: dict) -> dict:
    """What the training job feeds the model at evaluation: decode_all, ImageDataset, the eval preset."""
    decoded = data.decode_all(data.discover({"training": root}))
    test = [sample for sample in decoded.samples if sample.split == "test"]
    classes = sorted({sample.label for sample in decoded.samples})
    preset = ClassificationPresetEval.from_dict(preprocessing)
    in_memory = data.ImageDataset(test, classes, preset, decoded.pixels)
    from_files = data.ImageDataset(test, classes, preset)
    tensors = {}
    for index, sample in enumerate(test):
        tensor = in_memory[index][0]
        assert torch.equal(tensor, from_files[index][0])
        tensors[sample.path] = tensor
    return tensors


def test_train_and_serve_tensors_are_identical(served, odd_images_dir):
    trained = training_eval_tensors(odd_images_dir, served.preset.to_dict())
    variants = [path for path in trained if path.name.startswith("variant-")]
    assert len(variants) == len(images.variants()) and len(trained) > 100
    for path, expected in trained.items():
        request = handler.input_fn(path.read_bytes(), "application/x-image")
        served_tensor = handler.preprocess(request.images, served.preset)[0]
        assert served_tensor.dtype == expected.dtype == torch.float32
        assert torch.equal(served_tensor, expected), path.name
