"""A moto-backed AWS for the Chalice app, built from infra/template.json, and a tiny Lambda runtime.

`world` creates the bucket (with the template's S3 → SQS notifications), the
queues and the tables exactly as the template declares them, so the tests check
the code and the template together. `World.drain` plays Lambda's SQS poller:
it receives what S3 really sent, invokes the handler through chalice.test.Client,
and deletes only the records the handler did not report as failed.
"""

from __future__ import annotations

import io
import json
import os
import uuid
from functools import lru_cache
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import boto3
import pytest
from chalice.test import Client
from moto import mock_aws
from moto.core import DEFAULT_ACCOUNT_ID
from moto.sagemaker.models import FakeTrainingJob, HyperParameterTuningJob, sagemaker_backends

from infra import policies
from training.metrics import VERDICT_VALUES

from . import iam

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = json.loads((ROOT / "infra" / "template.json").read_text())
REGION = "us-east-1"
STAGE = "test"
BUCKET = "image-pipeline-test-bucket"
ENV = {
    "AWS_DEFAULT_REGION": REGION, "AWS_REGION": REGION,
    "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing",
    "POWERTOOLS_TRACE_DISABLED": "true", "POWERTOOLS_METRICS_NAMESPACE": "ImagePipelineTest",
    "POWERTOOLS_LOG_LEVEL": "WARNING",
    "NAME_PREFIX": "ip-test", "BUCKET": BUCKET,
    "PIPELINE_TABLE": f"image-pipeline-{STAGE}-pipeline", "PREDICTIONS_TABLE": f"image-pipeline-{STAGE}-predictions",
    "TRAINING_QUEUE": f"image-pipeline-{STAGE}-training-data", "INCOMING_QUEUE": f"image-pipeline-{STAGE}-incoming",
    "FAILED_EVENTS_QUEUE": f"image-pipeline-{STAGE}-failed-events",
    "ENDPOINT_NAME": f"image-pipeline-{STAGE}-classifier",
    "SOURCE_DIR_URI": f"s3://{BUCKET}/code/sourcedir.tar.gz",
    "SAGEMAKER_ROLE_ARN": f"arn:aws:iam::{DEFAULT_ACCOUNT_ID}:role/image-pipeline-{STAGE}-sagemaker",
    "TRAINING_IMAGE": "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-training:2.5-cpu-py311",
    "INFERENCE_IMAGE": "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-inference:2.5-cpu-py311",
    "DEBUGGER_RULES_IMAGE": "503895931360.dkr.ecr.us-east-1.amazonaws.com/sagemaker-debugger-rules:latest",
    "QUIET_WINDOW_SECONDS": "60", "MIN_IMAGES": "12", "GATE_MARGIN": "0.01", "MAX_IMAGE_BYTES": "50000",
    "TOP_K": "3",
}


def png_bytes(seed: int = 0, size: int = 8) -> bytes:
    """A real, tiny PNG (Pillow is a dev dependency; the Lambda never decodes images)."""
    from PIL import Image

    image = Image.new("RGB", (size, size), color=(seed * 37 % 256, seed * 91 % 256, seed * 13 % 256))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _resolve(value: Any) -> Any:
    """The template's Fn::Sub names for the test stage."""
    if isinstance(value, dict) and "Fn::Sub" in value:
        return value["Fn::Sub"].replace("${Stage}", STAGE)
    return value


def _table_request(resource: dict[str, Any]) -> dict[str, Any]:
    props = resource["Properties"]
    request = {key: props[key] for key in ("AttributeDefinitions", "KeySchema", "BillingMode", "GlobalSecondaryIndexes")
               if key in props}
    request["TableName"] = _resolve(props["TableName"])
    return request


@dataclass
class World:
    client: Client
    clock: list[float]
    uploaded: int = 0
    s3: Any = field(default_factory=lambda: boto3.client("s3", region_name=REGION))
    sqs: Any = field(default_factory=lambda: boto3.client("sqs", region_name=REGION))
    sagemaker: Any = field(default_factory=lambda: boto3.client("sagemaker", region_name=REGION))

    # Time ---------------------------------------------------------------
    def advance(self, seconds: float) -> None:
        self.clock[0] += seconds

    # Lambda's SQS poller ------------------------------------------------
    def queue_url(self, name: str) -> str:
        return self.sqs.get_queue_url(QueueName=name)["QueueUrl"]

    def receive(self, queue: str, max_messages: int = 10) -> list[dict[str, Any]]:
        response = self.sqs.receive_message(QueueUrl=self.queue_url(queue), MaxNumberOfMessages=max_messages,
                                            AttributeNames=["All"], VisibilityTimeout=0)
        return response.get("Messages", [])

    def lambda_event(self, queue: str, messages: list[dict[str, Any]]) -> dict[str, Any]:
        arn = f"arn:aws:sqs:{REGION}:{DEFAULT_ACCOUNT_ID}:{queue}"
        return {"Records": [{"messageId": m["MessageId"], "receiptHandle": m["ReceiptHandle"], "body": m["Body"],
                             "attributes": m.get("Attributes", {}), "messageAttributes": {},
                             "md5OfBody": m["MD5OfBody"], "eventSource": "aws:sqs", "eventSourceARN": arn,
                             "awsRegion": REGION} for m in messages]}

    def drain(self, function: str, queue: str, *, duplicate: bool = False) -> list[dict[str, Any]]:
        """Deliver everything in `queue` to `function` in batches of 10 (twice each when `duplicate`)."""
        responses = []
        while messages := self.receive(queue):
            event = self.lambda_event(queue, messages)
            for _ in range(2 if duplicate else 1):
                payload = self.client.lambda_.invoke(function, event).payload or {}
                responses.append(payload)
            failed = {item["itemIdentifier"] for item in payload.get("batchItemFailures", [])}
            assert not failed, f"{function} reported failures: {failed}"
            self.sqs.delete_message_batch(QueueUrl=self.queue_url(queue), Entries=[
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)])
        return responses

    # S3 uploads -----------------------------------------------------------
    def upload(self, key: str, body: bytes) -> str:
        return self.s3.put_object(Bucket=BUCKET, Key=key, Body=body)["ETag"].strip('"')

    def upload_training(self, count: int, labels: tuple[str, ...] = ("cat", "dog")) -> None:
        """`count` new images (new keys and contents each call), alternating between `labels`."""
        start, self.uploaded = self.uploaded, self.uploaded + count
        for index in range(start, start + count):
            self.upload(f"training-data/{labels[index % len(labels)]}/img-{index:04d}.png", png_bytes(index))

    # EventBridge ----------------------------------------------------------
    def sagemaker_event(self, function: str, detail_type: str, detail: dict[str, Any]) -> Any:
        """Invoke `function` with an event in EventBridge's shape (version is the string "0")."""
        event = {"version": "0", "id": str(uuid.uuid4()), "detail-type": detail_type, "source": "aws.sagemaker",
                 "account": DEFAULT_ACCOUNT_ID, "time": "2027-01-15T08:00:00Z", "region": REGION, "resources": [],
                 "detail": detail}
        return self.client.lambda_.invoke(function, event).payload

    # SageMaker, played through moto's state --------------------------------
    @property
    def backend(self) -> Any:
        return sagemaker_backends[DEFAULT_ACCOUNT_ID][REGION]

    def finish_tuning(self, name: str, tuned: dict[str, str], objective: float = 0.9) -> None:
        job = self.backend.hyper_parameter_tuning_jobs[name]
        job.hyper_parameter_tuning_job_status = "Completed"
        job.hyper_parameter_tuning_end_time = datetime.fromtimestamp(self.clock[0], tz=timezone.utc)
        job.best_training_job = {**job.best_training_job, "TrainingJobName": f"{name}-003-abcdef",
                                 "TunedHyperParameters": tuned,
                                 "FinalHyperParameterTuningJobObjectiveMetric": {
                                     "Type": "Maximize", "MetricName": "valid:accuracy", "Value": objective}}

    def finish_training(self, name: str, accuracy: float | None, rules: dict[str, str] | None = None,
                        managed: dict[str, str] | None = None) -> None:
        """The job's final metrics: test accuracy and its own rule verdict lines (in-job Debugger);
        `managed`: the managed Debugger's rule statuses instead."""
        job = self.backend.training_jobs[name]
        if job.training_job_status != "Completed":  # a job ends once; its rule statuses may change after
            job.training_job_status = "Completed"
            job.training_end_time = datetime.fromtimestamp(self.clock[0], tz=timezone.utc)
        stamp = job.creation_time
        job.final_metric_data_list = ([] if accuracy is None else
                                      [{"MetricName": "test:accuracy", "Value": accuracy, "Timestamp": stamp}])
        job.final_metric_data_list += [{"MetricName": f"rule:{rule}", "Value": VERDICT_VALUES[verdict], "Timestamp": stamp}
                                       for rule, verdict in (rules or {}).items()]
        job.debug_rule_evaluation_statuses = [
            {"RuleConfigurationName": rule, "RuleEvaluationStatus": status}
            for rule, status in (managed or {}).items()]


def _enforced(resource: Any, policy: str) -> Any:
    iam.enforce(resource.meta.client, policy, REGION, DEFAULT_ACCOUNT_ID)
    return resource


@pytest.fixture
def app_env(monkeypatch: pytest.MonkeyPatch):
    from chalice_app import aws, config

    for name in list(os.environ):
        if name.startswith("AWS_ENDPOINT_URL") or name in {"AWS_PROFILE", "AWS_CONFIG_FILE"}:
            monkeypatch.delenv(name)
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    config.settings.cache_clear()
    aws.reset()
    # Every call the handlers make is checked against the stage's generated policy, as AWS would.
    policy = json.dumps(policies.resolve(policies.policy(ENV), REGION, DEFAULT_ACCOUNT_ID))
    iam.enable_string_like(monkeypatch)
    make, resource = aws._make, aws._resource
    monkeypatch.setattr(aws, "_make", lru_cache(maxsize=None)(
        lambda service: iam.enforce(make.__wrapped__(service), policy, REGION, DEFAULT_ACCOUNT_ID)))
    monkeypatch.setattr(aws, "_resource", lru_cache(maxsize=None)(lambda service: _enforced(
        resource.__wrapped__(service), policy)))
    yield ENV
    config.settings.cache_clear()
    aws.reset()


@pytest.fixture
def world(app_env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from chalice_app import clock

    project = tmp_path / "project"
    (project / ".chalice").mkdir(parents=True)
    (project / ".chalice" / "config.json").write_text(json.dumps({"version": "2.0", "app_name": "image-pipeline",
                                                                  "stages": {STAGE: {}}}))
    now = [1_800_000_000.0]
    monkeypatch.setattr(clock, "now", lambda: now[0])
    # moto ends a job the moment it is created, at the wall clock's time; here it runs until the test
    # finishes it (World.finish_tuning, finish_training), on the world's clock, as the schedule sees it.
    later = datetime.fromtimestamp(now[0] + 10 * 86400, tz=timezone.utc)
    for job_class, status, end in ((HyperParameterTuningJob, "hyper_parameter_tuning_job_status",
                                    "hyper_parameter_tuning_end_time"),
                                   (FakeTrainingJob, "training_job_status", "training_end_time")):
        def running(job, *args, _create=job_class.__init__, _status=status, _end=end, **kwargs):
            _create(job, *args, **kwargs)
            setattr(job, _status, "InProgress")
            setattr(job, _end, later)

        monkeypatch.setattr(job_class, "__init__", running)
    with mock_aws():
        dynamodb, sqs, s3 = (boto3.client(s, region_name=REGION) for s in ("dynamodb", "sqs", "s3"))
        resources = TEMPLATE["Resources"]
        for resource in resources.values():
            if resource.get("Type") == "AWS::DynamoDB::Table":
                dynamodb.create_table(**_table_request(resource))
        arns = {}
        for logical, resource in resources.items():
            if resource.get("Type") == "AWS::SQS::Queue":
                url = sqs.create_queue(QueueName=_resolve(resource["Properties"]["QueueName"]))["QueueUrl"]
                arns[logical] = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        s3.create_bucket(Bucket=BUCKET)
        notifications = resources["DataBucket"]["Properties"]["NotificationConfiguration"]["QueueConfigurations"]
        s3.put_bucket_notification_configuration(Bucket=BUCKET, NotificationConfiguration={"QueueConfigurations": [
            {"QueueArn": arns[n["Queue"]["Fn::GetAtt"][0]], "Events": [n["Event"]],
             "Filter": {"Key": {"FilterRules": n["Filter"]["S3Key"]["Rules"]}}} for n in notifications]})
        for logical in arns:  # S3 sends a test event when notifications are configured
            sqs.purge_queue(QueueUrl=sqs.get_queue_url(QueueName=arns[logical].rsplit(":", 1)[1])["QueueUrl"])
        from app import app

        with Client(app, stage_name=STAGE, project_dir=str(project)) as client:
            yield World(client=client, clock=now)
