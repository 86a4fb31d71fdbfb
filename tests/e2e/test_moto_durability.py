"""moto in its own process with a state directory: whatever it acknowledged is there after a SIGKILL."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus

import boto3
import pytest

from local_aws.moto_server import MotoProcess
from local_aws.ports import free_port

REGION = "us-east-1"
ACCOUNT = "123456789012"


class Moto:
    """Durable moto processes on one state directory, each killed (SIGKILL) or stopped in turn."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.port = free_port()  # the same for every process: queue URLs stay valid
        self.process: MotoProcess | None = None

    def start(self) -> MotoProcess:
        self.process = MotoProcess("127.0.0.1", self.port, state_dir=self.state_dir).start()
        return self.process

    def kill(self) -> None:
        """SIGKILL moto's process group (gunicorn's master and worker), as its owner's death does."""
        assert self.process is not None and self.process._process is not None
        os.killpg(self.process._process.pid, signal.SIGKILL)
        self.process._process.wait()
        self.process = None

    def worker(self) -> int:
        """The pid of gunicorn's worker, the master's one child."""
        assert self.process is not None and self.process._process is not None
        pid = self.process._process.pid
        (child,) = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        return int(child)

    def client(self, service: str) -> Any:
        assert self.process is not None
        return boto3.client(service, endpoint_url=self.process.url, region_name=REGION, aws_access_key_id="testing",
                            aws_secret_access_key="testing")


@pytest.fixture
def moto(tmp_path) -> Iterator[Moto]:
    moto = Moto(tmp_path / "moto")
    yield moto
    if moto.process is not None:
        moto.process.stop()


def _table(dynamodb: Any, name: str) -> None:
    dynamodb.create_table(TableName=name, BillingMode="PAY_PER_REQUEST",
                          AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"},
                                                {"AttributeName": "n", "AttributeType": "N"}],
                          KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
                          GlobalSecondaryIndexes=[{"IndexName": "by_n", "Projection": {"ProjectionType": "ALL"},
                                                   "KeySchema": [{"AttributeName": "n", "KeyType": "HASH"}]}])


def test_every_acknowledged_write_survives_a_sigkill(moto, tmp_path):
    moto.start()
    s3, dynamodb, sqs = moto.client("s3"), moto.client("dynamodb"), moto.client("sqs")
    # SQS: a queue with a dead-letter queue, a message held by a consumer (in flight), one deleted.
    dlq = sqs.create_queue(QueueName="jobs-dlq")["QueueUrl"]
    redrive = json.dumps({"deadLetterTargetArn": f"arn:aws:sqs:{REGION}:{ACCOUNT}:jobs-dlq", "maxReceiveCount": 3})
    queue = sqs.create_queue(QueueName="jobs", Attributes={"VisibilityTimeout": "720",
                                                          "RedrivePolicy": redrive})["QueueUrl"]
    sqs.send_message(QueueUrl=queue, MessageBody="held", MessageAttributes={
        "kind": {"DataType": "String", "StringValue": "k"}})
    held = sqs.receive_message(QueueUrl=queue, MessageAttributeNames=["All"])["Messages"][0]
    sqs.send_message(QueueUrl=queue, MessageBody="done")
    done = sqs.receive_message(QueueUrl=queue)["Messages"][0]
    sqs.delete_message(QueueUrl=queue, ReceiptHandle=done["ReceiptHandle"])
    sqs.send_message(QueueUrl=queue, MessageBody="waiting")
    events = sqs.create_queue(QueueName="events")["QueueUrl"]
    # S3: objects (metadata, an awkward key, a multipart upload, a copy); one PUT notifies a queue.
    s3.create_bucket(Bucket="data")
    s3.put_bucket_notification_configuration(Bucket="data", NotificationConfiguration={"QueueConfigurations": [{
        "QueueArn": f"arn:aws:sqs:{REGION}:{ACCOUNT}:events", "Events": ["s3:ObjectCreated:*"],
        "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": "incoming/"}]}}}]})
    s3.put_object(Bucket="data", Key="incoming/a b+c.png", Body=b"\x89PNG...", ContentType="image/png",
                  Metadata={"origin": "test"})
    big = bytes(range(256)) * 40_000  # 10 MB: a multipart upload, like a model.tar.gz
    (tmp_path / "big.bin").write_bytes(big)
    s3.upload_file(str(tmp_path / "big.bin"), "data", "models/model.tar.gz")
    s3.copy_object(Bucket="data", Key="copies/a.png", CopySource={"Bucket": "data", "Key": "incoming/a b+c.png"})
    for i in range(50):
        s3.put_object(Bucket="data", Key=f"training/{i}.png", Body=f"image {i}".encode())
    objects = {o["Key"]: o["ETag"] for o in s3.list_objects_v2(Bucket="data")["Contents"]}
    # DynamoDB: put, update, batch and transaction writes; a TTL.
    _table(dynamodb, "items")
    dynamodb.update_time_to_live(TableName="items", TimeToLiveSpecification={"AttributeName": "expires",
                                                                              "Enabled": True})
    for i in range(10):
        dynamodb.put_item(TableName="items", Item={"pk": {"S": f"k{i}"}, "n": {"N": str(i)},
                                                   "blob": {"B": b"\x00\x01"}, "m": {"M": {"x": {"L": []}}}})
    dynamodb.update_item(TableName="items", Key={"pk": {"S": "k0"}}, UpdateExpression="SET tag = :t",
                         ExpressionAttributeValues={":t": {"S": "updated"}})
    dynamodb.batch_write_item(RequestItems={"items": [{"PutRequest": {"Item": {"pk": {"S": "b"}, "n": {"N": "100"}}}}]})
    dynamodb.transact_write_items(TransactItems=[
        {"Put": {"TableName": "items", "Item": {"pk": {"S": "t"}, "n": {"N": "200"}}}},
        {"Update": {"TableName": "items", "Key": {"pk": {"S": "k1"}}, "UpdateExpression": "SET tag = :t",
                    "ExpressionAttributeValues": {":t": {"S": "in a transaction"}}}}])
    items = sorted(dynamodb.scan(TableName="items")["Items"], key=lambda i: i["pk"]["S"])

    moto.kill()  # right after the last acknowledgement
    moto.start()
    s3, dynamodb, sqs = moto.client("s3"), moto.client("dynamodb"), moto.client("sqs")

    # Messages: held, waiting, the PUT's notification and the notification configuration's test event.
    assert moto.process.restored == {"s3_objects": 53, "dynamodb_items": 12, "sqs_messages": 4}
    assert {o["Key"]: o["ETag"] for o in s3.list_objects_v2(Bucket="data")["Contents"]} == objects
    head = s3.head_object(Bucket="data", Key="incoming/a b+c.png")
    assert head["ContentType"] == "image/png" and head["Metadata"] == {"origin": "test"}
    assert s3.get_object(Bucket="data", Key="models/model.tar.gz")["Body"].read() == big
    assert s3.get_object(Bucket="data", Key="training/7.png")["Body"].read() == b"image 7"
    assert sorted(dynamodb.scan(TableName="items")["Items"], key=lambda i: i["pk"]["S"]) == items
    assert dynamodb.query(TableName="items", IndexName="by_n", KeyConditionExpression="n = :n",
                          ExpressionAttributeValues={":n": {"N": "7"}})["Count"] == 1
    assert dynamodb.describe_time_to_live(TableName="items")["TimeToLiveDescription"] == {
        "AttributeName": "expires", "TimeToLiveStatus": "ENABLED"}
    attributes = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["All"])["Attributes"]
    assert attributes["VisibilityTimeout"] == "720" and json.loads(attributes["RedrivePolicy"])["maxReceiveCount"] == 3
    # The held message is visible again (at least once), with its ID and attributes; the deleted one is gone.
    received = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10, MessageAttributeNames=["All"])["Messages"]
    assert sorted(m["Body"] for m in received) == ["held", "waiting"]
    again = next(m for m in received if m["Body"] == "held")
    assert again["MessageId"] == held["MessageId"] and again["MessageAttributes"] == held["MessageAttributes"]
    # The PUT's notification survived, and putting objects back sent none.
    notified = sqs.receive_message(QueueUrl=events, MaxNumberOfMessages=10)["Messages"]
    assert [unquote_plus(json.loads(m["Body"])["Records"][0]["s3"]["object"]["key"]) for m in notified
            if "Records" in json.loads(m["Body"])] == ["incoming/a b+c.png"]
    assert sqs.get_queue_url(QueueName="jobs-dlq")["QueueUrl"] == dlq


def test_deletes_survive_a_sigkill(moto):
    moto.start()
    s3, dynamodb, sqs = moto.client("s3"), moto.client("dynamodb"), moto.client("sqs")
    s3.create_bucket(Bucket="data")
    s3.create_bucket(Bucket="gone")
    for name in ("kept", "deleted", "batch-1", "batch-2"):
        s3.put_object(Bucket="data", Key=name, Body=name.encode())
    s3.put_object(Bucket="data", Key="same-body", Body=b"kept")  # one body file for two keys
    s3.delete_object(Bucket="data", Key="deleted")
    s3.delete_objects(Bucket="data", Delete={"Objects": [{"Key": "batch-1"}, {"Key": "batch-2"}]})
    s3.delete_bucket(Bucket="gone")
    _table(dynamodb, "items")
    _table(dynamodb, "dropped")
    for key in ("kept", "deleted", "batch", "transaction"):
        dynamodb.put_item(TableName="items", Item={"pk": {"S": key}, "n": {"N": "1"}})
    dynamodb.delete_item(TableName="items", Key={"pk": {"S": "deleted"}})
    dynamodb.batch_write_item(RequestItems={"items": [{"DeleteRequest": {"Key": {"pk": {"S": "batch"}}}}]})
    dynamodb.transact_write_items(TransactItems=[{"Delete": {"TableName": "items",
                                                             "Key": {"pk": {"S": "transaction"}}}}])
    dynamodb.delete_table(TableName="dropped")
    queue = sqs.create_queue(QueueName="jobs")["QueueUrl"]
    purged = sqs.create_queue(QueueName="purged")["QueueUrl"]
    sqs.send_message(QueueUrl=purged, MessageBody="purged")
    sqs.purge_queue(QueueUrl=purged)
    sqs.send_message_batch(QueueUrl=queue, Entries=[{"Id": str(i), "MessageBody": f"m{i}"} for i in range(3)])
    received = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10)["Messages"]
    sqs.delete_message_batch(QueueUrl=queue, Entries=[{"Id": m["MessageId"], "ReceiptHandle": m["ReceiptHandle"]}
                                                      for m in received if m["Body"] != "m1"])
    sqs.delete_queue(QueueUrl=sqs.create_queue(QueueName="dropped")["QueueUrl"])

    moto.kill()
    moto.start()
    s3, dynamodb, sqs = moto.client("s3"), moto.client("dynamodb"), moto.client("sqs")

    assert [b["Name"] for b in s3.list_buckets()["Buckets"]] == ["data"]
    assert sorted(o["Key"] for o in s3.list_objects_v2(Bucket="data")["Contents"]) == ["kept", "same-body"]
    assert len(list((moto.state_dir / "objects").iterdir())) == 1  # no body left behind
    assert [i["pk"]["S"] for i in dynamodb.scan(TableName="items")["Items"]] == ["kept"]
    assert dynamodb.list_tables()["TableNames"] == ["items"]
    assert sorted(u.rsplit("/", 1)[1] for u in sqs.list_queues()["QueueUrls"]) == ["jobs", "purged"]
    assert [m["Body"] for m in sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10)["Messages"]] == ["m1"]
    assert "Messages" not in sqs.receive_message(QueueUrl=purged)


def test_a_worker_that_dies_is_replaced_by_one_with_the_state(moto):
    moto.start()
    s3, sqs = moto.client("s3"), moto.client("sqs")
    s3.create_bucket(Bucket="data")
    s3.put_object(Bucket="data", Key="kept", Body=b"kept")
    queue = sqs.create_queue(QueueName="jobs")["QueueUrl"]
    sqs.send_message(QueueUrl=queue, MessageBody="waiting")
    first = moto.worker()

    os.kill(first, signal.SIGKILL)  # the master stays, and its port: requests wait for the replacement

    assert s3.get_object(Bucket="data", Key="kept")["Body"].read() == b"kept"
    assert [m["Body"] for m in sqs.receive_message(QueueUrl=queue)["Messages"]] == ["waiting"]
    assert moto.worker() != first
    assert json.loads((moto.state_dir / "restored.json").read_text()) == {
        "s3_objects": 1, "dynamodb_items": 0, "sqs_messages": 1}
