"""Where the backbone's starting weights come from: never a silent fallback.

`none` is random init; `imagenet` is torchvision's download, or the same file given
through a `weights` channel where the container has no internet; any other value is a
path to a state_dict (`.pth`) or to a model directory holding `model.pth` (for example a
model this pipeline trained before).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torchvision import models

from training.model import load_backbone_weights


class PretrainedWeightsError(RuntimeError):
    """The weights asked for cannot be had; the message names the ways to get them."""


def _how_to(arch: str, reason: str) -> str:
    weights = models.get_model_weights(arch).IMAGENET1K_V1
    filename = Path(weights.url).name
    return (
        f"pretrained ImageNet weights for {arch} are not available: {reason}. Give them one of three ways: "
        f"(1) run where torchvision can download {weights.url}; "
        f"(2) add a 'weights' channel (locally --weights-dir) holding {filename}; "
        f"(3) choose --pretrained none for random init, or --pretrained PATH to a state_dict you have."
    )


def _state_dict_file(path: Path) -> Path:
    if path.is_dir():
        candidates = sorted(path.glob("*.pth")) + sorted(path.glob("*.pt"))
        if len(candidates) != 1:
            raise PretrainedWeightsError(f"{path} must hold exactly one .pth/.pt file, found {len(candidates)}")
        return candidates[0]
    if not path.is_file():
        raise PretrainedWeightsError(f"no weights file at {path}")
    return path


def _read(path: Path) -> dict[str, torch.Tensor]:
    try:
        return torch.load(_state_dict_file(path), map_location="cpu", weights_only=True)
    except PretrainedWeightsError:
        raise
    except Exception as error:  # torch raises several kinds for a bad file
        raise PretrainedWeightsError(f"cannot read weights from {path}: {error}") from error


def load_pretrained(model: models.ResNet, source: str, arch: str, weights_channel: Path | None) -> str:
    """Load the backbone's starting weights into `model`; return where they came from."""
    if source == "none":
        return "random init"
    if source == "imagenet":
        if weights_channel is not None:
            state = _read(weights_channel)
            origin = f"weights channel ({_state_dict_file(weights_channel).name})"
        else:
            try:
                state = models.get_model_weights(arch).IMAGENET1K_V1.get_state_dict(progress=False)
            except Exception as error:  # no internet, proxy refusal, disk full...
                raise PretrainedWeightsError(_how_to(arch, f"{type(error).__name__}: {error}")) from error
            origin = "torchvision ImageNet download"
    else:
        state = _read(Path(source))
        origin = str(source)
    try:
        load_backbone_weights(model, state)
    except ValueError as error:
        raise PretrainedWeightsError(f"weights from {origin} do not fit {arch}: {error}") from error
    return origin


def weights_identity(source: str, arch: str, weights_channel: Path | None, seed: int) -> str:
    """Which starting weights `load_pretrained` gives, as a string: the same string, the same
    tensors. It names cached trunk features (training.feature_cache)."""
    if source == "none":
        return f"random init, seed {seed}"  # train.py seeds torch right before building the model
    if source == "imagenet" and weights_channel is None:
        return f"torchvision {arch} IMAGENET1K_V1"
    path = _state_dict_file(weights_channel if source == "imagenet" else Path(source))
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
