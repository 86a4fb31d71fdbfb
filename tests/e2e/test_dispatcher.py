"""The dispatcher against moto in server mode, with a small Chalice app of its own: Lambda's
batching, partial batch failures, dead-letter queue, EventBridge rules from the app's
pattern, and schedules."""

from __future__ import annotations

import json
import threading
import time

import boto3
import pytest
from chalice import Chalice, Rate

from local_aws.dispatcher import Dispatcher, wiring_from_app
from local_aws.dispatcher.queues import ensure_queue, queue_arn
from local_aws.dispatcher.stage import Stage

from .conftest import wait_until

REGION = "us-east-1"


def make_app(seen: dict[str, list]) -> Chalice:
    app = Chalice(app_name="probe")

    @app.on_sqs_message(queue="probe-work", batch_size=5, maximum_batching_window_in_seconds=1)
    def work(event):
        records = event.to_dict()["Records"]
        seen["batches"].append([r["body"] for r in records])
        return {"batchItemFailures": [{"itemIdentifier": r["messageId"]} for r in records if r["body"] == "bad"]}

    @app.on_cw_event({"source": ["probe.source"], "detail": {"state": ["DONE"]}})
    def done(event):
        seen["events"].append(event.to_dict())

    @app.schedule(Rate(1, unit=Rate.MINUTES))
    def tick(event):
        seen["ticks"].append(event.to_dict())

    return app


@pytest.fixture
def running(moto_url):
    seen: dict[str, list] = {"batches": [], "events": [], "ticks": []}
    session = boto3.session.Session(region_name=REGION)
    sqs = session.client("sqs")
    ensure_queue(sqs, "probe-work-dlq", {})
    ensure_queue(sqs, "probe-work", {"VisibilityTimeout": "2", "RedrivePolicy": json.dumps(
        {"deadLetterTargetArn": queue_arn(REGION, "probe-work-dlq"), "maxReceiveCount": "2"})})
    app = make_app(seen)
    stage = Stage(name="local", app_name="probe", environment={}, lambda_timeout=30, lambda_memory_size=128)
    dispatcher = Dispatcher(app, stage, session, wiring_from_app(app, stage, default_concurrency=1,
                                                                 schedule_seconds=0.3))
    dispatcher.wire()
    dispatcher.start()
    yield seen, session, dispatcher
    dispatcher.stop()


def test_wiring_is_read_from_the_app():
    app = make_app({"batches": [], "events": [], "ticks": []})
    stage = Stage(name="local", app_name="probe", environment={}, lambda_timeout=30, lambda_memory_size=128)
    wiring = wiring_from_app(app, stage)
    assert [(s.queue, s.batch_size, s.batching_window) for s in wiring.sqs] == [("probe-work", 5, 1.0)]
    assert wiring.events[0].pattern == {"source": ["probe.source"], "detail": {"state": ["DONE"]}}
    assert wiring.schedules[0].seconds == 60 and wiring.schedules[0].expression == "rate(1 minute)"


def test_batches_partial_failures_and_dead_letters(running):
    seen, session, _ = running
    sqs = session.client("sqs")
    url = sqs.get_queue_url(QueueName="probe-work")["QueueUrl"]
    sqs.send_message_batch(QueueUrl=url, Entries=[{"Id": str(i), "MessageBody": body}
                                                  for i, body in enumerate(["a", "bad", "b"])])
    dlq = sqs.get_queue_url(QueueName="probe-work-dlq")["QueueUrl"]

    def dead_lettered():
        return sqs.receive_message(QueueUrl=dlq, WaitTimeSeconds=1).get("Messages")

    messages = wait_until(dead_lettered, 30, "the failing message in the DLQ", every=0.5)
    assert [m["Body"] for m in messages] == ["bad"]
    delivered = [body for batch in seen["batches"] for body in batch]
    assert sorted(delivered) == ["a", "b", "bad", "bad"]  # successes once; the failure until maxReceiveCount
    assert sorted(seen["batches"][0]) == ["a", "b", "bad"]  # one batch within the window


def test_eventbridge_rule_with_the_apps_pattern(running):
    seen, session, _ = running
    events = session.client("events")
    entries = [{"Source": "probe.source", "DetailType": "Probe", "Detail": json.dumps({"state": state})}
               for state in ("RUNNING", "DONE")]
    events.put_events(Entries=entries)
    wait_until(lambda: seen["events"], 20, "the matching event delivered", every=0.3)
    time.sleep(1.5)
    assert [e["detail"] for e in seen["events"]] == [{"state": "DONE"}]
    event = seen["events"][0]
    assert event["source"] == "probe.source" and event["detail-type"] == "Probe"
    assert event["account"] == "123456789012" and event["region"] == REGION


def test_schedule_runs_at_its_rate_and_stop_ends_every_thread(running):
    seen, _, dispatcher = running
    wait_until(lambda: len(seen["ticks"]) >= 2, 10, "two ticks", every=0.2)
    assert seen["ticks"][0]["detail-type"] == "Scheduled Event"
    dispatcher.stop()
    assert not [t for t in threading.enumerate() if t.name.startswith("dispatcher-") and t.is_alive()]
