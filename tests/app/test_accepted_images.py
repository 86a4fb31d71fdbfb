"""One definition of an accepted image (training/image_contract.py) on the Lambda side: the upload
API, the manifest, the incoming check, and the reason a person reads on a FAILED image."""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image

from chalice_app import invocations, manifest
from training import image_contract

from .conftest import png_bytes
from .incoming import FN, QUEUE, Images, answer, deliver_once, endpoint, prediction
from .scenario import deploy_model

WRAPPER = ('Received client error ({status}) from primary with message "{body}". See '
           '"https://us-east-1.console.aws.amazon.com/cloudwatch/home" in account 123456789012 for more information.')
LOG_STREAM = "arn:aws:logs:us-east-1:123456789012:log-group:/aws/sagemaker/Endpoints/ep"


def encoded(fmt: str, seed: int = 0) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), color=(seed * 37 % 256, 200, 30)).save(buffer, format=fmt)
    return buffer.getvalue()


def upload_url(world, **body) -> object:
    return world.client.http.post("/uploads", headers={"Content-Type": "application/json"}, body=json.dumps(body))


def test_the_upload_api_takes_every_accepted_format_and_names_them_when_it_refuses(world):
    for name in ("cat.gif", "cat.BMP", "cat.webp", "cat.jpeg"):
        incoming = upload_url(world, target="incoming", filename=name)
        training = upload_url(world, target="training", label="tabby", filename=name)
        assert incoming.status_code == training.status_code == 200, name
        assert incoming.json_body["key"].endswith(name[name.rfind("."):].lower())
    refused = upload_url(world, target="incoming", filename="scan.tiff")
    assert refused.status_code == 400
    assert refused.json_body["Message"].endswith("filename must end with one of .jpg, .jpeg, .png, .gif, .bmp, .webp")


def test_the_manifest_lists_every_accepted_format_and_skips_what_training_refuses():
    prefix = "training-data/"
    accepted = [(f"{prefix}cat/1{suffix}", '"e"', 100) for suffix in image_contract.SUFFIXES]
    refused = [(f"{prefix}cat/scan.tiff", '"e"', 100),
               (f"{prefix}cat/huge.png", '"e"', image_contract.MAX_IMAGE_BYTES + 1)]
    assert [entry.key for entry in manifest.build(accepted + refused, prefix)] == sorted(key for key, _, _ in accepted)


def test_incoming_gif_and_bmp_are_sent_to_the_endpoint_and_classified(world):
    deploy_model(world)
    gif, bmp = encoded("GIF", 1), encoded("BMP", 2)
    world.upload("incoming/a.gif", gif)
    world.upload("incoming/b.bmp", bmp)
    with endpoint((Images(gif, bmp), answer("v1", images=2))):
        world.drain(FN, QUEUE)
    assert prediction(world, "a.gif")["status"] == prediction(world, "b.bmp")["status"] == "OK"


def test_what_is_not_an_image_fails_with_the_contracts_message_before_any_invocation(world):
    deploy_model(world)
    world.upload("incoming/report.gif", b"%PDF-1.7 a document named like an image")
    world.drain(FN, QUEUE)  # no endpoint is stubbed: an invocation would fail the test
    item = prediction(world, "report.gif")
    assert item["status"] == "FAILED" and item["error"] == image_contract.NOT_AN_IMAGE


TRACEBACK = 'Traceback (most recent call last):\n  File "transformer.py", line 140, in transform\nRequestError: ...\n'


@pytest.mark.parametrize("status, body, reason", [
    # the local endpoint host
    (400, json.dumps({"status": 400, "error": "truncated or corrupt BMP header: bad BMP"}),
     "truncated or corrupt BMP header: bad BMP"),
    # SageMaker's inference toolkit in the real container: the message, then the traceback
    (413, f"image too large: 100000x100000 pixels, the limit is 50000000 pixels\n{TRACEBACK}",
     "image too large: 100000x100000 pixels, the limit is 50000000 pixels"),
    # TorchServe's own error answers
    (400, json.dumps({"code": 400, "type": "InvalidRequest", "message": "truncated or corrupt GIF image"}),
     "truncated or corrupt GIF image"),
], ids=["local-endpoint-host", "inference-toolkit", "torchserve"])
def test_a_failed_image_reads_the_endpoints_own_message_not_the_sdks_wrapper(world, status, body, reason):
    deploy_model(world)
    bad = b"BM" + bytes(40)  # an image by its first bytes; the endpoint finds it is not one
    world.upload("incoming/bad.bmp", bad)
    refusal = ("ModelError", WRAPPER.format(status=status, body=body), 424,
               {"OriginalStatusCode": status, "OriginalMessage": body, "LogStreamArn": LOG_STREAM})
    result = deliver_once(world, (Images(bad), refusal))
    assert result.failed == set()
    item = prediction(world, "bad.bmp")
    assert item["status"] == "FAILED" and item["error"] == reason


def test_the_endpoints_message_is_read_from_every_body_shape():
    assert invocations.endpoint_message(json.dumps({"status": 400, "error": "images[1]: empty image"})) == \
        "images[1]: empty image"
    assert invocations.endpoint_message(f"{image_contract.NOT_AN_IMAGE}\n{TRACEBACK}") == image_contract.NOT_AN_IMAGE
    assert invocations.endpoint_message(json.dumps({"code": 503, "message": "No worker is available"})) == \
        "No worker is available"
    assert invocations.endpoint_message('{"unexpected": 1}') == '{"unexpected": 1}'  # said as it came
    assert invocations.endpoint_message("plain words") == "plain words"


def test_the_lambda_sends_no_more_images_per_request_than_the_endpoint_takes():
    limit = image_contract.MAX_IMAGES_PER_REQUEST
    assert [len(group) for group in invocations.groups([10] * (limit + 1))] == [limit, 1]
    assert png_bytes(1)[:8] == b"\x89PNG\r\n\x1a\n" and image_contract.refusal(png_bytes(1)) is None
