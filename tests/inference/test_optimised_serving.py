"""The handler serves the artefact's optimised model when it has one that runs here, eager PyTorch otherwise,
under the same contract: same answer shape, same top-1 answers, the engine named in the answer."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from inference import inference as handler
from tests.inference import images
from training.metrics import DEFAULT_MIN_AGREEMENT
from training.onnx_engine import EAGER_ENGINE, OPTIMISED_MODEL, RUNTIMES



def copy_without_optimised(model_dir: Path, target: Path) -> Path:
    shutil.copytree(model_dir, target)
    (target / OPTIMISED_MODEL).unlink(missing_ok=True)
    return target


def digit_images(digits_dir: Path, limit: int = 120) -> list[tuple[str, bytes]]:
    files = sorted((digits_dir / "test").rglob("*.png"))
    step = max(1, len(files) // limit)
    return [(path.parent.name, path.read_bytes()) for path in files[::step][:limit]]


def answer(model, body: bytes) -> dict:
    payload, _ = handler.output_fn(handler.predict_fn(handler.input_fn(body, "image/png"), model), "application/json")
    return json.loads(payload)


def shape(result: dict) -> tuple:
    """Everything of an answer but the numbers: keys, counts, label sets."""
    return (sorted(result), result["num_classes"], result["model_version"],
            [[sorted(entry) for entry in ranking] for ranking in result["predictions"]])


@pytest.fixture(scope="module")
def optimised_model(model_dir):
    assert (model_dir / OPTIMISED_MODEL).exists(), "the training job left the optimised model out"
    return handler.model_fn(model_dir)


@pytest.fixture(scope="module")
def eager_model(model_dir, tmp_path_factory):
    return handler.model_fn(copy_without_optimised(model_dir, tmp_path_factory.mktemp("eager") / "model"))


def test_the_optimised_model_serves_when_the_artefact_has_one(optimised_model, model_dir):
    assert optimised_model.engine.split("-")[0] in RUNTIMES and optimised_model.module is None
    metadata = json.loads((model_dir / "metadata.json").read_text())
    assert optimised_model.engine == metadata["optimised"]["engine"]  # what the job measured is what serves
    assert answer(optimised_model, _png())["engine"] == optimised_model.engine


def test_eager_serves_when_the_artefact_has_no_optimised_model(eager_model):
    assert eager_model.engine == EAGER_ENGINE and eager_model.module is not None
    assert answer(eager_model, _png())["engine"] == EAGER_ENGINE


def test_eager_serves_when_no_runtime_imports(model_dir, monkeypatch, caplog):
    for runtime in RUNTIMES:
        monkeypatch.setitem(sys.modules, runtime, None)  # `import runtime` then raises ImportError
    model = handler.model_fn(model_dir)
    assert model.engine == EAGER_ENGINE and answer(model, _png())["engine"] == EAGER_ENGINE
    assert "falling back to eager PyTorch" in caplog.text


def test_the_next_runtime_serves_when_the_first_does_not_import(model_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, RUNTIMES[0], None)
    model = handler.model_fn(model_dir)
    assert model.engine.split("-")[0] == RUNTIMES[1]


def test_eager_serves_when_the_runtime_refuses_the_file(model_dir, tmp_path):
    broken = copy_without_optimised(model_dir, tmp_path / "model")
    (broken / OPTIMISED_MODEL).write_bytes(b"not an onnx model")
    assert handler.model_fn(broken).engine == EAGER_ENGINE


def test_both_paths_give_the_same_answer_shape_and_the_same_top1(optimised_model, eager_model, digits_dir):
    samples = digit_images(digits_dir)
    same = 0
    for _label, body in samples:
        fast, eager = answer(optimised_model, body), answer(eager_model, body)
        assert shape(fast) == shape(eager)
        same += fast["predictions"][0][0]["label"] == eager["predictions"][0][0]["label"]
    assert same / len(samples) >= DEFAULT_MIN_AGREEMENT


def test_both_paths_batch_alike(optimised_model, eager_model, digits_dir):
    """Merged requests (the host's dynamic batching) answer as one request each, on both paths."""
    bodies = [body for _label, body in digit_images(digits_dir, limit=5)]
    for model in (optimised_model, eager_model):
        requests = [handler.input_fn(body, "image/png") for body in bodies]
        parts = handler.split_prediction(handler.predict_fn(handler.merge_requests(requests), model), requests)
        alone = [handler.predict_fn(request, model) for request in requests]
        top1 = [p.probabilities.argmax(1).tolist() for p in parts]
        assert top1 == [p.probabilities.argmax(1).tolist() for p in alone]
        assert {p.engine for p in parts} == {model.engine}


def _png() -> bytes:
    return images.png()
