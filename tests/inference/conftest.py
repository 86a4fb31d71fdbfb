"""A real model.tar.gz for the inference tests.

Preferred: the shared `trained_model_tar` fixture (tests/conftest.py: the training job
run on the digits). Until that exists: run the training job here for one epoch on the
digits; if the training job cannot run yet, pack a randomly initialised ResNet-18 with
training's own artefact writer (the same files, only untrained weights).

The artefact made here is kept in pytest's cache, keyed by a hash of every source file
that goes into it (training/, inference/): an unchanged tree does not train again on a
busy machine, and any change to those files trains afresh (`--cache-clear` forces it).
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

from training import artifact
from training.model import ModelSpec, build_model
from training.presets import ClassificationPresetEval

REPO_ROOT = Path(__file__).resolve().parents[2]
IMAGE_SIZE = 32
CLASSES = [str(digit) for digit in range(10)]


@pytest.fixture(scope="session", autouse=True)
def _modest_threads():
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("digits")
    subprocess.run([sys.executable, "-m", "training.demo_data", str(out), "--layout", "splits"],
                   cwd=REPO_ROOT, check=True, capture_output=True)
    return out


def _train_one_epoch(digits: Path, work: Path) -> Path | None:
    model_dir, output_dir = work / "model", work / "output"
    env = {**os.environ, "SM_CHANNEL_TRAINING": str(digits), "SM_MODEL_DIR": str(model_dir),
           "SM_OUTPUT_DATA_DIR": str(output_dir), "SM_NUM_GPUS": "0", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "training/train.py", "--epochs", "1", "--arch", "resnet18", "--pretrained", "none",
               "--image-size", str(IMAGE_SIZE), "--batch-size", "64", "--workers", "0", "--freeze", "backbone"]
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    if result.returncode != 0 or not (model_dir / artifact.WEIGHTS).exists():
        print(f"training job did not run ({result.returncode}): {result.stderr[-2000:]}")
        return None
    return artifact.pack_model_dir(model_dir, work / "model.tar.gz")


def _stand_in(work: Path) -> Path:
    torch.manual_seed(0)
    spec = ModelSpec(arch="resnet18", num_classes=len(CLASSES))
    buffer = io.BytesIO()
    torch.save(build_model(spec).state_dict(), buffer)
    model_dir = work / "model"
    artifact.write_model_dir(model_dir, state_dict_bytes=buffer.getvalue(), classes=CLASSES, spec=spec.to_dict(),
                             preprocessing=ClassificationPresetEval.for_image_size(IMAGE_SIZE).to_dict(),
                             metadata={"version": "stand-in-1"})
    return artifact.pack_model_dir(model_dir, work / "model.tar.gz")


def _sources_key() -> str:
    digest = hashlib.sha256(f"{IMAGE_SIZE}".encode())
    for path in sorted([*REPO_ROOT.glob("training/*.py"), *REPO_ROOT.glob("inference/*")]):
        if path.is_file():
            digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:20]


@pytest.fixture(scope="session")
def model_tar(request, tmp_path_factory, digits_dir) -> Path:
    try:
        return Path(request.getfixturevalue("trained_model_tar"))
    except pytest.FixtureLookupError:
        pass
    cached = request.config.cache.mkdir("inference-artefact") / _sources_key() / "model.tar.gz"
    if cached.exists():
        return cached
    work = tmp_path_factory.mktemp("artefact")
    trained = _train_one_epoch(digits_dir, work)
    if trained is None:
        return _stand_in(work)  # not cached: the training job should be tried again next time
    cached.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(trained, cached)
    return cached


@pytest.fixture(scope="session")
def model_dir(model_tar, tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("unpacked")
    with tarfile.open(model_tar) as archive:
        archive.extractall(target, filter="data")
    return target
