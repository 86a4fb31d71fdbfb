"""SageMaker's EventBridge events, in AWS's detail shapes.

AWS's details mirror the Describe* answers with timestamps as epoch milliseconds and
tags as a {key: value} map. Two quirks of the real events are kept on purpose, since
event patterns written against AWS depend on them:
- the endpoint event spells EndpointStatus in upper snake case ("IN_SERVICE",
  "CREATING", "UPDATING", "FAILED", "DELETING"), unlike the API's "InService";
- the tuning job event carries the counters but no BestTrainingJob.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import boto3
from aws_lambda_powertools import Logger

logger = Logger(service="local-sagemaker")

SOURCE = "aws.sagemaker"
TRAINING_JOB = "SageMaker Training Job State Change"
TUNING_JOB = "SageMaker HyperParameter Tuning Job State Change"
ENDPOINT = "SageMaker Endpoint State Change"
# SageMaker publishes to the account's default bus only.
BUS = "default"

_TIME_KEYS = re.compile(r"(Time|Timestamp)$")


@dataclass(frozen=True)
class Event:
    detail_type: str
    resource_arn: str
    detail: dict[str, Any]

    def entry(self) -> dict[str, Any]:
        """The PutEvents entry."""
        return {
            "Source": SOURCE,
            "DetailType": self.detail_type,
            "Resources": [self.resource_arn],
            "Detail": json.dumps(self.detail),
            "EventBusName": BUS,
            "Time": datetime.now(timezone.utc),
        }


def to_event_times(value: Any, key: str = "") -> Any:
    """Epoch seconds (the API's wire form) become epoch milliseconds, as in AWS's events."""
    if isinstance(value, dict):
        return {k: to_event_times(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [to_event_times(v, key) for v in value]
    if isinstance(value, (int, float)) and _TIME_KEYS.search(key):
        return int(round(value * 1000))
    return value


def tag_map(tags: list[dict[str, str]] | None) -> dict[str, str]:
    return {tag["Key"]: tag["Value"] for tag in tags or []}


def training_job_event(description: dict[str, Any], tags: list[dict[str, str]] | None) -> Event:
    detail = to_event_times(description)
    detail["Tags"] = tag_map(tags)
    return Event(TRAINING_JOB, description["TrainingJobArn"], detail)


def tuning_job_event(description: dict[str, Any], tags: list[dict[str, str]] | None) -> Event:
    keys = ("HyperParameterTuningJobName", "HyperParameterTuningJobArn", "TrainingJobDefinition",
            "HyperParameterTuningJobStatus", "CreationTime", "LastModifiedTime",
            "TrainingJobStatusCounters", "ObjectiveStatusCounters", "FailureReason")
    detail = to_event_times({k: description[k] for k in keys if k in description})
    detail["Tags"] = tag_map(tags)
    return Event(TUNING_JOB, description["HyperParameterTuningJobArn"], detail)


def endpoint_status_for_event(status: str) -> str:
    """"InService" -> "IN_SERVICE", "OutOfService" -> "OUT_OF_SERVICE"."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", status).upper()


def endpoint_event(description: dict[str, Any], tags: list[dict[str, str]] | None) -> Event:
    keys = ("EndpointName", "EndpointArn", "EndpointConfigName", "CreationTime", "LastModifiedTime",
            "FailureReason")
    detail = to_event_times({k: description[k] for k in keys if k in description})
    detail["ProductionVariants"] = [
        {"VariantName": v["VariantName"], "DesiredWeight": v.get("DesiredWeight", 1.0),
         "DesiredInstanceCount": v.get("DesiredInstanceCount", 1)}
        for v in description.get("ProductionVariants", [])
    ]
    detail["EndpointStatus"] = endpoint_status_for_event(description["EndpointStatus"])
    detail["Tags"] = tag_map(tags)
    return Event(ENDPOINT, description["EndpointArn"], detail)


def eventbridge_publisher(region: str) -> Callable[[Event], None]:
    """Publishes to the default bus; a lost event is logged, never fatal to the job."""
    client = boto3.client("events", region_name=region)

    def publish(event: Event) -> None:
        try:
            answer = client.put_events(Entries=[event.entry()])
            if answer.get("FailedEntryCount"):
                logger.warning("event rejected", detail_type=event.detail_type, entries=answer["Entries"])
        except Exception:  # noqa: BLE001 - the bus being down must not fail a training job
            logger.exception("event not published", detail_type=event.detail_type, resource=event.resource_arn)

    return publish
