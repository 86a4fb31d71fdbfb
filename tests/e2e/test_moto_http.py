"""moto's server with keep-alive (local_aws.moto_http): many requests per connection, same answers."""

from __future__ import annotations

import http.client
import logging
import threading

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import EndpointConnectionError
from werkzeug.serving import make_server

from local_aws.moto_http import KeepAliveRequestHandler, close_open_connections
from local_aws.moto_server import MotoServer

CREDENTIALS = {"region_name": "us-east-1", "aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


@pytest.fixture
def moto():
    server = MotoServer().start()
    yield server
    server.stop()


def new_connections(caplog) -> int:
    return sum("Starting new HTTP connection" in r.getMessage() or "Resetting dropped connection" in r.getMessage()
               for r in caplog.records)


def test_one_connection_carries_every_call(moto, caplog):
    s3 = boto3.client("s3", endpoint_url=moto.url, **CREDENTIALS)
    sqs = boto3.client("sqs", endpoint_url=moto.url, **CREDENTIALS)
    dynamodb = boto3.client("dynamodb", endpoint_url=moto.url, **CREDENTIALS)
    s3.create_bucket(Bucket="kept")
    url = sqs.create_queue(QueueName="q")["QueueUrl"]
    dynamodb.create_table(TableName="t", KeySchema=[{"AttributeName": "k", "KeyType": "HASH"}],
                          AttributeDefinitions=[{"AttributeName": "k", "AttributeType": "S"}],
                          BillingMode="PAY_PER_REQUEST")
    with caplog.at_level(logging.DEBUG, logger="urllib3.connectionpool"):
        for index in range(5):
            s3.put_object(Bucket="kept", Key=f"k{index}", Body=b"x" * (1000 + index))
            head = s3.head_object(Bucket="kept", Key=f"k{index}")  # a Content-Length, and no body
            assert head["ContentLength"] == 1000 + index
            assert s3.get_object(Bucket="kept", Key=f"k{index}")["Body"].read() == b"x" * (1000 + index)
            sqs.send_message(QueueUrl=url, MessageBody=str(index))
            dynamodb.put_item(TableName="t", Item={"k": {"S": str(index)}}, ConditionExpression="attribute_not_exists(k)")
        with pytest.raises(dynamodb.exceptions.ConditionalCheckFailedException):  # an error answer keeps it too
            dynamodb.put_item(TableName="t", Item={"k": {"S": "0"}}, ConditionExpression="attribute_not_exists(k)")
        assert sorted(m["Body"] for m in sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"]) == \
            ["0", "1", "2", "3", "4"]
    assert new_connections(caplog) == 0  # each client's first connection (made above) served everything


def test_a_stopped_server_answers_no_one():
    server = MotoServer().start()
    s3 = boto3.client("s3", endpoint_url=server.url, config=Config(retries={"max_attempts": 1}), **CREDENTIALS)
    s3.create_bucket(Bucket="kept")  # the client now holds an open connection
    server.stop()
    with pytest.raises(EndpointConnectionError):
        s3.list_buckets()


@pytest.fixture
def plain_server():
    """The handler around a small WSGI app, to reach the protocol's corners directly."""
    seen: list[bytes] = []

    def app(environ, start_response):
        path = environ["PATH_INFO"]
        if path == "/fail":
            raise RuntimeError("boom")
        if path == "/read":
            seen.append(environ["wsgi.input"].read())
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"answer to ", path.encode()]  # no Content-Length: the handler adds it

    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=KeepAliveRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, seen
    server.shutdown()
    server.server_close()
    close_open_connections(server)


def test_an_unread_body_is_discarded_and_the_next_request_served(plain_server):
    server, seen = plain_server
    connection = http.client.HTTPConnection("127.0.0.1", server.server_port)
    connection.request("POST", "/ignore", body=b"y" * 100_000)
    first = connection.getresponse()
    assert (first.status, first.read(), first.getheader("Content-Length")) == (200, b"answer to /ignore", "17")
    socket_used = connection.sock
    connection.request("POST", "/read", body=b"second")
    second = connection.getresponse()
    assert (second.status, second.read(), seen) == (200, b"answer to /read", [b"second"])
    assert connection.sock is socket_used


def test_chunked_bodies_and_errors_close_the_connection(plain_server):
    server, seen = plain_server
    connection = http.client.HTTPConnection("127.0.0.1", server.server_port)
    connection.request("POST", "/read", body=iter([b"chunk-1 ", b"chunk-2"]), encode_chunked=True)
    chunked = connection.getresponse()
    assert (chunked.status, chunked.read(), seen) == (200, b"answer to /read", [b"chunk-1 chunk-2"])
    assert chunked.getheader("Connection") == "close"

    connection = http.client.HTTPConnection("127.0.0.1", server.server_port)
    connection.request("GET", "/fail")
    failed = connection.getresponse()
    assert failed.status == 500 and failed.getheader("Connection") == "close"
    failed.read()
    connection.request("GET", "/after")  # http.client reconnects: the server closed the failed one
    assert connection.getresponse().read() == b"answer to /after"
