"""Typed views of the events the handlers receive.

S3 notifications arrive wrapped in SQS message bodies; SageMaker state changes
arrive from EventBridge in AWS's shapes (detail fields as in the Describe* calls,
Tags as a map). Only the fields the pipeline reads are declared; the rest pass.
"""

from __future__ import annotations

import json
from typing import Literal
from urllib.parse import unquote_plus

from aws_lambda_powertools.utilities.parser.models import EventBridgeModel
from pydantic import BaseModel, ConfigDict, Field, field_validator

TUNING_DETAIL_TYPE = "SageMaker HyperParameter Tuning Job State Change"
TRAINING_DETAIL_TYPE = "SageMaker Training Job State Change"
ENDPOINT_DETAIL_TYPE = "SageMaker Endpoint State Change"


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class S3Object(_Lenient):
    key: str
    size: int = 0
    etag: str = Field(default="", alias="eTag")
    sequencer: str = ""  # orders events for one key; a redelivered event repeats it

    @field_validator("key")
    @classmethod
    def _decode(cls, value: str) -> str:
        # S3 notifications URL-encode keys (spaces as '+').
        return unquote_plus(value)


class S3Bucket(_Lenient):
    name: str


class S3Entity(_Lenient):
    bucket: S3Bucket
    object: S3Object


class S3Record(_Lenient):
    event_name: str = Field(alias="eventName")
    event_time: str = Field(default="", alias="eventTime")
    s3: S3Entity

    @property
    def bucket(self) -> str:
        return self.s3.bucket.name

    @property
    def key(self) -> str:
        return self.s3.object.key

    @property
    def etag(self) -> str:
        return self.s3.object.etag

    @property
    def size(self) -> int:
        return self.s3.object.size

    @property
    def sequencer(self) -> str:
        return self.s3.object.sequencer


class S3Notification(_Lenient):
    records: list[S3Record] = Field(default_factory=list, alias="Records")


def s3_records(sqs_body: str) -> list[S3Record]:
    """The ObjectCreated records in one SQS message body (S3's test event has none)."""
    payload = json.loads(sqs_body)
    if payload.get("Event") == "s3:TestEvent":
        return []
    notification = S3Notification.model_validate(payload)
    return [record for record in notification.records if record.event_name.startswith("ObjectCreated")]


TuningStatus = Literal["InProgress", "Completed", "Failed", "Stopping", "Stopped"]
TrainingStatus = Literal["InProgress", "Completed", "Failed", "Stopping", "Stopped"]


class TuningJobDetail(_Lenient):
    name: str = Field(alias="HyperParameterTuningJobName")
    status: TuningStatus = Field(alias="HyperParameterTuningJobStatus")
    failure_reason: str | None = Field(default=None, alias="FailureReason")
    tags: dict[str, str] = Field(default_factory=dict, alias="Tags")


class TrainingJobDetail(_Lenient):
    name: str = Field(alias="TrainingJobName")
    status: TrainingStatus = Field(alias="TrainingJobStatus")
    failure_reason: str | None = Field(default=None, alias="FailureReason")
    tags: dict[str, str] = Field(default_factory=dict, alias="Tags")


class EndpointDetail(_Lenient):
    name: str = Field(alias="EndpointName")
    status: str = Field(alias="EndpointStatus")
    config_name: str | None = Field(default=None, alias="EndpointConfigName")
    failure_reason: str | None = Field(default=None, alias="FailureReason")
    tags: dict[str, str] = Field(default_factory=dict, alias="Tags")

    @field_validator("status")
    @classmethod
    def _api_spelling(cls, value: str) -> str:
        # The event spells states IN_SERVICE, UPDATE_ROLLBACK_FAILED; the API InService.
        return "".join(part.capitalize() for part in value.split("_")) if value.isupper() else value


class TuningJobStateChange(EventBridgeModel):
    detail: TuningJobDetail


class TrainingJobStateChange(EventBridgeModel):
    detail: TrainingJobDetail


class EndpointStateChange(EventBridgeModel):
    detail: EndpointDetail


def _pattern(detail_type: str, detail: dict | None = None) -> dict:
    pattern: dict = {"source": ["aws.sagemaker"], "detail-type": [detail_type]}
    if detail:
        pattern["detail"] = detail
    return pattern


# A tuning or training job's terminal states: the ones whose events drive a run on.
JOB_ENDED = ("Completed", "Failed", "Stopped")
# EventBridge patterns the app subscribes to. Only terminal states matter; the
# training rule matches only the pipeline's final jobs (Tags is a map in the event).
TUNING_PATTERN = _pattern(TUNING_DETAIL_TYPE, {"HyperParameterTuningJobStatus": list(JOB_ENDED)})
TRAINING_PATTERN = _pattern(
    TRAINING_DETAIL_TYPE,
    {"TrainingJobStatus": list(JOB_ENDED), "Tags": {"pipeline-role": ["final"]}},
)
ENDPOINT_PATTERN = _pattern(ENDPOINT_DETAIL_TYPE)
