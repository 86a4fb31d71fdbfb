"""The dispatcher's SQS poller, as Lambda's: what it has received is invoked, even when a later receive fails."""

from __future__ import annotations

import threading
from typing import Any

import boto3
from botocore.exceptions import EndpointConnectionError
from moto import mock_aws

from local_aws.dispatcher.poller import QueuePoller


class FailingAfterFirstReceive:
    """An SQS client whose second ReceiveMessage fails, as when moto restarts mid-batch."""

    def __init__(self, sqs: Any) -> None:
        self._sqs, self.receives = sqs, 0

    def receive_message(self, **params: Any) -> dict[str, Any]:
        self.receives += 1
        if self.receives > 1:
            raise EndpointConnectionError(endpoint_url="http://127.0.0.1:5000")
        return self._sqs.receive_message(**{**params, "MaxNumberOfMessages": 2})

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sqs, name)


def test_a_receive_that_fails_mid_batch_invokes_with_what_was_received():
    with mock_aws():
        sqs = boto3.client("sqs", region_name="us-east-1")
        url = sqs.create_queue(QueueName="uploads")["QueueUrl"]
        for index in range(5):
            sqs.send_message(QueueUrl=url, MessageBody=f"m{index}")
        invoked: list[list[str]] = []

        def invoke(messages: list[dict[str, Any]]) -> set[str]:
            invoked.append([m["Body"] for m in messages])
            return set()

        client = FailingAfterFirstReceive(sqs)
        poller = QueuePoller(client, url, batch_size=10, batching_window=5, invoke=invoke, name="uploads",
                             visibility_timeout=720, idle_wait=0)
        batch = poller.gather(threading.Event())
        assert len(batch) == 2 and client.receives == 2
        assert poller.process(batch) == (2, 0)
        assert len(invoked) == 1 and len(invoked[0]) == 2
        left = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
        assert (left["ApproximateNumberOfMessages"], left["ApproximateNumberOfMessagesNotVisible"]) == ("3", "0")
