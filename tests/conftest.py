"""Shared fixtures: the digits on disk, and one real training run through the script-mode contract."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from training.artifact import pack_model_dir
from training.demo_data import write_digits
from training.metrics import DEBUGGER_RULES

REPO_ROOT = Path(__file__).resolve().parent.parent
# As in the training image (training/debugger.py): smdebug's protobuf code runs on protobuf 6 only in
# the pure-Python implementation, chosen when protobuf is first imported, by whichever test that is.
os.environ.setdefault("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", "python")

# A tiny but real configuration: ~1 epoch of a ResNet-18 on 32-pixel digits.
TINY_HYPERPARAMETERS = {
    "arch": "resnet18",
    "pretrained": "none",
    "image-size": "32",
    "epochs": "2",
    "batch-size": "64",
    "lr": "0.002",
    "hflip-prob": "0",
    # The final job's in-job Debugger: every rule, evaluated after the last epoch.
    "debugger-rules": ",".join(DEBUGGER_RULES),
    "debugger-rule-parameters": "LossNotDecreasing.mode=TRAIN",
}


@dataclass(frozen=True)
class TrainingRun:
    log: str
    model_dir: Path
    output_dir: Path
    model_tar: Path
    returncode: int


def hyperparameter_args(hyperparameters: dict[str, str]) -> list[str]:
    return [item for name, value in hyperparameters.items() for item in (f"--{name}", str(value))]


def run_training_job(tmp: Path, channels: dict[str, Path], hyperparameters: dict[str, str],
                     extra_env: dict[str, str] | None = None, timeout: float = 600) -> TrainingRun:
    """Run training/train.py as SageMaker would: a process, SM_* variables, --name value arguments."""
    model_dir, output_dir = tmp / "model", tmp / "output"
    env = {
        **os.environ,
        "SM_MODEL_DIR": str(model_dir),
        "SM_OUTPUT_DATA_DIR": str(output_dir),
        "SM_NUM_GPUS": "0",
        "TRAINING_JOB_NAME": f"test-{tmp.name}",
        **{f"SM_CHANNEL_{name.upper()}": str(path) for name, path in channels.items()},
        **(extra_env or {}),
    }
    process = subprocess.run(
        [sys.executable, "training/train.py", *hyperparameter_args(hyperparameters)],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout,
    )
    model_tar = tmp / "model.tar.gz"
    if process.returncode == 0:
        pack_model_dir(model_dir, model_tar)
    return TrainingRun(process.stdout + process.stderr, model_dir, output_dir, model_tar, process.returncode)


@pytest.fixture(scope="session")
def digits_splits(tmp_path_factory) -> Path:
    """scikit-learn's digits as PNG files in the {train,valid,test}/<label>/<file> layout."""
    root = tmp_path_factory.mktemp("digits-splits")
    write_digits(root, "splits")
    return root


@pytest.fixture(scope="session")
def digits_labels(tmp_path_factory) -> Path:
    """scikit-learn's digits as PNG files in the <label>/<file> layout."""
    root = tmp_path_factory.mktemp("digits-labels")
    write_digits(root, "labels")
    return root


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, digits_splits) -> TrainingRun:
    """One real training job on the digits (tiny budget), shared by every test that needs an artefact."""
    run = run_training_job(tmp_path_factory.mktemp("trained"), {"training": digits_splits}, TINY_HYPERPARAMETERS)
    assert run.returncode == 0, run.log[-3000:]
    return run


@pytest.fixture(scope="session")
def trained_model_tar(trained_run) -> Path:
    """A real model.tar.gz produced by the training job."""
    return trained_run.model_tar
