"""Prediction scenarios: incoming/ → SQS → Lambda → endpoint → predictions table."""

from __future__ import annotations

import json

from .conftest import ENV, png_bytes
from .test_retraining import deploy_model

FN, QUEUE = "on_incoming_image", ENV["INCOMING_QUEUE"]


def answer(version: str = "m1", labels=(("3", 0.7), ("8", 0.2), ("5", 0.06), ("1", 0.04))) -> dict:
    """The endpoint's output contract for one image."""
    return {"model_version": version, "num_classes": 10,
            "predictions": [[{"label": label, "probability": p} for label, p in reversed(labels)]]}


def prediction(world, name: str) -> dict:
    return world.client.http.get(f"/predictions/{name}").json_body


def test_predictions_before_any_endpoint_are_pending_then_ok_after_in_service(world):
    for index in range(3):
        world.upload(f"incoming/early-{index}.png", png_bytes(index))
    world.drain(FN, QUEUE)
    assert [prediction(world, f"early-{i}.png")["status"] for i in range(3)] == ["PENDING"] * 3
    run = deploy_model(world)  # InService re-drives the pending images onto the queue
    assert run["status"] == "DEPLOYED"
    with world.endpoint(*[answer("v-live")] * 3):
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
    assert "not a JPEG, PNG" in prediction(world, "notes.png")["error"]
    assert prediction(world, "empty.jpg")["error"] == "the object is empty"
    assert "over the 50000-byte limit" in prediction(world, "huge.png")["error"]
    assert prediction(world, "fine.png")["status"] == "PENDING"
    statuses = [item["status"] for item in world.client.http.get("/predictions").json_body["items"]]
    assert sorted(statuses) == ["FAILED", "FAILED", "FAILED", "PENDING"]


def test_every_event_delivered_twice_makes_one_prediction(world):
    deploy_model(world)
    world.upload("incoming/a.png", png_bytes(5))
    world.upload("incoming/b.png", png_bytes(6))
    with world.endpoint(answer("v1"), answer("v1")):  # two answers: a third call would fail the stub
        world.drain(FN, QUEUE, duplicate=True)
    items = world.client.http.get("/predictions").json_body["items"]
    assert sorted(item["image_key"] for item in items) == ["incoming/a.png", "incoming/b.png"]
    assert {item["status"] for item in items} == {"OK"}


def deliver_once(world, *answers) -> dict:
    """One Lambda invocation for what is queued; returns its response and the messages."""
    messages = world.receive(QUEUE)
    with world.endpoint(*answers):
        payload = world.client.lambda_.invoke(FN, world.lambda_event(QUEUE, messages)).payload
    failed = {item["itemIdentifier"] for item in payload["batchItemFailures"]}
    for message in messages:  # as Lambda does: delete what succeeded, leave the failures to SQS
        if message["MessageId"] not in failed:
            world.sqs.delete_message(QueueUrl=world.queue_url(QUEUE), ReceiptHandle=message["ReceiptHandle"])
    return {"payload": payload, "messages": messages}


def test_the_endpoint_rejecting_an_image_fails_it_and_a_transient_error_retries_only_that_record(world):
    deploy_model(world)
    world.upload("incoming/odd.png", png_bytes(7))
    result = deliver_once(world, ("ModelError", "cannot identify image file", 400))
    assert result["payload"] == {"batchItemFailures": []}
    item = prediction(world, "odd.png")
    assert item["status"] == "FAILED" and "cannot identify image file" in item["error"]

    world.upload("incoming/later.png", png_bytes(8))
    result = deliver_once(world, ("ThrottlingException", "slow down", 400))
    [failure] = result["payload"]["batchItemFailures"]
    assert failure["itemIdentifier"] == result["messages"][0]["MessageId"]
    assert world.client.http.get("/predictions/later.png").status_code == 404, "not stored: SQS delivers it again"


def test_an_endpoint_that_is_gone_leaves_the_image_pending(world):
    deploy_model(world)
    world.upload("incoming/x.png", png_bytes(9))
    deliver_once(world, ("ValidationError", f"Endpoint {ENV['ENDPOINT_NAME']} of account 1 not found.", 400))
    assert prediction(world, "x.png")["status"] == "PENDING"


def test_redriven_messages_look_like_s3_notifications(world):
    from chalice_app.events import s3_records
    from chalice_app.predictions import redrive_message

    [record] = s3_records(redrive_message("b", "incoming/a b+c.png", "abc"))
    assert (record.bucket, record.key, record.etag) == ("b", "incoming/a b+c.png", "abc")
    assert json.loads(redrive_message("b", "k", "e"))["Records"][0]["eventName"].startswith("ObjectCreated")
