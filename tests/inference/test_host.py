"""The local endpoint host over HTTP: SageMaker's container contract on a real artefact."""

from __future__ import annotations

import base64
import io
import json
import tarfile
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from inference.inference import ACCEPTED_TYPES
from local_aws.endpoint_host import EndpointHost, HostStartError
from tests.inference import images
from training.drift import EMBEDDING_DIMS
from training.image_contract import NOT_AN_IMAGE

IMAGE_TYPES = ["image/jpeg", "image/png", "image/webp", "application/x-image"]


@pytest.fixture(scope="module")
def host(model_tar):
    with EndpointHost(model_tar, workers=1, torch_threads=1) as running:
        yield running


@pytest.fixture(scope="module")
def batching_host(model_tar):
    with EndpointHost(model_tar, workers=2, torch_threads=1, max_batch_size=4, max_batch_wait_ms=20) as running:
        yield running


def invoke(host, body, content_type, **headers) -> requests.Response:
    return requests.post(f"{host.url}/invocations", data=body, timeout=60,
                         headers={"Content-Type": content_type, **headers})


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_ping_is_200_once_the_model_is_loaded(host):
    answer = requests.get(f"{host.url}/ping", timeout=10)
    assert answer.status_code == 200 and answer.json() == {"status": "healthy"}


@pytest.mark.parametrize("content_type, data", [
    ("image/jpeg", images.jpeg()), ("image/png", images.png()), ("image/webp", images.webp()),
    ("application/x-image", images.with_orientation("JPEG")),
    ("image/gif", images.animated_gif()), ("image/bmp", images.bmp()),
])
def test_images_are_answered_with_the_json_contract(host, content_type, data):
    answer = invoke(host, data, content_type)
    assert answer.status_code == 200, answer.text
    assert answer.headers["Content-Type"] == "application/json"
    body = answer.json()
    assert set(body) == {"model_version", "engine", "num_classes", "predictions"}
    assert len(body["predictions"]) == 1 and len(body["predictions"][0]) == min(5, body["num_classes"])
    assert set(body["predictions"][0][0]) == {"label", "probability"}


def test_json_bodies_and_the_custom_attributes_header(host):
    several = json.dumps({"images": [b64(images.png()), b64(images.variants()["jpeg-cmyk"])]})
    answer = invoke(host, several, "application/json", **{"X-Amzn-SageMaker-Custom-Attributes": "top_k=2"})
    assert answer.status_code == 200, answer.text
    assert [len(ranking) for ranking in answer.json()["predictions"]] == [2, 2]


def test_the_custom_attributes_header_asks_for_embedding_summaries(host):
    asked = invoke(host, images.png(), "image/png", **{"X-Amzn-SageMaker-Custom-Attributes": "top_k=2,embeddings=1"})
    assert asked.status_code == 200, asked.text
    body = asked.json()
    assert len(body["predictions"][0]) == 2 and [len(row) for row in body["embeddings"]] == [EMBEDDING_DIMS]
    assert "embeddings" not in invoke(host, images.png(), "image/png").json()


@pytest.mark.parametrize("body, content_type, status, message", [
    (b"", "image/jpeg", 400, "empty body"),
    (images.jpeg(96, 128)[:300], "image/jpeg", 400, "truncated or corrupt"),
    (images.corrupt_png_idat(), "image/png", 400, "corrupt"),
    (b"just some text", "application/x-image", 400, NOT_AN_IMAGE),
    (json.dumps({"image": "!!!"}), "application/json", 400, "not valid base64"),
    (images.png(), "text/plain", 415, "unsupported content type"),
    (images.png_bomb(), "image/png", 413, "too large"),
    (images.jpeg_bomb(), "image/jpeg", 413, "too large"),
    (b"\xff\xd8\xff" + bytes(7 * 1024 * 1024), "image/jpeg", 413, "larger than"),
])
def test_bad_requests_get_their_status_and_a_json_message(host, body, content_type, status, message):
    answer = invoke(host, body, content_type)
    assert answer.status_code == status
    assert answer.json()["status"] == status and message in answer.json()["error"]


def test_415_lists_the_accepted_types(host):
    error = invoke(host, images.png(), "image/tiff").json()["error"]
    assert all(accepted in error for accepted in ACCEPTED_TYPES)


def test_406_404_and_405(host):
    assert invoke(host, images.png(), "image/png", Accept="text/csv").status_code == 406
    assert requests.get(f"{host.url}/invocations", timeout=10).status_code == 405
    assert requests.post(f"{host.url}/ping", timeout=10).status_code == 405
    missing = requests.get(f"{host.url}/models", timeout=10)
    assert missing.status_code == 404 and "/invocations" in missing.json()["error"]


def test_the_host_survives_bad_input(host):
    for _ in range(3):
        invoke(host, images.corrupt_png_idat(), "image/png")
    assert invoke(host, images.png(), "image/png").status_code == 200


def test_concurrent_requests_through_dynamic_batching_get_their_own_answers(host, batching_host):
    """Every other request asks for the embedding summaries: merged or not, each answer has them as asked."""
    bodies = [images.encode(images.rgb_image(32 + 4 * i, 40 + 8 * i), "PNG") for i in range(12)]
    asks = [{"X-Amzn-SageMaker-Custom-Attributes": "embeddings=1"} if i % 2 else {} for i in range(12)]
    expected = [invoke(host, body, "image/png", **ask).json() for body, ask in zip(bodies, asks)]
    with ThreadPoolExecutor(max_workers=12) as pool:
        answers = list(pool.map(lambda pair: invoke(batching_host, pair[0], "image/png", **pair[1]), zip(bodies, asks)))
    for answer, alone, ask in zip(answers, expected, asks):
        assert answer.status_code == 200, answer.text
        ranking, alone_ranking = answer.json()["predictions"][0], alone["predictions"][0]
        assert [entry["label"] for entry in ranking] == [entry["label"] for entry in alone_ranking]
        assert [e["probability"] for e in ranking] == pytest.approx([e["probability"] for e in alone_ranking], abs=1e-5)
        assert ("embeddings" in answer.json()) == bool(ask) == ("embeddings" in alone)
        if ask:
            assert answer.json()["embeddings"][0] == pytest.approx(alone["embeddings"][0], rel=1e-3, abs=1e-3)
    assert invoke(batching_host, b"", "image/png").status_code == 400


def test_an_unsafe_artefact_never_starts(tmp_path):
    bad = tmp_path / "model.tar.gz"
    with tarfile.open(bad, "w:gz") as archive:
        info = tarfile.TarInfo("../escape.py")
        info.size = 1
        archive.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(HostStartError, match="path traversal"):
        with EndpointHost(bad):
            pass
    assert not (Path(tempfile.gettempdir()) / "escape.py").exists()  # the host unpacks under the temp dir


def test_a_model_that_cannot_load_fails_the_start_with_its_reason(model_dir, tmp_path):
    from training import artifact

    broken = tmp_path / "model"
    import shutil

    shutil.copytree(model_dir, broken)
    (broken / "classes.json").write_text(json.dumps(["only", "three", "classes"]))
    tarball = artifact.pack_model_dir(broken, tmp_path / "model.tar.gz")
    host = EndpointHost(tarball, torch_threads=1)
    with pytest.raises(HostStartError, match="names 3 classes"):
        with host:
            pass
    assert not host.ping(timeout=1)


def test_a_worker_that_dies_is_replaced_and_the_model_is_still_there(host):
    import time

    import psutil

    master = psutil.Process(host.pid)
    (worker,) = master.children()
    worker.kill()  # a crash, say the kernel's OOM killer
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        replacements = [child for child in master.children() if child.pid != worker.pid]
        if replacements and host.ping(timeout=2):
            break
        time.sleep(0.5)
    answer = invoke(host, images.png(), "image/png")
    assert answer.status_code == 200, answer.text
