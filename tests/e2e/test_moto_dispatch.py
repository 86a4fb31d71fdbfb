"""moto's request routing, memoised by local_aws.moto_dispatch (applied for the session), finds what moto finds."""

from __future__ import annotations

import boto3
import moto.core.responses as core_responses
import pytest
from moto.core.utils import method_names_from_class
from moto.dynamodb.responses import DynamoHandler
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from moto.s3.responses import S3Response
from moto.sqs.responses import SQSResponse

from local_aws import moto_dispatch

HOSTS = [None, "moto_api", "s3", "s3.us-east-1.amazonaws.com", "sqs.eu-west-1.amazonaws.com",
         "dynamodb.us-east-1.amazonaws.com", "dynamodb", "events.us-east-1.amazonaws.com",
         "bucket.s3.amazonaws.com", "no-such-service.example.com"]


def test_backends_and_actions_are_moto_s():
    app = DomainDispatcherApplication(create_backend_app)
    for host in HOSTS * 2:  # the second round answers from the cache
        assert app.get_backend_for_host(host) == moto_dispatch.moto_backend_for_host(app, host), host
    for response in (S3Response, SQSResponse, DynamoHandler):
        assert core_responses.method_names_from_class(response) == method_names_from_class(response)


@pytest.mark.parametrize("service", ["s3", "sqs", "dynamodb", "events"])
def test_each_service_the_stack_uses_answers(moto_url, service):
    client = boto3.client(service, region_name="us-east-1")
    listing = {"s3": "list_buckets", "sqs": "list_queues", "dynamodb": "list_tables", "events": "list_rules"}[service]
    assert getattr(client, listing)()["ResponseMetadata"]["HTTPStatusCode"] == 200


def test_a_form_without_files_still_reads(moto_url):
    """SQS's query protocol posts a urlencoded form: the skipped debug helper changed nothing in it."""
    sqs = boto3.client("sqs", region_name="us-east-1")
    url = sqs.create_queue(QueueName="form")["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody="hello", MessageAttributes={
        "kind": {"DataType": "String", "StringValue": "greeting"}})
    [message] = sqs.receive_message(QueueUrl=url, MessageAttributeNames=["All"])["Messages"]
    assert (message["Body"], message["MessageAttributes"]["kind"]["StringValue"]) == ("hello", "greeting")
