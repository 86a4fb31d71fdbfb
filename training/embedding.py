"""The embedding summary: what an image looks like to a trained model, in EMBEDDING_DIMS numbers.

The embedding is the penultimate layer, the features that enter the head's last Linear: the
pooled trunk features for a head without hidden units, the hidden layer's activations for one
with (training/model.py: build_head). The summary projects them onto the test split's first
EMBEDDING_DIMS principal components, centred on the test split's mean feature (`Projection`),
so live traffic and the test split can be compared component by component (training/drift.py).

`EmbeddingClassifier` gives logits and summaries from one forward pass; the final job fits the
projection on its test split and describes that split as a drift `Reference` (`describe`). The
projection travels in the artefact as EMBEDDING_FILE, tensors loaded with weights_only=True as
model.pth is: float32 kept exactly, and nothing but tensors can come out of it.

This module travels in model.tar.gz's `code/`: torch, torchvision's ResNet and training.drift only.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torchvision.models import ResNet

from training.drift import EMBEDDING_DIMS, Reference

EMBEDDING_FILE = "embedding.pt"  # the Projection, beside model.pth in the artefact


@dataclass(frozen=True)
class Projection:
    """centre (F,): the test split's mean feature; components (EMBEDDING_DIMS, F): its principal axes."""

    centre: torch.Tensor
    components: torch.Tensor

    def __post_init__(self) -> None:
        if self.centre.ndim != 1 or self.components.shape != (EMBEDDING_DIMS, self.centre.shape[0]):
            raise ValueError(f"a projection is a centre (F,) and {EMBEDDING_DIMS} components (F each), not "
                             f"{tuple(self.centre.shape)} and {tuple(self.components.shape)}")

    @classmethod
    def fit(cls, features: torch.Tensor) -> "Projection":
        """The first principal components of `features` (N, F). Fewer independent directions than
        EMBEDDING_DIMS (a tiny test split) leave the rest as zero rows: constant components that
        never move the distance. Each axis points where its largest loading is positive, so a
        refit on the same data gives the same signs."""
        features = features.detach().double()
        centre = features.mean(dim=0)
        _, singular, vh = torch.linalg.svd(features - centre, full_matrices=False)
        kept = vh[:EMBEDDING_DIMS][singular[:EMBEDDING_DIMS] > singular.max() * 1e-6]
        signs = torch.sign(kept.gather(1, kept.abs().argmax(dim=1, keepdim=True)))
        components = torch.zeros(EMBEDDING_DIMS, features.shape[1], dtype=torch.float64)
        components[:len(kept)] = kept * signs
        return cls(centre.float(), components.float())

    def apply(self, features: torch.Tensor) -> torch.Tensor:
        """(N, F) features to (N, EMBEDDING_DIMS) summaries."""
        return (features - self.centre) @ self.components.T

    def save(self, path: Path) -> Path:
        torch.save({"centre": self.centre.contiguous(), "components": self.components.contiguous()}, path)
        return path

    @classmethod
    def load(cls, path: Path) -> "Projection":
        tensors = torch.load(path, map_location="cpu", weights_only=True)
        return cls(tensors["centre"].float(), tensors["components"].float())


def split_penultimate(model: ResNet) -> tuple[nn.Sequential, nn.Linear]:
    """(body, last): image to penultimate features, and the head's last Linear. Both share the
    model's own modules, so the split computes exactly what `model` does."""
    head = model.fc
    layers = list(head) if isinstance(head, nn.Sequential) else [head]
    if not isinstance(layers[-1], nn.Linear):
        raise ValueError(f"the head ends in {type(layers[-1]).__name__}, not the Linear that gives the logits")
    trunk = [model.conv1, model.bn1, model.relu, model.maxpool, model.layer1, model.layer2, model.layer3,
             model.layer4, model.avgpool, nn.Flatten(1)]
    return nn.Sequential(*trunk, *layers[:-1]), layers[-1]


class EmbeddingClassifier(nn.Module):
    """The classifier with a second output: a batch (N, 3, S, S) to (logits (N, classes),
    summaries (N, EMBEDDING_DIMS)), the trunk run once for both."""

    def __init__(self, model: ResNet, projection: Projection):
        super().__init__()
        self.body, self.last = split_penultimate(model)
        self.register_buffer("centre", projection.centre.clone())
        self.register_buffer("components", projection.components.clone())

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.body(images)
        return self.last(features), (features - self.centre) @ self.components.T


@dataclass(frozen=True)
class TestSplitDescription:
    """What the final job writes for drift: the projection and the test split's Reference."""

    projection: Projection
    reference: Reference


@torch.inference_mode()
def describe(model: ResNet, batches: Iterable[torch.Tensor], classes: Sequence[str],
             device: torch.device) -> TestSplitDescription:
    """Every test image through the eval-mode model in fp32, as the endpoint runs it (no autocast):
    its top-1 confidence and class, and its summary under the projection fitted on these images."""
    body, last = split_penultimate(model)
    body.eval(), last.eval()
    features, confidences, labels = [], [], []
    for images in batches:
        batch_features = body(images.to(device)).float()
        probabilities = torch.softmax(last(batch_features).float(), dim=1)
        top = probabilities.max(dim=1)
        features.append(batch_features.cpu())
        confidences += top.values.clamp(0.0, 1.0).tolist()
        labels += [classes[index] for index in top.indices.tolist()]
    stacked = torch.cat(features)
    projection = Projection.fit(stacked)
    summaries = projection.apply(stacked).tolist()
    return TestSplitDescription(projection, Reference.of(confidences, labels, summaries))
