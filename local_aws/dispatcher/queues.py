"""SQS queues by name, as the dispatcher and the stack's infrastructure create them."""

from __future__ import annotations

from typing import Any

from .stage import ACCOUNT


def queue_arn(region: str, name: str) -> str:
    return f"arn:aws:sqs:{region}:{ACCOUNT}:{name}"


def ensure_queue(sqs: Any, name: str, attributes: dict[str, str]) -> str:
    """Create a queue or bring an existing one (restored from the state directory) to these attributes."""
    url = sqs.create_queue(QueueName=name)["QueueUrl"]
    if attributes:
        sqs.set_queue_attributes(QueueUrl=url, Attributes=attributes)
    return url
