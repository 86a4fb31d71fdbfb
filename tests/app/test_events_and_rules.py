"""Typed events, the EventBridge patterns (matched by moto's real pattern engine), and the pure decisions."""

from __future__ import annotations

import json

import boto3
import pytest
from moto import mock_aws

from chalice_app import gate, manifest
from chalice_app.events import (ENDPOINT_PATTERN, TRAINING_PATTERN, TUNING_PATTERN, TrainingJobStateChange,
                                s3_records)

from .conftest import png_bytes


def sagemaker_event(detail_type: str, detail: dict) -> dict:
    return {"version": "0", "id": "e1", "detail-type": detail_type, "source": "aws.sagemaker",
            "account": "123456789012", "time": "2027-01-15T08:00:00Z", "region": "us-east-1", "resources": [],
            "detail": detail}


TRAINING_FINAL = sagemaker_event("SageMaker Training Job State Change", {
    "TrainingJobName": "ip-dev-r1-final", "TrainingJobStatus": "Completed", "SecondaryStatus": "Completed",
    "HyperParameters": {"lr": "0.1"}, "Tags": {"pipeline-role": "final", "pipeline-run": "r1"}})
TRAINING_TRIAL = sagemaker_event("SageMaker Training Job State Change", {
    "TrainingJobName": "ip-dev-r1-001-abc", "TrainingJobStatus": "Completed", "Tags": {}})
TRAINING_RUNNING = sagemaker_event("SageMaker Training Job State Change", {
    "TrainingJobName": "ip-dev-r1-final", "TrainingJobStatus": "InProgress", "Tags": {"pipeline-role": "final"}})
TUNING_DONE = sagemaker_event("SageMaker HyperParameter Tuning Job State Change", {
    "HyperParameterTuningJobName": "ip-dev-r1", "HyperParameterTuningJobStatus": "Completed", "Tags": {}})
ENDPOINT_LIVE = sagemaker_event("SageMaker Endpoint State Change", {
    "EndpointName": "e", "EndpointStatus": "InService", "EndpointConfigName": "c", "Tags": {}})


def matched(pattern: dict, events: list[dict]) -> list[str]:
    """Which events an EventBridge rule with `pattern` delivers to its SQS target (moto matches for real)."""
    with mock_aws():
        sqs, bridge = boto3.client("sqs", region_name="us-east-1"), boto3.client("events", region_name="us-east-1")
        url = sqs.create_queue(QueueName="target")["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        bridge.put_rule(Name="rule", EventPattern=json.dumps(pattern))
        bridge.put_targets(Rule="rule", Targets=[{"Id": "q", "Arn": arn}])
        bridge.put_events(Entries=[{"Source": e["source"], "DetailType": e["detail-type"],
                                    "Detail": json.dumps(e["detail"])} for e in events])
        messages = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", [])
        return [json.loads(m["Body"])["detail"].get("TrainingJobName") or json.loads(m["Body"])["detail-type"]
                for m in messages]


def test_the_training_rule_matches_only_final_jobs_that_ended():
    assert matched(TRAINING_PATTERN, [TRAINING_FINAL, TRAINING_TRIAL, TRAINING_RUNNING, TUNING_DONE]) == [
        "ip-dev-r1-final"]


def test_the_tuning_and_endpoint_rules_match_their_events():
    assert matched(TUNING_PATTERN, [TUNING_DONE, TRAINING_FINAL]) == [TUNING_DONE["detail-type"]]
    assert matched(ENDPOINT_PATTERN, [ENDPOINT_LIVE, TUNING_DONE]) == [ENDPOINT_LIVE["detail-type"]]


def test_eventbridge_events_parse_into_typed_details():
    event = TrainingJobStateChange.model_validate(TRAINING_FINAL)
    assert (event.detail.name, event.detail.status, event.detail.tags["pipeline-run"]) == (
        "ip-dev-r1-final", "Completed", "r1")
    assert event.detail_type == "SageMaker Training Job State Change"


def test_s3_notifications_decode_keys_and_skip_test_events():
    body = json.dumps({"Records": [
        {"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": "b"},
                                                 "object": {"key": "training-data/big+cat/a%2Bb.png", "eTag": "x",
                                                            "size": 3}}},
        {"eventName": "ObjectRemoved:Delete", "s3": {"bucket": {"name": "b"}, "object": {"key": "k"}}}]})
    [record] = s3_records(body)
    assert record.key == "training-data/big cat/a+b.png" and record.etag == "x" and record.size == 3
    assert s3_records(json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent"})) == []


def test_manifest_entries_for_both_layouts():
    prefix = "training-data/"
    objects = [("training-data/cat/1.png", '"e1"', 1), ("training-data/test/dog/2.jpg", '"e2"', 2),
               ("training-data/_COMMIT", '"e3"', 0), ("training-data/notes.txt", '"e4"', 4),
               ("training-data/a/b/c/d.png", "", 5)]
    entries = manifest.build(objects, prefix)
    assert [(e.key, e.label, e.etag) for e in entries] == [("training-data/cat/1.png", "cat", "e1"),
                                                           ("training-data/test/dog/2.jpg", "dog", "e2")]
    assert entries[1].split == "test" and entries[0].split in {"train", "valid", "test"}
    line = json.loads(manifest.to_jsonl(entries).splitlines()[0])
    assert set(line) == {"key", "label", "split", "etag", "size"} and line["size"] == 1
    assert manifest.is_commit_marker("training-data/_COMMIT", prefix)


def test_manifest_refusals_name_the_problem():
    def entries(labels: list[str], split: str | None = None) -> list[manifest.Entry]:
        return [manifest.Entry(f"k{i}", label, split or ("train", "valid", "test")[i % 3], "e")
                for i, label in enumerate(labels)]

    assert "too few images: 3" in manifest.refusal(entries(["a", "b", "a"]), 10)
    assert "one class only ('a')" in manifest.refusal(entries(["a"] * 12), 10)
    assert "no images in the valid split" in manifest.refusal(entries(["a", "b"] * 6, split="train"), 10)
    assert manifest.refusal(entries(["a", "b"] * 6), 10) is None


@pytest.mark.parametrize("accuracy, live, rules, passed", [
    (0.9, None, {}, True), (0.9, 0.85, {}, True), (0.9, 0.895, {}, False), (0.9, 0.95, {}, False),
    (0.99, 0.5, {"Overtraining": "IssuesFound"}, False), (0.99, 0.5, {"Overfit": "Error"}, True),
])
def test_the_gate(accuracy, live, rules, passed):
    description = {"FinalMetricDataList": [{"MetricName": "test:accuracy", "Value": accuracy}],
                   "DebugRuleEvaluationStatuses": [{"RuleConfigurationName": r, "RuleEvaluationStatus": s}
                                                   for r, s in rules.items()]}
    assert gate.judge(description, live, margin=0.01).passed is passed


@pytest.mark.parametrize("same_split, stored, passed", [(0.85, 0.95, True), (0.95, 0.85, False)])
def test_the_gate_prefers_the_live_model_scored_on_the_same_test_split(same_split, stored, passed):
    description = {"FinalMetricDataList": [{"MetricName": "test:accuracy", "Value": 0.9},
                                           {"MetricName": "live:test_accuracy", "Value": same_split}]}
    verdict = gate.judge(description, stored, margin=0.01)
    assert verdict.passed is passed and "on the same test split" in verdict.reason
    fallback = gate.judge({"FinalMetricDataList": description["FinalMetricDataList"][:1]}, stored, margin=0.01)
    assert fallback.passed is not passed and "as stored from its own run" in fallback.reason


def test_images_are_recognised_by_their_bytes():
    from training import image_contract

    assert image_contract.refusal(png_bytes(1), 10_000) is None
    assert image_contract.sniff(b"\xff\xd8\xff\xe0rest").name == "JPEG"
    assert image_contract.sniff(b"RIFF\0\0\0\0WEBPVP8 ").name == "WebP"
    assert image_contract.refusal(b"%PDF-1.7", 10_000) == image_contract.NOT_AN_IMAGE


def test_a_burst_waits_until_it_is_quiet_or_committed():
    from chalice_app.retraining import wait_reason
    from chalice_app.store.arrivals import Burst

    def burst(last: float, pending: bool = True, committed: bool = False) -> Burst:
        return Burst(pending=pending, last_arrival=last, arrivals=5, committed=committed, version=3)

    assert wait_reason(None, 100, 60) == "no new training data"
    assert wait_reason(burst(0, pending=False), 100, 60) == "no new training data"
    assert wait_reason(burst(50), 100, 60) == "the upload burst is still going on"
    assert wait_reason(burst(40), 100, 60) is None
    assert wait_reason(burst(99, committed=True), 100, 60) is None


def test_endpoint_states_in_the_events_spelling_read_as_the_apis():
    from chalice_app.events import EndpointDetail

    for event_status, api_status in [("IN_SERVICE", "InService"), ("UPDATE_ROLLBACK_FAILED", "UpdateRollbackFailed"),
                                     ("FAILED", "Failed"), ("InService", "InService")]:
        detail = EndpointDetail.model_validate({"EndpointName": "e", "EndpointStatus": event_status})
        assert detail.status == api_status
