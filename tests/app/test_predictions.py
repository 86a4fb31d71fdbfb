"""Prediction scenarios: incoming/ → SQS → Lambda → endpoint → predictions table.

A batch of SQS messages is classified together (one InvokeEndpoint for several images);
each record still succeeds or fails on its own. moto's runtime cannot take an image
body, so the endpoint is played by botocore's Stubber, which checks every request.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

import botocore.session
import pytest

from chalice_app import invocations

from .conftest import BUCKET, ENV, png_bytes
from .incoming import FN, QUEUE, Images, answer, deliver_once, endpoint, prediction
from .scenario import deploy_model


def test_predictions_before_any_endpoint_are_pending_then_ok_after_in_service(world):
    pictures = [png_bytes(index) for index in range(3)]
    for index, picture in enumerate(pictures):
        world.upload(f"incoming/early-{index}.png", picture)
    world.drain(FN, QUEUE)
    assert [prediction(world, f"early-{i}.png")["status"] for i in range(3)] == ["PENDING"] * 3
    run = deploy_model(world)  # InService re-drives the pending images onto the queue
    assert run["status"] == "DEPLOYED"
    with endpoint((Images(*pictures), answer("v-live", images=3))):  # one request for the batch
        world.drain(FN, QUEUE)
    for index in range(3):
        item = prediction(world, f"early-{index}.png")
        assert item["status"] == "OK" and item["model_version"] == "v-live" and item["latency_ms"] >= 0
        assert [entry["label"] for entry in item["labels"]] == ["3", "8", "5"]  # top 3, most probable first
        assert item["labels"][0]["probability"] == 0.7 and "error" not in item


def test_bad_images_fail_with_a_reason_and_nothing_is_dropped(world):
    world.upload("incoming/notes.png", b"these are not pixels")
    world.upload("incoming/empty.jpg", b"")
    world.upload("incoming/huge.png", png_bytes(1)[:16] + b"\0" * 60_000)
    world.upload("incoming/fine.png", png_bytes(2))
    world.drain(FN, QUEUE)
    assert prediction(world, "notes.png")["error"] == "not an image: expected one of JPEG, PNG, GIF, BMP, WebP"
    assert prediction(world, "empty.jpg")["error"] == "empty image: no bytes"
    assert prediction(world, "huge.png")["error"] == "image too large: 60016 bytes, the limit is 50000 bytes"
    assert prediction(world, "fine.png")["status"] == "PENDING"
    statuses = [item["status"] for item in world.client.http.get("/predictions").json_body["items"]]
    assert sorted(statuses) == ["FAILED", "FAILED", "FAILED", "PENDING"]


def test_an_image_deleted_before_its_turn_is_failed_not_dead_lettered(world):
    """S3 answers NoSuchKey only to a caller that may list incoming/ (else 403, retried until the DLQ)."""
    world.upload("incoming/gone.png", png_bytes(1))
    world.s3.delete_object(Bucket=BUCKET, Key="incoming/gone.png")
    world.drain(FN, QUEUE)  # fails the test on any record reported failed
    item = prediction(world, "gone.png")
    assert item["status"] == "FAILED" and item["error"] == "the object no longer exists"


def test_every_event_delivered_twice_makes_one_prediction(world):
    deploy_model(world)
    a, b = png_bytes(5), png_bytes(6)
    world.upload("incoming/a.png", a)
    world.upload("incoming/b.png", b)
    with endpoint((Images(a, b), answer("v1", images=2))):  # the second delivery calls nothing
        world.drain(FN, QUEUE, duplicate=True)
    items = world.client.http.get("/predictions").json_body["items"]
    assert sorted(item["image_key"] for item in items) == ["incoming/a.png", "incoming/b.png"]
    assert {item["status"] for item in items} == {"OK"}


def test_a_notification_delivered_twice_in_one_batch_is_classified_once(world):
    deploy_model(world)
    picture = png_bytes(4)
    world.upload("incoming/twice.png", picture)
    [message] = world.peek(QUEUE)
    world.sqs.send_message(QueueUrl=world.queue_url(QUEUE), MessageBody=message["Body"])  # SQS's at-least-once
    result = deliver_once(world, (Images(picture), answer("v1")))
    assert len(result.messages) == 2 and result.failed == set()
    assert prediction(world, "twice.png")["status"] == "OK"


def test_one_bad_image_in_a_batch_fails_alone_and_the_others_are_classified(world):
    deploy_model(world)
    good, bad, other = png_bytes(1), png_bytes(2)[:40], png_bytes(3)  # a truncated PNG passes the magic bytes
    for name, picture in (("good", good), ("bad", bad), ("other", other)):
        world.upload(f"incoming/{name}.png", picture)
    result = deliver_once(
        world,
        (Images(good, bad, other), ("ModelError", "images[1]: image file is truncated", 400)),
        (Images(good), answer("v1")),  # then each image alone
        (Images(bad), ("ModelError", "body: image file is truncated", 400)),
        (Images(other), answer("v1")))
    assert result.payload == {"batchItemFailures": []}
    assert prediction(world, "good.png")["status"] == prediction(world, "other.png")["status"] == "OK"
    failed = prediction(world, "bad.png")
    assert failed["status"] == "FAILED" and "image file is truncated" in failed["error"]


def test_a_5xx_for_the_batch_retries_every_record_and_the_redelivery_stores_them(world):
    deploy_model(world)
    pictures = [png_bytes(index) for index in range(3)]
    for index, picture in enumerate(pictures):
        world.upload(f"incoming/later-{index}.png", picture)
    result = deliver_once(world, (Images(*pictures), ("InternalFailure", "the model server is restarting", 500)))
    assert result.failed == {m["MessageId"] for m in result.messages} and len(result.failed) == 3
    assert all(world.client.http.get(f"/predictions/later-{i}.png").status_code == 404 for i in range(3))
    result = deliver_once(world, (Images(*pictures), answer("v1", images=3)))  # SQS delivers them again
    assert result.failed == set()
    assert [prediction(world, f"later-{i}.png")["status"] for i in range(3)] == ["OK"] * 3


def test_a_transient_error_for_one_image_retries_only_its_record(world):
    deploy_model(world)
    odd, later = png_bytes(7), png_bytes(8)
    world.upload("incoming/odd.png", odd)
    world.upload("incoming/later.png", later)
    result = deliver_once(
        world,
        (Images(odd, later), ("ModelError", "images[0]: cannot identify image file", 400)),
        (Images(odd), ("ModelError", "body: cannot identify image file", 400)),
        (Images(later), ("ThrottlingException", "slow down", 400)))
    [retried] = [m for m in result.messages if m["MessageId"] in result.failed]
    assert "later.png" in retried["Body"] and len(result.failed) == 1
    item = prediction(world, "odd.png")
    assert item["status"] == "FAILED" and "cannot identify image file" in item["error"]
    assert world.client.http.get("/predictions/later.png").status_code == 404, "not stored: SQS delivers it again"


def test_a_message_that_is_not_an_s3_notification_fails_alone(world):
    deploy_model(world)
    picture = png_bytes(9)
    world.upload("incoming/fine.png", picture)
    world.sqs.send_message(QueueUrl=world.queue_url(QUEUE), MessageBody="not json")
    result = deliver_once(world, (Images(picture), answer("v1")))
    [garbage] = [m for m in result.messages if m["Body"] == "not json"]
    assert result.failed == {garbage["MessageId"]}
    assert prediction(world, "fine.png")["status"] == "OK"


def test_an_endpoint_that_is_gone_leaves_the_image_pending(world):
    deploy_model(world)
    picture = png_bytes(9)
    world.upload("incoming/x.png", picture)
    deliver_once(world, (Images(picture), ("ValidationError", f"Endpoint {ENV['ENDPOINT_NAME']} of account 1 not found.",
                                           400)))
    assert prediction(world, "x.png")["status"] == "PENDING"


def test_redriven_messages_look_like_s3_notifications(world):
    from chalice_app.events import s3_records
    from chalice_app.predictions import redrive_message

    [record] = s3_records(redrive_message("b", "incoming/a b+c.png", "abc", 1234))
    assert (record.bucket, record.key, record.etag, record.size) == ("b", "incoming/a b+c.png", "abc", 1234)
    assert json.loads(redrive_message("b", "k", "e"))["Records"][0]["eventName"].startswith("ObjectCreated")


def big_image(seed: int, size: int) -> bytes:
    """An object the Lambda takes for a PNG (it reads the signature, never the pixels), `size` bytes."""
    return png_bytes(seed)[:16] + bytes([seed]) * (size - 16)


@contextmanager
def held_bytes(world, sizes: dict[str, int]):
    """The bytes of incoming images the handler holds, over its calls: an object's bytes are held from
    its GetObject until its item is stored. Yields the list of (call, held) as they happened."""
    from chalice_app import aws

    trace: list[tuple[str, int]] = []
    held = [0]

    def on(event: str, change: Callable[[dict], int]) -> Callable[..., None]:
        def record(params: dict, **_: Any) -> None:
            held[0] += change(params)
            trace.append((event, held[0]))
        return record

    table = ENV["PREDICTIONS_TABLE"]
    hooks = [(aws.client("s3"), "before-parameter-build.s3.GetObject", on("read", lambda p: sizes.get(p["Key"], 0))),
             (aws.table(table).meta.client, "before-parameter-build.dynamodb.PutItem",
              on("store", lambda p: -sizes.get(p["Item"]["image_key"], 0) if p["TableName"] == table else 0))]
    for client, event, hook in hooks:
        client.meta.events.register(event, hook)
    try:
        yield trace
    finally:
        for client, event, hook in hooks:
            client.meta.events.unregister(event, hook)


def test_a_batch_over_one_request_s_bytes_is_read_invoked_and_stored_one_group_at_a_time(world, monkeypatch):
    from chalice_app import config

    deploy_model(world)
    monkeypatch.setenv("MAX_IMAGE_BYTES", str(3 * 2**20))
    config.settings.cache_clear()
    # 1.5 MB each: three fit one request's 6 MiB of base64 JSON, a fourth would not.
    pictures = [big_image(seed, 1_500_000) for seed in range(6)]
    sizes = {}
    for seed, picture in enumerate(pictures):
        world.upload(f"incoming/big-{seed}.png", picture)
        sizes[f"incoming/big-{seed}.png"] = len(picture)
    with held_bytes(world, sizes) as trace:
        result = deliver_once(world, (Images(*pictures[:3]), answer("v1", images=3)),
                              (Images(*pictures[3:]), answer("v1", images=3)))

    assert not result.failed and len(result.messages) == 6
    assert [prediction(world, f"big-{seed}.png")["status"] for seed in range(6)] == ["OK"] * 6
    # Read, invoke, store, release: one group's bytes at most, never the batch's 9 MB.
    assert [event for event, _ in trace] == ["read"] * 3 + ["store"] * 3 + ["read"] * 3 + ["store"] * 3
    assert max(held for _, held in trace) == 3 * 1_500_000 and trace[-1][1] == 0


def test_an_object_grown_since_its_notification_waits_for_a_later_group(world, monkeypatch):
    from chalice_app import config

    deploy_model(world)
    monkeypatch.setenv("MAX_IMAGE_BYTES", str(3 * 2**20))
    config.settings.cache_clear()
    a, b, small, grown = (big_image(1, 1_500_000), big_image(2, 1_500_000), big_image(3, 100),
                          big_image(4, 2_000_000))
    world.upload("incoming/a.png", a)
    world.upload("incoming/b.png", b)
    world.upload("incoming/c.png", small)
    world.upload("incoming/c.png", grown)  # replaced: the first notification announces 100 bytes
    sizes = {"incoming/a.png": len(a), "incoming/b.png": len(b), "incoming/c.png": len(grown)}
    with held_bytes(world, sizes) as trace:
        # Planned: a, b and the small c together; read, c no longer fits beside a and b.
        result = deliver_once(world, (Images(a, b), answer("v1", images=2)),
                              (Images(grown, grown), answer("v1", images=2)))

    assert not result.failed
    assert prediction(world, "c.png")["status"] == "OK" and prediction(world, "c.png")["etag"] == world.s3.head_object(
        Bucket=BUCKET, Key="incoming/c.png")["ETag"].strip('"')
    # c's first GetObject read no body (it was put back for the next group), and a and b went first.
    assert [event for event, _ in trace] == ["read"] * 3 + ["store"] * 2 + ["read"] * 2 + ["store"] * 2


# --- the requests, as pure functions ------------------------------------------------------


def test_groups_keep_order_and_both_limits():
    assert invocations.groups([10] * 5, max_images=2) == [[0, 1], [2, 3], [4]]
    # 3 bytes of image take 4 of base64 plus quotes and a comma: two fit in 13 + 16 bytes, three do not.
    assert invocations.groups([3, 3, 3], max_bytes=len('{"images": []}') + 16) == [[0, 1], [2]]
    assert invocations.groups([100, 6 * 1024 * 1024, 100]) == [[0], [1], [2]]  # too large to share a body
    assert invocations.groups([]) == []


def aws_runtime_model():
    return botocore.session.get_session().get_service_model("sagemaker-runtime")


def test_requests_carry_one_image_raw_and_several_as_json():
    one = invocations.invoke_request("ep", [b"\x89PNG1"])
    # Every request asks for the images' embedding summaries (the drift statistics'), a header the
    # runtime forwards verbatim to the model: at most 1024 ASCII characters.
    assert one == {"EndpointName": "ep", "ContentType": "application/x-image", "Accept": "application/json",
                   "Body": b"\x89PNG1", "CustomAttributes": "embeddings=1"}
    shape = aws_runtime_model().operation_model("InvokeEndpoint").input_shape.members["CustomAttributes"]
    assert shape.serialization["name"] == "X-Amzn-SageMaker-Custom-Attributes"
    assert len(one["CustomAttributes"]) <= shape.metadata["max"] and one["CustomAttributes"].isascii()
    several = invocations.invoke_request("ep", [b"\x89PNG1", b"\xff\xd8\xff2"])
    assert several["ContentType"] == "application/json"
    assert [base64.b64decode(t) for t in json.loads(several["Body"])["images"]] == [b"\x89PNG1", b"\xff\xd8\xff2"]


def test_an_answer_with_a_row_per_image_or_an_error():
    read = invocations.read_answer(json.dumps(answer("v2", images=2)).encode(), 2, k=2)
    assert read.model_version == "v2"
    assert read.labels == [[{"label": "3", "probability": 0.7}, {"label": "8", "probability": 0.2}]] * 2
    assert read.embeddings == [None, None]  # no drift data: the images are classified all the same
    with pytest.raises(ValueError, match="1 predictions for 2 images"):
        invocations.read_answer(json.dumps(answer()).encode(), 2, k=2)


def test_an_answers_embeddings_are_kept_per_image_and_a_malformed_one_is_dropped():
    good, short, text = [0.5] * 8, [0.5] * 7, ["x"] * 8
    body = {**answer("v2", images=4), "embeddings": [good, short, text, [float("nan")] * 8]}
    assert invocations.read_answer(json.dumps(body).encode(), 4, k=1).embeddings == [good, None, None, None]
    # An embeddings list that is not one row per image says nothing about any of them.
    body = {**answer("v2", images=2), "embeddings": [good]}
    assert invocations.read_answer(json.dumps(body).encode(), 2, k=1).embeddings == [None, None]
