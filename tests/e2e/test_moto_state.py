"""moto's state through a restart: saved through the API, put back into a fresh moto."""

from __future__ import annotations

import json
import urllib.request

import boto3

from local_aws import moto_state

REGION = "us-east-1"


def test_snapshot_round_trip(moto_url, tmp_path):
    session = boto3.session.Session(region_name=REGION)
    s3, dynamodb, sqs = (session.client(s) for s in ("s3", "dynamodb", "sqs"))
    s3.create_bucket(Bucket="snap")
    s3.put_object(Bucket="snap", Key="incoming/a b+c.png", Body=b"\x89PNG...", ContentType="image/png",
                  Metadata={"origin": "test"})
    big = bytes(range(256)) * 40_000  # 10 MB: a multipart upload, like a model.tar.gz
    s3.upload_file(str(_write(tmp_path / "big.bin", big)), "snap", "models/model.tar.gz")
    etags = {o["Key"]: o["ETag"] for o in s3.list_objects_v2(Bucket="snap")["Contents"]}
    dynamodb.create_table(TableName="snap-table", BillingMode="PAY_PER_REQUEST",
                          AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"},
                                                {"AttributeName": "n", "AttributeType": "N"}],
                          KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
                          GlobalSecondaryIndexes=[{"IndexName": "by_n", "Projection": {"ProjectionType": "ALL"},
                                                   "KeySchema": [{"AttributeName": "n", "KeyType": "HASH"}]}])
    items = [{"pk": {"S": f"k{i}"}, "n": {"N": str(i)}, "blob": {"B": b"\x00\x01"}, "m": {"M": {"x": {"L": []}}}}
             for i in range(30)]
    for item in items:
        dynamodb.put_item(TableName="snap-table", Item=item)
    dlq = sqs.create_queue(QueueName="snap-dlq")["QueueUrl"]
    redrive = json.dumps({"deadLetterTargetArn": f"arn:aws:sqs:{REGION}:123456789012:snap-dlq", "maxReceiveCount": 3})
    queue = sqs.create_queue(QueueName="snap", Attributes={"VisibilityTimeout": "720", "RedrivePolicy": redrive})["QueueUrl"]
    sqs.send_message(QueueUrl=queue, MessageBody='{"Records": []}')
    held = sqs.receive_message(QueueUrl=queue)["Messages"][0]  # in flight: a stopping dispatcher releases it
    sqs.change_message_visibility(QueueUrl=queue, ReceiptHandle=held["ReceiptHandle"], VisibilityTimeout=0)

    figures = moto_state.save(session, tmp_path / "snap")
    assert figures == {"s3_fetched": 2, "dynamodb_items": 30, "sqs_messages": 1}
    urllib.request.urlopen(urllib.request.Request(f"{moto_url}/moto-api/reset", method="POST"))
    assert s3.list_buckets()["Buckets"] == []

    restored = moto_state.restore(session, tmp_path / "snap")
    assert restored == {"dynamodb_items": 30, "s3_objects": 2, "sqs_messages": 1}
    assert {o["Key"]: o["ETag"] for o in s3.list_objects_v2(Bucket="snap")["Contents"]} == etags
    head = s3.head_object(Bucket="snap", Key="incoming/a b+c.png")
    assert head["ContentType"] == "image/png" and head["Metadata"] == {"origin": "test"}
    assert s3.get_object(Bucket="snap", Key="models/model.tar.gz")["Body"].read() == big
    scanned = dynamodb.scan(TableName="snap-table")["Items"]
    assert sorted(scanned, key=lambda i: int(i["n"]["N"])) == items
    assert dynamodb.query(TableName="snap-table", IndexName="by_n", KeyConditionExpression="n = :n",
                          ExpressionAttributeValues={":n": {"N": "7"}})["Count"] == 1
    queue = sqs.get_queue_url(QueueName="snap")["QueueUrl"]
    attributes = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["All"])["Attributes"]
    assert attributes["VisibilityTimeout"] == "720" and json.loads(attributes["RedrivePolicy"])["maxReceiveCount"] == 3
    assert [m["Body"] for m in sqs.receive_message(QueueUrl=queue)["Messages"]] == ['{"Records": []}']

    # Incremental: a second snapshot fetches only what changed.
    s3.put_object(Bucket="snap", Key="incoming/new.png", Body=b"new")
    assert moto_state.save(session, tmp_path / "snap", queues=False)["s3_fetched"] == 1


def _write(path, data):
    path.write_bytes(data)
    return path
