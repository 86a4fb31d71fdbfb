"""Fixtures of the inference tests: the real artefact of the shared training run, unpacked.

`trained_model_tar` and `digits_splits` come from tests/conftest.py: the session's one training
job (training.train in process, under SageMaker's variables) trained on the digits.
"""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def _modest_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the CPU is shared; the hosts under test get their own threads
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def model_tar(trained_model_tar) -> Path:
    return trained_model_tar


@pytest.fixture(scope="session")
def digits_dir(digits_splits) -> Path:
    return digits_splits


@pytest.fixture(scope="session")
def model_dir(model_tar, tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("unpacked")
    with tarfile.open(model_tar) as archive:
        archive.extractall(target, filter="data")
    return target
