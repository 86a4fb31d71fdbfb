"""A moto-backed AWS for the Chalice app, built as the local stack builds it, and Lambda's SQS delivery.

`world` creates the bucket (with its S3 → SQS notifications), the queues and the tables
from infra/template.json with the stack's own code (`local_aws.project.infra`), so the
tests check the code and the template together. `World.deliver` and `World.drain` play
Lambda's SQS poller with the dispatcher's own (`local_aws.dispatcher.poller`): they
receive what S3 really sent, invoke the handler with Lambda's event through
chalice.test.Client, and delete only the records the handler did not report as failed.
"""

from __future__ import annotations

import io
import json
import os
import random
import threading
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
from local_aws.dispatcher import wiring_from_app
from local_aws.dispatcher.lambda_shapes import failed_message_ids, sqs_event
from local_aws.dispatcher.poller import QueuePoller
from local_aws.dispatcher.queues import queue_arn
from local_aws.dispatcher.stage import Stage
from local_aws.project.infra import apply, render
from training.metrics import VERDICT_VALUES

from . import iam

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = json.loads((ROOT / "infra" / "template.json").read_text())
CONFIG = json.loads((ROOT / ".chalice" / "config.json").read_text())  # the stages, as Chalice reads them
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


# The test stage as the stack's infrastructure and the dispatcher see it.
TEST_STAGE = Stage(name=STAGE, app_name="image-pipeline", environment=ENV, lambda_timeout=60, lambda_memory_size=128)


@dataclass
class Delivery:
    """One batch delivered: the messages, the handler's answer (one per invocation), the records it failed."""

    messages: list[dict[str, Any]]
    payloads: list[Any]
    failed: set[str]

    @property
    def payload(self) -> Any:
        return self.payloads[-1]


@dataclass
class World:
    client: Client
    clock: list[float]
    batch_sizes: dict[str, int]  # per SQS-fed function, as the app declares it
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

    def peek(self, queue: str) -> list[dict[str, Any]]:
        """What `queue` holds (up to 10 messages), left there for the next delivery."""
        response = self.sqs.receive_message(QueueUrl=self.queue_url(queue), MaxNumberOfMessages=10,
                                            VisibilityTimeout=0)
        return response.get("Messages", [])

    def deliver(self, function: str, queue: str, *, duplicate: bool = False) -> Delivery | None:
        """One batch from `queue` to `function` as the dispatcher's poller delivers it (twice when
        `duplicate`): what succeeded is deleted, the reported failures come back with the next
        delivery. None when the queue is empty."""
        delivery = Delivery([], [], set())

        def invoke(messages: list[dict[str, Any]]) -> set[str] | None:
            delivery.messages = messages
            delivery.failed = {m["MessageId"] for m in messages}  # all of them, unless the handler answers
            event = sqs_event(messages, queue_arn(REGION, queue), REGION)
            for _ in range(2 if duplicate else 1):
                delivery.payloads.append(self.client.lambda_.invoke(function, event).payload)
            failed = failed_message_ids(delivery.payload)
            if failed is not None:
                delivery.failed = failed
            return failed

        # The world's time stands still: a batch is what one receive finds (its window has closed),
        # and an empty queue answers at once rather than after a long poll.
        url = self.queue_url(queue)
        visibility = self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["VisibilityTimeout"])["Attributes"]
        poller = QueuePoller(self.sqs, url, batch_size=self.batch_sizes[function], batching_window=0, invoke=invoke,
                             name=function, visibility_timeout=float(visibility["VisibilityTimeout"]), idle_wait=0)
        batch = poller.gather(threading.Event())
        if not batch:
            return None
        poller.process(batch)
        poller.release()  # the failures' visibility timeout passes before the next delivery
        return delivery

    def drain(self, function: str, queue: str, *, duplicate: bool = False) -> None:
        """Deliver everything in `queue` to `function`, batch by batch (twice each when `duplicate`);
        no record may fail."""
        while delivery := self.deliver(function, queue, duplicate=duplicate):
            assert not delivery.failed, f"{function} reported failures: {delivery.failed}"

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


_UNCHECKED: dict[str, Any] = {}


def enforce_stage_policy(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> str:
    """Every call the handlers make is checked against the policy generated for `env`, as AWS would;
    returns that policy."""
    from chalice_app import aws

    policy = json.dumps(policies.resolve(policies.policy(env), REGION, DEFAULT_ACCOUNT_ID))
    # The unchecked client makers, as first seen (a second call replaces the first's checks).
    make = _UNCHECKED.setdefault("make", aws._make.__wrapped__)
    resource = _UNCHECKED.setdefault("resource", aws._resource.__wrapped__)
    monkeypatch.setattr(aws, "_make", lru_cache(maxsize=None)(
        lambda service: iam.enforce(make(service), policy, REGION, DEFAULT_ACCOUNT_ID)))
    monkeypatch.setattr(aws, "_resource", lru_cache(maxsize=None)(lambda service: _enforced(
        resource(service), policy)))
    return policy


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
    iam.enable_string_like(monkeypatch)
    enforce_stage_policy(monkeypatch, ENV)
    yield ENV
    config.settings.cache_clear()
    aws.reset()


@pytest.fixture
def world(app_env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from chalice_app import clock, review

    # The review queue's sampling draw: seeded, so every test samples the same predictions each run.
    monkeypatch.setattr(review, "draw", random.Random(0).random)
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
        infra = render(TEST_STAGE)
        session = boto3.Session(region_name=REGION)
        apply(infra, session)
        sqs = session.client("sqs")
        for notification in infra.notifications:  # S3 sent each queue a test event when they were configured
            sqs.purge_queue(QueueUrl=sqs.get_queue_url(QueueName=notification.queue_arn.rsplit(":", 1)[1])["QueueUrl"])
        from app import app

        batch_sizes = {source.handler: source.batch_size for source in wiring_from_app(app, TEST_STAGE).sqs}
        with Client(app, stage_name=STAGE, project_dir=str(project)) as client:
            yield World(client=client, clock=now, batch_sizes=batch_sizes)


@pytest.fixture
def never_sampled(monkeypatch):
    """The review queue's random sample never draws: only low confidence puts a prediction in it."""
    from chalice_app import review

    monkeypatch.setattr(review, "draw", lambda: 0.99)


@pytest.fixture
def always_sampled(monkeypatch):
    """Every prediction is drawn in the review queue's random sample."""
    from chalice_app import review

    monkeypatch.setattr(review, "draw", lambda: 0.0)
