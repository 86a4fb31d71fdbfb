"""moto in its own process, as the stack runs it: serves, outlives a Ctrl-C, comes back when killed,
stops when told."""

from __future__ import annotations

import json
import os
import signal
import time

import boto3
from botocore.exceptions import ConnectionClosedError, EndpointConnectionError

from local_aws.moto_server import MotoProcess
from local_aws.ports import free_port


def test_serves_ignores_ctrl_c_and_stops():
    moto = MotoProcess("127.0.0.1", free_port()).start()
    try:
        s3 = boto3.client("s3", endpoint_url=moto.url, region_name="us-east-1", aws_access_key_id="testing",
                          aws_secret_access_key="testing")
        s3.create_bucket(Bucket="kept")
        # A terminal's Ctrl-C reaches the whole process group; only the stack may stop moto,
        # after what calls it.
        moto._process.send_signal(signal.SIGINT)
        time.sleep(0.5)
        assert moto._process.poll() is None
        assert [b["Name"] for b in s3.list_buckets()["Buckets"]] == ["kept"]
        process = moto._process
    finally:
        moto.stop()
    assert process.poll() is not None


def _until_back(call):
    """A few seconds of connection errors, as with any outage; then the answer."""
    deadline = time.monotonic() + 60
    while True:
        try:
            return call()
        except (EndpointConnectionError, ConnectionClosedError):
            assert time.monotonic() < deadline, "moto was not back within 60 s"
            time.sleep(0.2)


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
        os.kill(killed, signal.SIGKILL)

        assert _until_back(lambda: s3.get_object(Bucket="kept", Key="k"))["Body"].read() == b"acknowledged"
        assert moto.pid != killed
        # S3 still notifies its queue and EventBridge still routes to its target (and only to it).
        sqs.purge_queue(QueueUrl=uploads)  # the replayed configuration's test event
        s3.put_object(Bucket="kept", Key="after", Body=b"x")
        events.put_events(Entries=[{"Source": "aws.sagemaker", "DetailType": "d", "Detail": "{}"}])
        assert [r["s3"]["object"]["key"] for m in _received(sqs, uploads) for r in m.get("Records", [])] == ["after"]
        assert [m["source"] for m in _received(sqs, changes)] == ["aws.sagemaker"]
    finally:
        moto.stop()
