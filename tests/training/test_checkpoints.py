"""Spot training that really resumes: per-epoch checkpoints, on real torch and a few classes of the digits.

A resumed run must be, bit for bit, the run that was never stopped: the same metric lines after the
checkpoint's epoch, the same test line, the same model bytes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.training.digits_subset import small_copy
from tests.training_job import REPO_ROOT, metric_lines
from training import checkpoints, data, train

# Seconds (each run): 3 epochs of a ResNet-18 on 32-pixel images, a few small batches each. No optimised
# model: resuming is about the state_dict (tests/training/test_optimised.py is about that step).
RUN = ["--arch", "resnet18", "--pretrained", "none", "--image-size", "32", "--epochs", "3", "--batch-size", "8",
       "--lr", "0.002", "--hflip-prob", "0", "--min-images-per-class", "3", "--seed", "7", "--report", "off",
       "--optimise", "off"]
IMAGES: list[str] = []  # the whole network learns, on images through the random train transforms
FEATURES = ["--freeze", "backbone", "--cache-features", "auto"]  # the head learns, on cached trunk features


class Job:
    """train.main in this process, its printed lines kept."""

    def __init__(self, tmp: Path, data_dir: Path, capsys) -> None:
        self.tmp, self.data_dir, self.capsys = tmp, data_dir, capsys

    def __call__(self, name: str, *extra: str) -> tuple[dict, list[str], str]:
        """(metadata, metric lines, whole output) of one run."""
        self.capsys.readouterr()
        metadata = train.main(train.parse_args([
            "--data-dir", str(self.data_dir), "--model-dir", str(self.tmp / name / "model"),
            "--output-dir", str(self.tmp / name / "output"), *RUN, *extra]))
        out = self.capsys.readouterr().out
        return metadata, metric_lines(out), out

    def model_bytes(self, name: str) -> bytes:
        return (self.tmp / name / "model" / "model.pth").read_bytes()


def logged(out: str, message: str) -> list[dict]:
    entries = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return [entry for entry in entries if entry["message"] == message]


def saved_epochs(directory: Path) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in directory.glob("epoch-*.pt"))


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    """The CPU is shared: one thread each, in this process and in the jobs it starts."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def opt_ml(tmp_path, monkeypatch) -> Path:
    """No SageMaker environment; /opt/ml is a folder of the test's, without a checkpoints folder."""
    for name in [k for k in os.environ if k.startswith("SM_")]:
        monkeypatch.delenv(name)
    base = tmp_path / "opt-ml"
    base.mkdir()
    monkeypatch.setenv("SAGEMAKER_BASE_DIR", str(base))
    return base


@pytest.fixture
def job(tmp_path, digits_labels, opt_ml, capsys) -> Job:
    return Job(tmp_path, small_copy(digits_labels, tmp_path / "data"), capsys)


@pytest.mark.parametrize("inputs", [IMAGES, FEATURES], ids=["images", "cached-features"])
def test_a_run_resumed_after_epoch_one_is_the_run_never_stopped(job, tmp_path, opt_ml, monkeypatch, inputs):
    # Without a checkpoint directory nothing is written, nor even prepared.
    with monkeypatch.context() as patched:
        patched.setattr(checkpoints, "Checkpointer", None)  # calling it would fail the run
        reference, reference_lines, _ = job("reference", *inputs)
    assert [line.split()[0] for line in reference_lines[:3]] == ["epoch=1", "epoch=2", "epoch=3"]
    assert len(reference_lines) == 4 and reference_lines[3].startswith("test_loss=")
    assert list(opt_ml.iterdir()) == []

    # The same run with checkpoints (kept all, here): checkpointing changes nothing in it.
    directory = tmp_path / "checkpoints"
    with monkeypatch.context() as patched:
        patched.setattr(checkpoints, "KEEP", 3)
        _, lines, _ = job("first", *inputs, "--checkpoint-dir", str(directory))
    assert lines == reference_lines and job.model_bytes("first") == job.model_bytes("reference")
    assert saved_epochs(directory) == [1, 2, 3]

    # The job died after epoch 1: its restart trains epochs 2 and 3 exactly as the run never stopped.
    for later in directory.glob("epoch-000[23]-*.pt"):
        later.unlink()
    resumed, lines, out = job("resumed", *inputs, "--checkpoint-dir", str(directory))
    assert [entry["epoch"] for entry in logged(out, "resumed from checkpoint")] == [1]
    assert lines == reference_lines[1:]
    assert resumed["history"] == reference["history"] and resumed["metrics"] == reference["metrics"]
    assert resumed["best_epoch"] == reference["best_epoch"]
    assert job.model_bytes("resumed") == job.model_bytes("reference")
    assert saved_epochs(directory) == [2, 3]  # the newest two

    # The job died after its last epoch (writing its outputs): its restart only tests.
    _, lines, out = job("after-the-end", *inputs, "--checkpoint-dir", str(directory))
    assert [entry["epoch"] for entry in logged(out, "resumed from checkpoint")] == [3]
    assert lines == reference_lines[-1:]
    assert job.model_bytes("after-the-end") == job.model_bytes("reference")


def test_a_resumed_run_with_loader_workers_draws_what_it_would_have(job, tmp_path, monkeypatch):
    """Images too many to keep decoded: worker processes transform them, seeded from the restored state."""
    decode_all = data.decode_all
    monkeypatch.setattr(data, "decode_all", lambda samples, workers=0: decode_all(samples, workers, keep_bytes=0))
    monkeypatch.setattr(checkpoints, "KEEP", 3)
    directory = tmp_path / "checkpoints"
    _, reference_lines, _ = job("reference", "--workers", "1", "--checkpoint-dir", str(directory))
    for path in directory.glob("epoch-000[23]-*.pt"):
        path.unlink()
    _, lines, _ = job("resumed", "--workers", "1", "--checkpoint-dir", str(directory))
    assert lines == reference_lines[1:]
    assert job.model_bytes("resumed") == job.model_bytes("reference")


def test_early_stopping_behaves_the_same_after_a_resume(job, tmp_path):
    # lr 0: the head never changes, so epoch 2 is no better than epoch 1 and patience 1 stops there.
    stopping = [*FEATURES, "--lr", "0", "--patience", "1", "--checkpoint-dir", str(tmp_path / "checkpoints")]
    reference, reference_lines, out = job("reference", *stopping)
    assert [entry["epoch"] for entry in logged(out, "early stop")] == [2]
    assert saved_epochs(tmp_path / "checkpoints") == [1]  # the stopping epoch is not saved...

    # ...so a job that died after stopping (testing, writing its outputs) replays it, and stops there again.
    resumed, lines, out = job("resumed", *stopping)
    assert [entry["epoch"] for entry in logged(out, "resumed from checkpoint")] == [1]
    assert [entry["epoch"] for entry in logged(out, "early stop")] == [2]
    assert lines == reference_lines[1:]
    assert resumed["history"] == reference["history"] and resumed["best_epoch"] == reference["best_epoch"] == 1


def test_partial_and_corrupt_checkpoints_are_skipped_and_other_configurations_ignored(job, tmp_path):
    directory = tmp_path / "checkpoints"
    _, reference_lines, _ = job("reference", *FEATURES, "--checkpoint-dir", str(directory))
    assert saved_epochs(directory) == [2, 3]
    newest = next(directory.glob("epoch-0003-*.pt"))
    # Killed while writing epoch 3's replacement, after a broken sync left epoch 3 itself half there.
    partial = directory / f".{newest.name}.k2j4v9.tmp"
    partial.write_bytes(newest.read_bytes()[:5000])
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])

    _, lines, out = job("resumed", *FEATURES, "--checkpoint-dir", str(directory))
    assert [entry["path"] for entry in logged(out, "removing a partial checkpoint")] == [str(partial)]
    assert [entry["path"] for entry in logged(out, "skipping a checkpoint that cannot be resumed from")] == [str(newest)]
    assert [entry["epoch"] for entry in logged(out, "resumed from checkpoint")] == [2]
    assert lines == reference_lines[2:]
    assert saved_epochs(directory) == [2, 3] and not partial.exists()

    # Another configuration (another learning rate) starts afresh and leaves those checkpoints alone.
    theirs = {path: path.read_bytes() for path in directory.iterdir()}
    _, lines, out = job("other", *FEATURES, "--lr", "0.01", "--checkpoint-dir", str(directory))
    [warning] = logged(out, "ignoring checkpoints of a different configuration, not resuming from them")
    assert warning["level"] == "WARNING" and warning["differences"] == {"lr": {"theirs": 0.002, "ours": 0.01}}
    assert not logged(out, "resumed from checkpoint")
    assert [line.split()[0] for line in lines[:3]] == ["epoch=1", "epoch=2", "epoch=3"]
    assert all(path.read_bytes() == data for path, data in theirs.items())
    assert saved_epochs(directory) == [2, 2, 3, 3]  # theirs, and its own newest two


def test_the_checkpoint_directory_is_the_argument_else_sagemakers_when_the_job_has_one(tmp_path, opt_ml):
    def resolved(*argv: str) -> Path | None:
        return train.SageMakerEnv.from_environ(train.parse_args(list(argv))).checkpoint_dir

    assert resolved() is None  # no CheckpointConfig: no checkpoints at all
    (opt_ml / "checkpoints").mkdir()
    assert resolved() == opt_ml / "checkpoints"
    assert resolved("--checkpoint-dir", str(tmp_path / "mine")) == tmp_path / "mine"


def test_a_killed_job_started_again_ends_as_an_uninterrupted_one(tmp_path, digits_labels, opt_ml):
    """The real thing: a training process SIGKILLed after its first checkpoint, then started again."""
    data_dir = small_copy(digits_labels, tmp_path / "data")
    directory = tmp_path / "checkpoints"

    def start(name: str, *extra: str) -> subprocess.Popen:
        argv = [sys.executable, "training/train.py", "--data-dir", str(data_dir), "--model-dir", str(tmp_path / name / "model"),
                "--output-dir", str(tmp_path / name / "output"), *RUN, *extra]
        with open(tmp_path / f"{name}.log", "w") as log:  # a file: a full pipe would stall the process
            return subprocess.Popen(argv, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)

    def finish(process: subprocess.Popen, name: str) -> str:
        process.wait(timeout=600)
        out = (tmp_path / f"{name}.log").read_text()
        assert process.returncode == 0, out[-3000:]
        return out

    interrupted = start("interrupted", "--checkpoint-dir", str(directory))
    try:
        deadline = time.monotonic() + 600
        while not list(directory.glob("epoch-*.pt")) and interrupted.poll() is None:
            assert time.monotonic() < deadline, "no checkpoint within 10 minutes"
            time.sleep(0.05)
        interrupted.send_signal(signal.SIGKILL)  # whatever it was doing; it may even have finished
    finally:
        interrupted.kill()
        interrupted.wait()
    assert saved_epochs(directory), "the first run never saved a checkpoint"

    restarted = finish(start("restarted", "--checkpoint-dir", str(directory)), "restarted")
    reference = finish(start("reference"), "reference")
    assert "resumed from checkpoint" in restarted
    assert metric_lines(restarted)[-1] == metric_lines(reference)[-1]
    assert metric_lines(restarted)[-1].startswith("test_loss=")
