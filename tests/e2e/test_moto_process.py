"""moto in its own process, as the stack runs it (gunicorn): many requests per connection, the same
answers; it outlives a Ctrl-C, stops when told, comes back with its data when killed, and does not
outlive the death of its worker when it has no state to come back with."""

from __future__ import annotations

import http.client
import json
import logging
import os
import signal
import time
from pathlib import Path

import boto3
import pytest

from local_aws.moto_server import MotoProcess
from local_aws.ports import free_port

CREDENTIALS = {"region_name": "us-east-1", "aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


@pytest.fixture(scope="module")
def moto():
    process = MotoProcess("127.0.0.1", free_port()).start()
    yield process
    process.stop()


def worker_of(moto: MotoProcess) -> int:
    """The pid of gunicorn's worker, the master's one child."""
    pid = moto._process.pid
    (child,) = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return int(child)


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


def test_an_unread_body_leaves_the_connection_to_the_next_request(moto):
    connection = http.client.HTTPConnection(moto.host, moto.port)
    connection.request("PUT", "/unread-bodies")  # CreateBucket
    assert connection.getresponse().read() == b""
    used = connection.sock
    # moto answers a read of its settings without reading the body; gunicorn alone would discard
    # 64 KiB of it and close the connection after an answer that said it was kept.
    connection.request("GET", "/moto-api/config", body=b"y" * 1_000_000)
    first = connection.getresponse()
    assert (first.status, first.getheader("Connection")) == (201, "keep-alive") and b"batch" in first.read()
    connection.request("PUT", "/unread-bodies/second", body=b"second")
    assert connection.getresponse().read() == b""
    assert connection.sock is used
    s3 = boto3.client("s3", endpoint_url=moto.url, **CREDENTIALS)
    assert s3.get_object(Bucket="unread-bodies", Key="second")["Body"].read() == b"second"


def test_a_chunked_body_is_read_whole(moto):
    connection = http.client.HTTPConnection(moto.host, moto.port)
    connection.request("PUT", "/chunked-bodies")
    assert connection.getresponse().read() == b""
    connection.request("PUT", "/chunked-bodies/k", body=iter([b"chunk-1 ", b"chunk-2"]), encode_chunked=True)
    answer = connection.getresponse()
    assert (answer.status, answer.read(), answer.getheader("Connection")) == (200, b"", "keep-alive")
    s3 = boto3.client("s3", endpoint_url=moto.url, **CREDENTIALS)
    assert s3.get_object(Bucket="chunked-bodies", Key="k")["Body"].read() == b"chunk-1 chunk-2"


def test_serves_ignores_ctrl_c_and_stops():
    moto = MotoProcess("127.0.0.1", free_port()).start()
    try:
        s3 = boto3.client("s3", endpoint_url=moto.url, **CREDENTIALS)
        s3.create_bucket(Bucket="kept")
        worker = worker_of(moto)
        # A terminal's Ctrl-C reaches a whole process group; only the stack may stop moto,
        # after what calls it.
        os.killpg(moto._process.pid, signal.SIGINT)
        time.sleep(0.5)
        assert moto._process.poll() is None and worker_of(moto) == worker
        assert [b["Name"] for b in s3.list_buckets()["Buckets"]] == ["kept"]
        process = moto._process
    finally:
        moto.stop()
    assert process.poll() is not None
    assert not Path(f"/proc/{worker}").exists()  # the master reaped it before it ended


def test_without_a_state_dir_the_death_of_its_worker_ends_moto():
    moto = MotoProcess("127.0.0.1", free_port()).start()
    try:
        os.kill(worker_of(moto), signal.SIGKILL)
        # A replacement would be an empty moto, its clients none the wiser: the process ends instead.
        assert moto._process.wait(30) != 0
    finally:
        moto.stop()


def _received(sqs, url):
    messages = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=5).get("Messages", [])
    return [json.loads(m["Body"]) for m in messages]


def test_a_killed_moto_is_started_again_with_its_data_and_its_wiring(tmp_path):
    moto = MotoProcess("127.0.0.1", free_port(), state_dir=tmp_path).start()
    try:
        s3, sqs, events = (boto3.client(service, endpoint_url=moto.url, region_name="us-east-1",
                                        aws_access_key_id="testing", aws_secret_access_key="testing")
                           for service in ("s3", "sqs", "events"))
        s3.create_bucket(Bucket="kept")
        s3.put_object(Bucket="kept", Key="k", Body=b"acknowledged")
        uploads, changes = (sqs.create_queue(QueueName=name)["QueueUrl"] for name in ("uploads", "changes"))
        arn = {url: sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
               for url in (uploads, changes)}
        s3.put_bucket_notification_configuration(Bucket="kept", NotificationConfiguration={"QueueConfigurations": [
            {"QueueArn": arn[uploads], "Events": ["s3:ObjectCreated:*"]}]})
        events.put_rule(Name="jobs", EventPattern=json.dumps({"source": ["aws.sagemaker"]}))
        events.put_targets(Rule="jobs", Targets=[{"Id": "q", "Arn": arn[changes]}, {"Id": "gone", "Arn": arn[uploads]}])
        events.remove_targets(Rule="jobs", Ids=["gone"])
        sqs.purge_queue(QueueUrl=uploads)  # the configuration's test event
        killed = moto.pid
        os.killpg(killed, signal.SIGKILL)  # a crash: gunicorn's master and its worker

        moto.back_within(60, killed=killed)  # a few seconds of connection errors, as with any outage
        assert s3.get_object(Bucket="kept", Key="k")["Body"].read() == b"acknowledged"
        # S3 still notifies its queue and EventBridge still routes to its target (and only to it).
        sqs.purge_queue(QueueUrl=uploads)  # the replayed configuration's test event
        s3.put_object(Bucket="kept", Key="after", Body=b"x")
        events.put_events(Entries=[{"Source": "aws.sagemaker", "DetailType": "d", "Detail": "{}"}])
        assert [r["s3"]["object"]["key"] for m in _received(sqs, uploads) for r in m.get("Records", [])] == ["after"]
        assert [m["source"] for m in _received(sqs, changes)] == ["aws.sagemaker"]
    finally:
        moto.stop()
