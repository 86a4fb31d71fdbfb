"""The embedding summary (training/embedding.py): principal components of the penultimate layer,
computed in the same forward pass as the logits, saved as tensors only."""

from __future__ import annotations

import io
import pickle

import pytest
import torch
from sklearn.decomposition import PCA

from training.drift import EMBEDDING_DIMS
from training.embedding import EmbeddingClassifier, Projection, describe, split_penultimate
from training.model import ModelSpec, build_model


def test_the_projection_is_the_principal_components_of_the_features():
    generator = torch.Generator().manual_seed(0)
    # Features with a clear order of variances, so every component is well defined.
    scales = torch.linspace(5.0, 0.5, 20)
    features = torch.randn(300, 20, generator=generator) * scales @ torch.linalg.qr(
        torch.randn(20, 20, generator=generator))[0] + 3.0
    projection = Projection.fit(features)
    reference = PCA(EMBEDDING_DIMS).fit(features.double().numpy())
    assert torch.allclose(projection.centre.double(), torch.from_numpy(reference.mean_), atol=1e-4)
    for ours, theirs in zip(projection.components.double(), torch.from_numpy(reference.components_)):
        assert abs(float(ours @ theirs)) == pytest.approx(1.0, abs=1e-4)  # the same axis, either sign
    summaries = projection.apply(features)
    assert summaries.shape == (300, EMBEDDING_DIMS)
    assert torch.allclose(summaries.mean(0), torch.zeros(EMBEDDING_DIMS), atol=1e-3)
    variances = summaries.var(0)
    assert torch.allclose(variances.double(), torch.from_numpy(reference.explained_variance_), rtol=1e-3)


def test_a_refit_on_the_same_features_gives_the_same_signs():
    features = torch.randn(50, 12, generator=torch.Generator().manual_seed(1))
    first, again = Projection.fit(features), Projection.fit(features[torch.randperm(50)])
    assert torch.allclose(first.components, again.components, atol=1e-4)


def test_fewer_directions_than_dims_leave_zero_components():
    features = torch.randn(4, 30, generator=torch.Generator().manual_seed(2))  # 4 images: 3 directions
    projection = Projection.fit(features)
    assert projection.components.shape == (EMBEDDING_DIMS, 30)
    assert torch.count_nonzero(projection.components.abs().sum(1)) == 3
    assert torch.all(projection.apply(features)[:, 3:] == 0)


def test_the_projection_round_trips_and_the_file_holds_tensors_only(tmp_path):
    projection = Projection.fit(torch.randn(40, 16, generator=torch.Generator().manual_seed(3)))
    loaded = Projection.load(projection.save(tmp_path / "embedding.pt"))
    assert torch.equal(loaded.centre, projection.centre) and torch.equal(loaded.components, projection.components)
    torch.save({"centre": projection.centre, "components": projection.components,
                "payload": io.StringIO("arbitrary pickled object")}, tmp_path / "unsafe.pt")
    with pytest.raises(pickle.UnpicklingError):
        Projection.load(tmp_path / "unsafe.pt")
    with pytest.raises(ValueError, match="components"):
        Projection(torch.zeros(16), torch.zeros(EMBEDDING_DIMS - 1, 16))


@pytest.mark.parametrize("hidden_units", [0, 24])
def test_one_forward_pass_gives_the_models_logits_and_the_penultimate_layers_summary(hidden_units):
    torch.manual_seed(0)
    model = build_model(ModelSpec("resnet18", 5, hidden_units, dropout=0.5)).eval()
    images = torch.randn(12, 3, 32, 32)
    body, last = split_penultimate(model)
    with torch.inference_mode():
        features = body(images)
        assert features.shape == (12, hidden_units or 512)  # the hidden layer when the head has one
        projection = Projection.fit(features)
        logits, summaries = EmbeddingClassifier(model, projection).eval()(images)
        assert torch.allclose(logits, model(images), atol=1e-5)
        assert torch.allclose(summaries, projection.apply(features), atol=1e-5)


def test_describe_counts_every_image_with_its_top1_class_and_confidence():
    torch.manual_seed(0)
    model = build_model(ModelSpec("resnet18", 3)).eval()
    images = torch.randn(20, 3, 32, 32)
    classes = ["cat", "dog", "fox"]
    described = describe(model, [images[:7], images[7:]], classes, torch.device("cpu"))
    with torch.inference_mode():
        probabilities = torch.softmax(model(images), dim=1)
    reference = described.reference
    assert reference.images == 20 and sum(reference.confidence_counts) == 20
    expected = torch.bincount(probabilities.argmax(1), minlength=3).tolist()
    assert {name: reference.class_counts.get(name, 0) for name in classes} == dict(zip(classes, expected))
    assert reference.embedding_mean == pytest.approx([0.0] * EMBEDDING_DIMS, abs=1e-4)
