"""inference/inference.py under SageMaker's handler contract, on a real artefact."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from inference import inference as handler
from inference.inference import ACCEPTED_TYPES, RequestError
from tests.inference import images
from training.drift import EMBEDDING_DIMS
from training.image_contract import NOT_AN_IMAGE
from training.onnx_engine import OPTIMISED_MODEL


@pytest.fixture(scope="module")
def model(model_dir):
    return handler.model_fn(model_dir)


def answer(model, body, content_type, accept="application/json", context=None) -> dict:
    request = handler.input_fn(body, content_type, context)
    payload, answer_type = handler.output_fn(handler.predict_fn(request, model), accept)
    assert answer_type == "application/json"
    return json.loads(payload)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def check_contract(result: dict, model, images_sent: int, k: int) -> None:
    assert set(result) == {"model_version", "engine", "num_classes", "predictions"}
    assert result["engine"] == model.engine
    assert result["num_classes"] == model.num_classes and isinstance(result["model_version"], str)
    assert len(result["predictions"]) == images_sent
    for ranking in result["predictions"]:
        assert len(ranking) == k
        assert all(set(entry) == {"label", "probability"} for entry in ranking)
        assert all(entry["label"] in model.classes for entry in ranking)
        probabilities = [entry["probability"] for entry in ranking]
        assert probabilities == sorted(probabilities, reverse=True) and all(0 <= p <= 1 for p in probabilities)


def test_model_fn_loads_the_artefact(model, model_dir):
    metadata = json.loads((model_dir / "metadata.json").read_text())
    assert model.classes == json.loads((model_dir / "classes.json").read_text())
    assert model.version == metadata["version"]
    assert model.preset.to_dict() == json.loads((model_dir / "preprocessing.json").read_text())
    assert model.device.type in ("cpu", "cuda")
    assert model.module is None if model.engine != "pytorch-eager" else not model.module.training


def test_the_version_falls_back_to_the_weights_hash(model_dir, tmp_path):
    copy = shutil.copytree(model_dir, tmp_path / "model")
    (copy / "metadata.json").write_text("{}")
    digest = hashlib.sha256((copy / "model.pth").read_bytes()).hexdigest()
    assert handler.model_fn(copy).version == "sha256-" + digest[:16]


def test_model_fn_refuses_weights_that_are_not_plain_tensors(model_dir, tmp_path):
    copy = shutil.copytree(model_dir, tmp_path / "model")
    (copy / OPTIMISED_MODEL).unlink(missing_ok=True)  # the eager path reads model.pth (the optimised one never does)
    state = torch.load(copy / "model.pth", weights_only=True)
    state["payload"] = io.StringIO("arbitrary pickled object")  # what weights_only must refuse
    torch.save(state, copy / "model.pth")
    with pytest.raises(pickle.UnpicklingError):
        handler.model_fn(copy)


@pytest.mark.parametrize("content_type, data", [
    ("image/jpeg", images.jpeg()),
    ("image/png", images.png()),
    ("image/webp", images.webp()),
    ("application/x-image", images.jpeg()),
    ("application/x-image", images.png()),
    ("application/x-image", images.webp()),
    ("image/jpeg; charset=binary", images.jpeg()),
    ("image/gif", images.gif()),
    ("image/bmp", images.bmp()),
    ("application/x-image", images.animated_gif()),
    ("application/x-image", images.bmp()),
])
def test_every_image_content_type(model, content_type, data):
    check_contract(answer(model, data, content_type), model, 1, min(5, model.num_classes))


def test_every_colour_mode_is_answered(model):
    for name, data in images.variants().items():
        check_contract(answer(model, data, "application/x-image"), model, 1, min(5, model.num_classes))


def test_json_with_one_image_and_with_several(model):
    one = json.dumps({"image": b64(images.png())})
    check_contract(answer(model, one, "application/json"), model, 1, min(5, model.num_classes))
    several = json.dumps({"images": [b64(images.jpeg()), b64(images.png()), b64(images.webp())], "top_k": 2})
    result = answer(model, several.encode(), "application/json")
    check_contract(result, model, 3, 2)


def test_a_batch_answers_each_image_as_if_alone(model):
    alone = [answer(model, data, "image/png")["predictions"][0] for data in (images.png(), images.png(30, 90))]
    both = json.dumps({"images": [b64(images.png()), b64(images.png(30, 90))]})
    together = answer(model, both, "application/json")["predictions"]
    for single, batched in zip(alone, together):
        assert [e["label"] for e in single] == [e["label"] for e in batched]
        assert [e["probability"] for e in single] == pytest.approx([e["probability"] for e in batched], abs=1e-5)


def test_top_k_from_body_header_default_and_capped(model):
    data = images.png()
    assert len(answer(model, data, "image/png")["predictions"][0]) == min(5, model.num_classes)
    header = {"X-Amzn-SageMaker-Custom-Attributes": "trace=abc,top_k=3"}
    assert len(answer(model, data, "image/png", context=header)["predictions"][0]) == 3
    lower = {"x-amzn-sagemaker-custom-attributes": "top_k=2"}
    assert len(answer(model, data, "image/png", context=lower)["predictions"][0]) == 2
    body = json.dumps({"image": b64(data), "top_k": 1})
    assert len(answer(model, body, "application/json", context=header)["predictions"][0]) == 1  # body wins
    body = json.dumps({"image": b64(data), "top_k": 10_000})
    ranking = answer(model, body, "application/json")["predictions"][0]
    assert len(ranking) == model.num_classes
    assert sum(entry["probability"] for entry in ranking) == pytest.approx(1.0, abs=1e-4)


def test_embedding_summaries_only_when_asked_in_the_header_or_the_body(model):
    assert model.embeddings  # the final job's artefact has the projection
    data = images.png()
    plain = answer(model, data, "image/png")
    check_contract(plain, model, 1, min(5, model.num_classes))  # not asked: the answer is unchanged
    for context in ({"X-Amzn-SageMaker-Custom-Attributes": "top_k=2,embeddings=1"},
                    {"x-amzn-sagemaker-custom-attributes": "embeddings=true; top_k=2"}):
        asked = answer(model, data, "image/png", context=context)
        embeddings = asked.pop("embeddings")
        check_contract(asked, model, 1, 2)
        assert asked["predictions"][0] == plain["predictions"][0][:2]
        assert len(embeddings) == 1 and len(embeddings[0]) == EMBEDDING_DIMS
        assert all(isinstance(value, float) and abs(value) < 1e6 for value in embeddings[0])
    several = json.dumps({"images": [b64(images.png()), b64(images.jpeg())], "embeddings": True})
    assert [len(row) for row in answer(model, several, "application/json")["embeddings"]] == [EMBEDDING_DIMS] * 2
    header = {"X-Amzn-SageMaker-Custom-Attributes": "embeddings=1"}
    unasked = json.dumps({"image": b64(data), "embeddings": False})  # the body wins
    assert "embeddings" not in answer(model, unasked, "application/json", context=header)
    assert "embeddings" not in answer(model, data, "image/png", context={header.popitem()[0]: "embeddings=0"})


@pytest.mark.parametrize("body, context", [
    (images.png(), {"X-Amzn-SageMaker-Custom-Attributes": "embeddings=yes"}),
    (json.dumps({"image": b64(images.png()), "embeddings": "maybe"}), None),
    (json.dumps({"image": b64(images.png()), "embeddings": 2}), None),
])
def test_a_bad_embeddings_flag_is_400(body, context):
    content_type = "image/png" if isinstance(body, bytes) else "application/json"
    expect_error(400, body, content_type, "must be 1 or 0", context=context)


def expect_error(status: int, body, content_type, match: str, context=None) -> RequestError:
    with pytest.raises(RequestError, match=match) as caught:
        handler.input_fn(body, content_type, context)
    assert caught.value.status == status and caught.value.status_code == status
    return caught.value


def test_unsupported_content_types_are_415_listing_the_accepted_ones():
    for content_type in ("text/plain", "image/tiff", "application/octet-stream", "", None):
        error = expect_error(415, images.png(), content_type, "unsupported content type")
        assert all(accepted in str(error) for accepted in ACCEPTED_TYPES)


@pytest.mark.parametrize("body, content_type, match", [
    (b"", "image/jpeg", "empty body"),
    ("", "application/json", "empty body"),
    (b"not an image at all", "image/png", "not an image"),
    (images.encode(images.rgb_image(), "TIFF"), "application/x-image", "not an image"),
    (images.gif(96, 128)[:60], "image/gif", "truncated or corrupt"),
    (images.bmp(96, 128)[:200], "image/bmp", "truncated or corrupt"),
    (images.jpeg(96, 128)[:300], "image/jpeg", "truncated or corrupt"),
    (images.png(96, 128)[:-40], "image/png", "truncated or corrupt"),
    (images.webp(96, 128)[:200], "image/webp", "truncated or corrupt"),
    (images.corrupt_png_idat(), "image/png", "corrupt"),
    (b"{not json", "application/json", "not valid JSON"),
    (b"[1, 2]", "application/json", '"image" or "images"'),
    (json.dumps({"image": "a", "images": ["b"]}), "application/json", '"image" or "images"'),
    (json.dumps({"images": []}), "application/json", "non-empty list"),
    (json.dumps({"image": "@@not base64@@"}), "application/json", "not valid base64"),
    (json.dumps({"images": [b64(images.png()), "%%%"]}), "application/json", r"images\[1\] is not valid base64"),
    (json.dumps({"image": 42}), "application/json", "base64 string"),
    (json.dumps({"image": ""}), "application/json", "empty image"),
    (json.dumps({"image": b64(b"plain text")}), "application/json", "not an image"),
    (json.dumps({"image": b64(images.png()), "top_k": 0}), "application/json", "positive integer"),
    (json.dumps({"image": b64(images.png()), "top_k": "three"}), "application/json", "positive integer"),
    (json.dumps({"image": b64(images.png()), "top_k": 2.5}), "application/json", "positive integer"),
    (json.dumps({"image": b64(images.png()), "top_k": True}), "application/json", "positive integer"),
])
def test_bad_input_is_400_with_a_message(body, content_type, match):
    expect_error(400, body, content_type, match)


def test_what_is_not_an_image_gets_the_contracts_message():
    assert str(expect_error(400, b"%PDF-1.7", "application/x-image", "not an image")) == NOT_AN_IMAGE
    several = json.dumps({"images": [b64(images.png()), b64(b"%PDF-1.7")]})
    assert str(expect_error(400, several, "application/json", "not an image")) == f"images[1]: {NOT_AN_IMAGE}"


def test_gif_and_bmp_are_answered_as_their_rgb_conversion(model):
    for data in (images.gif(), images.bmp()):
        converted = images.encode(Image.open(io.BytesIO(data)).convert("RGB"), "PNG")
        assert answer(model, data, "application/x-image") == answer(model, converted, "image/png")


def test_a_bad_top_k_header_is_400():
    expect_error(400, images.png(), "image/png", "positive integer",
                 context={"X-Amzn-SageMaker-Custom-Attributes": "top_k=-1"})


@pytest.mark.parametrize("body, content_type", [
    (images.png_bomb(), "image/png"),
    (images.jpeg_bomb(), "image/jpeg"),
    (images.gif_bomb(), "image/gif"),
    (images.bmp_bomb(), "application/x-image"),
    (json.dumps({"images": [b64(images.png()), b64(images.png_bomb())]}), "application/json"),
])
def test_pixel_bombs_are_413(body, content_type):
    expect_error(413, body, content_type, "too large")


def test_oversized_bodies_and_too_many_images_are_413():
    expect_error(413, b"\xff\xd8\xff" + bytes(handler.MAX_BODY_BYTES), "image/jpeg", "at most")
    many = json.dumps({"images": [b64(images.png(8, 8))] * (handler.MAX_IMAGES_PER_REQUEST + 1)})
    expect_error(413, many, "application/json", "at most")


def test_an_answer_only_json_can_satisfy_is_406(model):
    prediction = handler.predict_fn(handler.input_fn(images.png(), "image/png"), model)
    for accept in (None, "", "*/*", "application/json", "text/html, application/json;q=0.9"):
        assert handler.output_fn(prediction, accept)[1] == "application/json"
    with pytest.raises(RequestError) as caught:
        handler.output_fn(prediction, "text/csv")
    assert caught.value.status == 406


def test_the_artefact_carries_its_serving_code(model_tar, model_dir):
    import tarfile

    with tarfile.open(model_tar) as archive:
        names = set(archive.getnames())
    assert {"code/inference.py", "code/requirements.txt", "code/training/presets.py", "code/training/model.py",
            "code/training/__init__.py", "code/training/image_contract.py", "code/training/drift.py",
            "code/training/embedding.py", "model.pth", "classes.json", "preprocessing.json"} <= names
    assert (model_dir / "code" / "inference.py").read_text() == Path(handler.__file__).read_text()


def test_inference_imports_from_the_artefacts_code_dir_alone(model_dir):
    # SageMaker puts only code/ on the path: training.presets must come from there.
    probe = ("import inference, training.presets, json; "
             "m = inference.model_fn('..'); "
             "print(json.dumps([training.presets.__file__, m.num_classes]))")
    result = subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, '.'); {probe}"],
                            cwd=model_dir / "code", capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    presets_file, num_classes = json.loads(result.stdout.strip().splitlines()[-1])
    assert Path(presets_file).resolve().is_relative_to((model_dir / "code").resolve())
    assert num_classes == len(json.loads((model_dir / "classes.json").read_text()))
