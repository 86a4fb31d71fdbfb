"""moto's SQS, made linear by local_aws.moto_sqs, still answers as SQS does."""

from __future__ import annotations

import time

import boto3
from moto.core import DEFAULT_ACCOUNT_ID
from moto.sqs.models import sqs_backends


def test_counters_visibility_delay_and_retention(moto_url):
    sqs = boto3.client("sqs", region_name="us-east-1")
    url = sqs.create_queue(QueueName="q", Attributes={"MessageRetentionPeriod": "60"})["QueueUrl"]
    for body in ("a", "b"):
        sqs.send_message(QueueUrl=url, MessageBody=body)
    sqs.send_message(QueueUrl=url, MessageBody="later", DelaySeconds=60)
    [held] = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=1, VisibilityTimeout=60)["Messages"]

    counters = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    assert (counters["ApproximateNumberOfMessages"], counters["ApproximateNumberOfMessagesDelayed"],
            counters["ApproximateNumberOfMessagesNotVisible"]) == ("1", "1", "1")
    [ready] = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=0)["Messages"]
    assert {held["Body"], ready["Body"]} == {"a", "b"}

    # A message past the queue's retention period is never delivered again.
    queue = sqs_backends[DEFAULT_ACCOUNT_ID]["us-east-1"].get_queue("q")
    for message in queue._messages:
        message.sent_timestamp = int((time.time() - 61) * 1000)
    assert sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", []) == []
