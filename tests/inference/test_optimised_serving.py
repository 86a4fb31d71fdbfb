"""The handler serves the artefact's optimised model when it has one that runs here, eager PyTorch otherwise,
under the same contract: same answer shape, same top-1 answers, the engine named in the answer."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

import torch

from inference import inference as handler
from tests.inference import images
from training.drift import EMBEDDING_DIMS, REFERENCE_FILE, Reference
from training.embedding import EMBEDDING_FILE
from training.metrics import DEFAULT_MIN_AGREEMENT
from training.model import ModelSpec, build_model
from training.onnx_engine import EAGER_ENGINE, OPTIMISED_MODEL, RUNTIMES
from training.optimised import export_fp32
from training.presets import ClassificationPresetEval


def copy_without_optimised(model_dir: Path, target: Path) -> Path:
    shutil.copytree(model_dir, target)
    (target / OPTIMISED_MODEL).unlink(missing_ok=True)
    return target


def digit_images(digits_dir: Path, limit: int = 120) -> list[tuple[str, bytes]]:
    files = sorted((digits_dir / "test").rglob("*.png"))
    step = max(1, len(files) // limit)
    return [(path.parent.name, path.read_bytes()) for path in files[::step][:limit]]


def answer(model, body: bytes, **headers: str) -> dict:
    request = handler.input_fn(body, "image/png", headers)
    payload, _ = handler.output_fn(handler.predict_fn(request, model), "application/json")
    return json.loads(payload)


ASK = {handler.CUSTOM_ATTRIBUTES_HEADER: "embeddings=1"}


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


def test_requests_prepared_ahead_answer_exactly_as_those_predict_fn_preprocesses(optimised_model, eager_model,
                                                                                 digits_dir):
    """prepare_fn (the host runs it on the request's thread) is predict_fn's own preprocessing, moved:
    the same tensors, so the same probabilities, alone and merged, on both paths."""
    bodies = [body for _label, body in digit_images(digits_dir, limit=4)]
    for model in (optimised_model, eager_model):
        requests = [handler.input_fn(body, "image/png") for body in bodies]
        prepared = [handler.prepare_fn(request, model) for request in requests]
        assert all(request.batch is None for request in requests)
        for plain, ready in zip(requests, prepared):
            assert torch.equal(ready.batch, handler.preprocess(plain.images, model.preset))
            assert torch.equal(handler.predict_fn(ready, model).probabilities,
                               handler.predict_fn(plain, model).probabilities)
        merged = handler.merge_requests(prepared)
        assert merged.batch is not None and len(merged.batch) == len(bodies)
        assert handler.merge_requests([prepared[0], requests[1]]).batch is None  # mixed: predict_fn preprocesses
        parts = handler.split_prediction(handler.predict_fn(merged, model), prepared)
        whole = handler.split_prediction(handler.predict_fn(handler.merge_requests(requests), model), requests)
        assert all(torch.equal(a.probabilities, b.probabilities) for a, b in zip(parts, whole))


def test_both_paths_give_the_summaries_from_one_projection(optimised_model, eager_model, digits_dir, model_dir):
    """The optimised model's second output is the eager wrapper's summary, within a small part of the
    test split's spread per image and for the mean over 120 images (what drift compares). An int8
    model's trunk moves them more: measured on this model forced to int8 (agreement 0.986), 0.075-0.085
    per image and up to 0.19 for a component's mean (embedding distance 0.08-0.09 over the whole test split)."""
    assert optimised_model.embeddings and eager_model.embeddings
    spread = torch.tensor(Reference.from_dict(json.loads((model_dir / REFERENCE_FILE).read_text())).embedding_std)
    fast, eager = ([answer(model, body, **ASK) for _label, body in digit_images(digits_dir)]
                   for model in (optimised_model, eager_model))
    assert shape(fast[0]) == shape(eager[0]) and "embeddings" in fast[0]
    fast_rows = torch.tensor([row for result in fast for row in result["embeddings"]])
    eager_rows = torch.tensor([row for result in eager for row in result["embeddings"]])
    assert fast_rows.shape == eager_rows.shape == (len(fast), EMBEDDING_DIMS)
    print(f"{optimised_model.engine} vs eager, in test-split spreads: mean |difference| per image "
          f"{((fast_rows - eager_rows).abs() / spread).mean():.4f}, of the means "
          f"{((fast_rows.mean(0) - eager_rows.mean(0)).abs() / spread).max():.4f}")
    per_image, of_means = (0.15, 0.25) if optimised_model.engine.endswith("-int8") else (0.01, 0.01)
    assert ((fast_rows - eager_rows).abs() / spread).mean() < per_image
    assert ((fast_rows.mean(0) - eager_rows.mean(0)).abs() / spread).max() < of_means


def copy_without_projection(model_dir: Path, target: Path, optimised: bool) -> Path:
    """The artefact as a job before drift made it: no embedding.pt; an optimised model, when kept,
    with the logits alone."""
    copy_without_optimised(model_dir, target)
    (target / EMBEDDING_FILE).unlink()
    if optimised:
        module = build_model(ModelSpec.from_dict(json.loads((target / "model.json").read_text())))
        module.load_state_dict(torch.load(target / "model.pth", weights_only=True))
        preset = ClassificationPresetEval.from_dict(json.loads((target / "preprocessing.json").read_text()))
        export_fp32(module, target / OPTIMISED_MODEL, preset.crop_size)
    return target


@pytest.mark.parametrize("optimised", [True, False], ids=["optimised", "eager"])
def test_a_model_without_projection_answers_without_the_field_and_says_so_once(model_dir, tmp_path, caplog,
                                                                               optimised):
    copy = copy_without_projection(model_dir, tmp_path / "model", optimised)
    metadata = json.loads((copy / "metadata.json").read_text())
    # Said once per worker and model version: this copy is a version of its own.
    version = f"{metadata['version']}-without-projection-{'optimised' if optimised else 'eager'}"
    (copy / "metadata.json").write_text(json.dumps(metadata | {"version": version}))
    model = handler.model_fn(copy)
    assert (model.engine != EAGER_ENGINE) == optimised and not model.embeddings
    results = [answer(model, _png(), **ASK) for _ in range(2)]
    assert all(set(result) == {"model_version", "engine", "num_classes", "predictions"} for result in results)
    assert caplog.text.count("embedding summaries asked for") == 1


def test_merged_requests_get_the_summaries_each_asked_for(optimised_model, eager_model, digits_dir):
    """The host's dynamic batching merges requests that ask and requests that do not: each gets its own answer."""
    bodies = [body for _label, body in digit_images(digits_dir, limit=4)]
    asks = [True, False, True, False]
    for model in (optimised_model, eager_model):
        requests = [handler.input_fn(body, "image/png", ASK if ask else {}) for body, ask in zip(bodies, asks)]
        assert handler.merge_requests(requests).embeddings
        assert not handler.merge_requests(requests[1::2]).embeddings
        parts = handler.split_prediction(handler.predict_fn(handler.merge_requests(requests), model), requests)
        alone = [handler.predict_fn(request, model) for request in requests]
        for part, single, ask in zip(parts, alone, asks):
            assert (part.embeddings is not None) == ask == (single.embeddings is not None)
            if ask:
                assert part.embeddings.shape == (1, EMBEDDING_DIMS)
                assert torch.allclose(part.embeddings, single.embeddings, atol=1e-3 * single.embeddings.abs().max())
            assert ("embeddings" in json.loads(handler.output_fn(part, "application/json")[0])) == ask


def _png() -> bytes:
    return images.png()
