"""Training jobs for tests: in this process (fast, the default) or as SageMaker runs the script.

Both take the same channels and hyperparameters, set the same SM_* variables and return
the same TrainingRun: the log, the job's directories, the packed model.tar.gz and the
exit code.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from training import train
from training.artifact import pack_model_dir
from training.metrics import DEBUGGER_RULES

REPO_ROOT = Path(__file__).resolve().parent.parent

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

    def save(self) -> None:
        """Beside its directories, so another test process can `load` it."""
        (self.model_dir.parent / "run.json").write_text(json.dumps({"log": self.log, "returncode": self.returncode}))

    @classmethod
    def load(cls, tmp: Path) -> "TrainingRun | None":
        """A run `save`d in `tmp`, or None."""
        saved = tmp / "run.json"
        if not saved.exists():
            return None
        data = json.loads(saved.read_text())
        return cls(data["log"], tmp / "model", tmp / "output", tmp / "model.tar.gz", data["returncode"])


def metric_lines(log: str) -> list[str]:
    """The lines a job prints for its metrics: one per epoch, then the test line."""
    return [line for line in log.splitlines() if line.startswith(("epoch=", "test_loss="))]


def hyperparameter_args(hyperparameters: dict[str, str]) -> list[str]:
    return [item for name, value in hyperparameters.items() for item in (f"--{name}", str(value))]


def sagemaker_environment(tmp: Path, channels: dict[str, Path]) -> dict[str, str]:
    return {
        "SM_MODEL_DIR": str(tmp / "model"),
        "SM_OUTPUT_DATA_DIR": str(tmp / "output"),
        "SM_NUM_GPUS": "0",
        "TRAINING_JOB_NAME": f"test-{tmp.name}",
        **{f"SM_CHANNEL_{name.upper()}": str(path) for name, path in channels.items()},
    }


@contextlib.contextmanager
def environment(variables: dict[str, str]) -> Iterator[None]:
    saved = dict(os.environ)
    os.environ.update(variables)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _finish(tmp: Path, log: str, returncode: int) -> TrainingRun:
    model_tar = tmp / "model.tar.gz"
    if returncode == 0:
        pack_model_dir(tmp / "model", model_tar)
    return TrainingRun(log, tmp / "model", tmp / "output", model_tar, returncode)


def run_training_job(tmp: Path, channels: dict[str, Path], hyperparameters: dict[str, str],
                     extra_env: dict[str, str] | None = None) -> TrainingRun:
    """training.train's entry point in this process, under the variables SageMaker would set.

    Only one at a time: the variables are the process's. A crash is exit code 1 with its traceback
    in the log, as the script's would be."""
    log = io.StringIO()
    with environment({**sagemaker_environment(tmp, channels), **(extra_env or {})}), \
            contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        try:
            returncode = train.run(hyperparameter_args(hyperparameters))
        except SystemExit as exit_:
            returncode = exit_.code if isinstance(exit_.code, int) else 1
        except Exception:  # noqa: BLE001 - the job's failure, reported as the script would
            traceback.print_exc()
            returncode = 1
    return _finish(tmp, log.getvalue(), returncode)


def run_training_script(tmp: Path, channels: dict[str, Path], hyperparameters: dict[str, str],
                        extra_env: dict[str, str] | None = None, timeout: float = 600) -> TrainingRun:
    """training/train.py as SageMaker runs it: a process, SM_* variables, --name value arguments."""
    env = {**os.environ, **sagemaker_environment(tmp, channels), **(extra_env or {})}
    process = subprocess.run(
        [sys.executable, "training/train.py", *hyperparameter_args(hyperparameters)],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout,
    )
    return _finish(tmp, process.stdout + process.stderr, process.returncode)
