"""Per-epoch checkpoints, so that an interrupted training job resumes exactly where it stopped.

SageMaker's managed spot training (a request with CheckpointConfig) syncs the container's
checkpoint directory (/opt/ml/checkpoints) with S3; when spot capacity is reclaimed it starts
the job again from scratch with that directory restored. After each epoch train.py saves
everything the next epoch depends on: the trainable module (a frozen trunk never changes and
is rebuilt from the seed or the weights), the optimiser, the LR scheduler, the early-stopping
state, the epoch, and every random number generator the loop draws from (torch CPU and CUDA,
numpy, python, and the training loader's shuffle generator). A resumed run is then, bit for
bit, the run that was never stopped.

Files are `epoch-0003-<fingerprint>.pt`: the fingerprint hashes the hyperparameters that shape
the run, so a checkpoint of another configuration (another trial sharing the prefix, a changed
request) is never resumed from, nor pruned, nor overwritten. Each is written to a temporary
file in the same directory, fsynced and renamed into place; the newest two are kept. On start
the newest that loads and matches is used: a partial temporary file or a corrupt checkpoint is
skipped with a warning, falling back to the one before. Loading uses `weights_only=True`: a
checkpoint holds tensors and plain containers only.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from training.logs import get_logger

logger = get_logger(__name__)

FORMAT = 1  # bump when the payload's layout changes: older checkpoints are then skipped
KEEP = 2  # checkpoints kept: the newest may not have reached S3 whole when the instance was reclaimed
SAGEMAKER_DIR = "checkpoints"  # under /opt/ml: SageMaker creates it only for a request with CheckpointConfig
# The hyperparameters that shape the run (with the class names): a checkpoint resumes only the same configuration.
RUN_HYPERPARAMETERS = (
    "arch", "pretrained", "freeze", "hidden_units", "dropout", "optimizer", "lr", "momentum", "weight_decay",
    "batch_size", "epochs", "patience", "image_size", "hflip_prob", "min_scale", "cache_features", "seed",
)
_NAME = re.compile(r"epoch-(\d{4,})-([0-9a-f]{12})\.pt")


def checkpoint_dir(explicit: Path | None) -> Path | None:
    """Where this run keeps checkpoints: `--checkpoint-dir`, else SageMaker's checkpoint directory
    when the job has one (`$SAGEMAKER_BASE_DIR`, the local emulator's /opt/ml, or /opt/ml), else None."""
    if explicit is not None:
        return explicit
    managed = Path(os.environ.get("SAGEMAKER_BASE_DIR") or "/opt/ml") / SAGEMAKER_DIR
    return managed if managed.is_dir() else None


def fingerprint(args: argparse.Namespace, classes: list[str]) -> dict[str, Any]:
    values = {name: getattr(args, name) for name in RUN_HYPERPARAMETERS} | {"classes": list(classes)}
    return {name: str(value) if isinstance(value, Path) else value for name, value in values.items()}


@dataclass
class Resumed:
    """What the epoch loop carries from one epoch to the next (the rest is restored in place)."""

    epoch: int
    history: list[dict[str, Any]]
    best: dict[str, Any]


class Checkpointer:
    """Saves a run's state after each epoch in `directory`, and restores the newest valid one."""

    def __init__(self, directory: Path, fingerprint: dict[str, Any], module: nn.Module,
                 optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler,
                 generator: torch.Generator | None) -> None:
        self.directory = directory
        self.fingerprint = fingerprint
        self.key = hashlib.sha256(json.dumps(fingerprint, sort_keys=True, default=str).encode()).hexdigest()[:12]
        self.module, self.optimizer, self.scheduler, self.generator = module, optimizer, scheduler, generator

    def path(self, epoch: int) -> Path:
        return self.directory / f"epoch-{epoch:04d}-{self.key}.pt"

    def resume(self) -> Resumed | None:
        """Restore the newest valid checkpoint of this configuration in place; None: start fresh."""
        if not self.directory.is_dir():
            return None
        self._ignore_others()
        for path in sorted(self._own(), key=_epoch, reverse=True):
            try:
                payload = torch.load(path, map_location="cpu", weights_only=True)
                self._check(payload, path)
            except Exception as error:  # noqa: BLE001 - a checkpoint cut short or damaged: try the one before
                logger.warning("skipping a checkpoint that cannot be resumed from",
                               extra={"path": str(path), "error": str(error)})
                continue
            self._restore(payload)
            logger.info("resumed from checkpoint", extra={"epoch": payload["epoch"], "path": str(path)})
            return Resumed(payload["epoch"], payload["history"], payload["best"])
        return None

    def save(self, epoch: int, history: list[dict[str, Any]], best: dict[str, Any]) -> Path | None:
        """Write the state at the end of `epoch` atomically; keep the newest KEEP checkpoints.

        A checkpoint that cannot be written (a full disk) only warns: the job trains on, and an
        interruption would cost it more epochs.
        """
        payload = {
            "format": FORMAT,
            "fingerprint": self.fingerprint,
            "epoch": epoch,
            "module": self.module.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "history": history,
            "best": best,
            "rng": _rng_states(self.generator),
        }
        path = self.path(epoch)
        try:
            _write_atomically(path, payload)
        except (OSError, RuntimeError) as error:  # torch reports a failed write as a RuntimeError
            logger.warning("checkpoint not written", extra={"path": str(path), "error": str(error)})
            return None
        # Ours only; any of a later epoch is left from a run this one replays (it failed to load).
        ours = sorted((p for p in self._own() if _epoch(p) <= epoch), key=_epoch)
        for stale in [p for p in self._own() if _epoch(p) > epoch] + ours[:-KEEP]:
            stale.unlink(missing_ok=True)
        return path

    def _own(self) -> list[Path]:
        return [p for p in self.directory.iterdir() if (m := _NAME.fullmatch(p.name)) and m.group(2) == self.key]

    def _ignore_others(self) -> None:
        """Say why files in the directory are not resumed from: partial writes, other configurations."""
        for partial in self.directory.glob(f".epoch-*-{self.key}.pt.*.tmp"):
            logger.warning("removing a partial checkpoint", extra={"path": str(partial)})
            partial.unlink(missing_ok=True)
        others = sorted((p for p in self.directory.iterdir() if (m := _NAME.fullmatch(p.name)) and m.group(2) != self.key),
                        key=_epoch)
        if not others:
            return
        try:  # what differs, for the log: read from the newest (mapped, not read whole)
            theirs = torch.load(others[-1], map_location="cpu", weights_only=True, mmap=True)["fingerprint"]
            differences = {k: {"theirs": theirs.get(k), "ours": v} for k, v in self.fingerprint.items()
                           if theirs.get(k) != v}
        except Exception:  # noqa: BLE001 - only the log line loses its detail
            differences = None
        logger.warning("ignoring checkpoints of a different configuration, not resuming from them",
                       extra={"paths": [str(p) for p in others], "differences": differences})

    def _check(self, payload: Any, path: Path) -> None:
        """Everything that could fail is checked before any state is touched."""
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            raise ValueError(f"not a checkpoint of format {FORMAT}")
        if payload["fingerprint"] != self.fingerprint:
            raise ValueError("its configuration differs from this run's")
        if payload["epoch"] != _epoch(path):
            raise ValueError(f"holds epoch {payload['epoch']}, not its name's")
        ours = {k: tuple(v.shape) for k, v in self.module.state_dict().items()}
        if {k: tuple(v.shape) for k, v in payload["module"].items()} != ours:
            raise ValueError("its module's parameters differ from this run's")
        for key in ("optimizer", "scheduler", "history", "best", "rng"):
            payload[key]  # noqa: B018 - a KeyError names what is missing
        if len(payload["rng"]["cuda"]) not in (0, torch.cuda.device_count()):
            raise ValueError("written on a machine with another number of GPUs")

    def _restore(self, payload: dict[str, Any]) -> None:
        self.module.load_state_dict(payload["module"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])
        _set_rng_states(payload["rng"], self.generator)


def _epoch(path: Path) -> int:
    match = _NAME.fullmatch(path.name)
    assert match is not None
    return int(match.group(1))


def _rng_states(generator: torch.Generator | None) -> dict[str, Any]:
    version, state, gauss = random.getstate()
    numpy_state = np.random.get_state(legacy=False)
    return {
        "torch": torch.get_rng_state(),
        # Only a run that used CUDA drew from it (asking would otherwise start CUDA for nothing).
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
        "numpy": numpy_state | {"state": numpy_state["state"] | {"key": numpy_state["state"]["key"].tolist()}},
        "python": [version, list(state), gauss],
        "loader": generator.get_state() if generator is not None else None,
    }


def _set_rng_states(states: dict[str, Any], generator: torch.Generator | None) -> None:
    torch.set_rng_state(states["torch"])
    if states["cuda"]:
        torch.cuda.set_rng_state_all(states["cuda"])
    numpy_state = states["numpy"]
    key = np.array(numpy_state["state"]["key"], dtype=np.uint32)
    np.random.set_state(numpy_state | {"state": numpy_state["state"] | {"key": key}})
    version, state, gauss = states["python"]
    random.setstate((version, tuple(state), gauss))
    if generator is not None:
        generator.set_state(states["loader"])


def _write_atomically(path: Path, payload: dict[str, Any]) -> None:
    """A temporary file in the same directory, fsynced, renamed into place: a reader (or S3's sync)
    sees a whole checkpoint under its name or none."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            torch.save(payload, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)  # and the rename itself durable
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
