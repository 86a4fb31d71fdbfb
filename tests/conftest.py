"""Shared fixtures: moto patched as the stack patches it, the digits on disk, and one real training
run, in process, shared by the session.

The suite runs in pytest-xdist workers (pyproject's addopts): the shared training run is made
once by whichever worker needs it first, under a file lock, and read from disk by the others.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

import botocore.session
import pytest
from filelock import FileLock

from local_aws.moto_patches import MotoPatches
from training.demo_data import write_digits

# As in the training image (training/debugger.py): smdebug's protobuf code runs on protobuf 6 only in
# the pure-Python implementation, chosen when protobuf is first imported, by whichever test that is.
os.environ.setdefault("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", "python")

# Three xdist workers share two cores: one torch (OpenMP) thread each, waiting passively, set before
# torch is imported; subprocesses inherit it unless a test gives them their own. Torch's default, a
# thread per core in every worker, oversubscribes the cores, and OpenMP's threads spin while they wait
# for each other: measured on this machine under the suite's load, the shared tiny training job took
# 243 s with two threads and 56 s with one.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from tests.training_job import TINY_HYPERPARAMETERS, TrainingRun, run_training_job  # noqa: E402 - after protobuf's choice


@pytest.fixture(scope="session", autouse=True)
def moto_patches() -> Iterator[MotoPatches]:
    """moto as the stack's moto process has it, for every test (in-process mock_aws too), whatever
    the order they run in; undone when the session ends."""
    with MotoPatches() as patches:
        yield patches


@pytest.fixture(scope="session", autouse=True)
def one_botocore_loader() -> Iterator[None]:
    """Every boto3 session in the process reads botocore's JSON models once. Each new session
    (the app makes one per client, as each Lambda container does; moto makes its own) otherwise
    parses endpoints.json and each service's model again: measured, about 40 % of an app test's time."""
    cached = lru_cache(maxsize=None)(botocore.session.create_loader)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(botocore.session, "create_loader", cached)
        yield


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


def pytest_make_parametrize_id(config: pytest.Config, val: object, argname: str) -> str | None:
    """Bytes by their size, not their content: a test's id is in PYTEST_CURRENT_TEST, and a 7 MiB body
    there made the environment too long to start the endpoint host a module fixture starts."""
    return f"{argname}-{len(val)}B" if isinstance(val, bytes) else None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The slow tests first, so the workers start them at once instead of one worker ending with them."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, digits_splits) -> TrainingRun:
    """One real training job on the digits (tiny budget), shared by every test (and worker) that needs an artefact."""
    shared = tmp_path_factory.getbasetemp().parent if os.environ.get("PYTEST_XDIST_WORKER") else \
        tmp_path_factory.getbasetemp()
    with FileLock(shared / "trained.lock"):
        run = TrainingRun.load(shared / "trained")
        if run is None:
            (shared / "trained").mkdir(exist_ok=True)
            run = run_training_job(shared / "trained", {"training": digits_splits}, TINY_HYPERPARAMETERS)
            run.save()
    assert run.returncode == 0, run.log[-3000:]
    return run


@pytest.fixture(scope="session")
def trained_model_tar(trained_run) -> Path:
    """A real model.tar.gz produced by the training job."""
    return trained_run.model_tar
