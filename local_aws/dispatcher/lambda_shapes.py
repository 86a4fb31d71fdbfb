"""Lambda's side of an invocation: the context object and the event shapes it delivers."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from .stage import ACCOUNT, Stage


@dataclass
class LambdaContext:
    """The attributes Lambda's Python runtime gives a handler's `context` (Powertools reads them)."""

    function_name: str
    memory_limit_in_mb: int
    invoked_function_arn: str
    timeout_seconds: int
    function_version: str = "$LATEST"
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    started: float = field(default_factory=time.monotonic)

    @property
    def log_group_name(self) -> str:
        return f"/aws/lambda/{self.function_name}"

    @property
    def log_stream_name(self) -> str:
        return f"{datetime.now(timezone.utc):%Y/%m/%d}/[$LATEST]{self.aws_request_id.replace('-', '')}"

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self.timeout_seconds - (time.monotonic() - self.started)) * 1000))


def context_for(stage: Stage, handler: str) -> LambdaContext:
    function = stage.function_name(handler)
    return LambdaContext(function_name=function, memory_limit_in_mb=stage.lambda_memory_size,
                         invoked_function_arn=f"arn:aws:lambda:{stage.region}:{ACCOUNT}:function:{function}",
                         timeout_seconds=stage.lambda_timeout)


def _message_attribute(value: dict[str, Any]) -> dict[str, Any]:
    return {"stringValue": value.get("StringValue"), "binaryValue": value.get("BinaryValue"),
            "stringListValues": [], "binaryListValues": [], "dataType": value["DataType"]}


def sqs_event(messages: list[dict[str, Any]], queue_arn: str, region: str) -> dict[str, Any]:
    """An SQS event source mapping's event for messages as ReceiveMessage returned them."""
    return {"Records": [{
        "messageId": m["MessageId"],
        "receiptHandle": m["ReceiptHandle"],
        "body": m["Body"],
        "attributes": m.get("Attributes", {}),
        "messageAttributes": {k: _message_attribute(v) for k, v in m.get("MessageAttributes", {}).items()},
        "md5OfBody": m["MD5OfBody"],
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": region,
    } for m in messages]}


def scheduled_event(rule_arn: str, region: str) -> dict[str, Any]:
    """What an EventBridge schedule rule delivers."""
    return {"version": "0", "id": str(uuid.uuid4()), "detail-type": "Scheduled Event", "source": "aws.events",
            "account": ACCOUNT, "time": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "region": region, "resources": [rule_arn], "detail": {}}


def failed_message_ids(response: Any) -> set[str] | None:
    """The messageIds a handler reported in `batchItemFailures`; None when the answer is malformed
    (Lambda then treats the whole batch as failed)."""
    if response is None:
        return set()
    if not isinstance(response, dict):
        return None
    failures = response.get("batchItemFailures") or []
    try:
        ids = {str(item["itemIdentifier"]) for item in failures}
    except (TypeError, KeyError):
        return None
    return None if "" in ids else ids
