"""The classifier: a torchvision ResNet whose `fc` is replaced by a small head.

The state_dict keeps torchvision's key names, so serving rebuilds the same module
with `build_model` and loads it with `weights_only=True`. Only torch and torchvision
are imported here: this module travels inside `model.tar.gz`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torchvision import models

ARCHS = ("resnet18", "resnet34", "resnet50")
FREEZE_MODES = ("none", "backbone", "all-but-last-block")


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild the module before loading its weights."""

    arch: str
    num_classes: int
    hidden_units: int = 0
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"arch must be one of {', '.join(ARCHS)}, not {self.arch!r}")
        if self.num_classes < 2:
            raise ValueError("a classifier needs at least 2 classes")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), not {self.dropout}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelSpec":
        return cls(
            arch=str(data["arch"]),
            num_classes=int(data["num_classes"]),
            hidden_units=int(data.get("hidden_units", 0)),
            dropout=float(data.get("dropout", 0.0)),
        )


def build_head(in_features: int, spec: ModelSpec) -> nn.Sequential:
    if spec.hidden_units > 0:
        return nn.Sequential(
            nn.Linear(in_features, spec.hidden_units),
            nn.ReLU(inplace=True),
            nn.Dropout(spec.dropout),
            nn.Linear(spec.hidden_units, spec.num_classes),
        )
    return nn.Sequential(nn.Dropout(spec.dropout), nn.Linear(in_features, spec.num_classes))


def build_model(spec: ModelSpec) -> models.ResNet:
    """A randomly initialised ResNet with the classification head of `spec`."""
    model: models.ResNet = getattr(models, spec.arch)(weights=None)
    model.fc = build_head(model.fc.in_features, spec)
    return model


def split_frozen(model: models.ResNet, freeze: str) -> tuple[nn.Module | None, nn.Module]:
    """Split the model into a frozen trunk and the trainable rest.

    Both parts share the model's own submodules (no copies), so the state_dict stays
    torchvision's. The trunk's parameters stop needing gradients and the trunk is
    meant to run in eval mode, which makes its output a pure function of the image:
    the training loop may then compute it once per run and cache it.
    """
    if freeze not in FREEZE_MODES:
        raise ValueError(f"freeze must be one of {', '.join(FREEZE_MODES)}, not {freeze!r}")
    stem = [model.conv1, model.bn1, model.relu, model.maxpool, model.layer1, model.layer2, model.layer3]
    if freeze == "none":
        return None, model
    if freeze == "backbone":
        trunk = nn.Sequential(*stem, model.layer4, model.avgpool, nn.Flatten(1))
        tail: nn.Module = model.fc
    else:
        trunk = nn.Sequential(*stem)
        tail = nn.Sequential(model.layer4, model.avgpool, nn.Flatten(1), model.fc)
    for parameter in trunk.parameters():
        parameter.requires_grad_(False)
    trunk.eval()
    return trunk, tail


class FrozenTrunk(nn.Sequential):
    """(trunk, tail) run in sequence; the trunk stays in eval mode even while training,
    so its batch-norm statistics stay those of the weights it was given."""

    def train(self, mode: bool = True) -> "FrozenTrunk":
        super().train(mode)
        self[0].eval()
        return self


def load_backbone_weights(model: models.ResNet, state_dict: dict[str, torch.Tensor]) -> list[str]:
    """Load pretrained backbone weights, leaving the new head as it is.

    Returns the names of the head parameters that were not taken from the source.
    """
    own = model.state_dict()
    backbone = {k: v for k, v in state_dict.items() if not k.startswith("fc.")}
    unknown = sorted(set(backbone) - set(own))
    if unknown:
        raise ValueError(f"weights do not fit this architecture; unexpected keys: {unknown[:5]}")
    mismatched = sorted(k for k, v in backbone.items() if own[k].shape != v.shape)
    if mismatched:
        raise ValueError(f"weights do not fit this architecture; wrong shapes for: {mismatched[:5]}")
    missing = sorted(k for k in own if not k.startswith("fc.") and k not in backbone)
    if missing:
        raise ValueError(f"weights lack backbone tensors: {missing[:5]}")
    model.load_state_dict(backbone, strict=False)
    return sorted(k for k in own if k.startswith("fc."))
