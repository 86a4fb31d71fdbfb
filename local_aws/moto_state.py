"""moto's state kept across a restart of the stack, as a snapshot taken through the AWS API.

moto 5.2 keeps everything in memory. Its request recorder can replay a session, but
replaying re-sends S3 events, every poll and every model upload, so instead the
stack saves what the pipeline owns, through the same API any client uses:

- S3: every object of every bucket (body, content type, metadata), incrementally:
  an object whose ETag is unchanged since the last snapshot is not fetched again;
- DynamoDB: every table's key schema, indexes, TTL and items (typed, exactly);
- SQS: every queue's attributes and the messages still in it (the dispatcher makes
  the messages it holds visible before the snapshot). A message's receive count
  starts again from zero after a restart.

`restore` runs on a fresh moto before the bucket notifications are configured, so
putting the objects back sends no S3 events. EventBridge rules are not saved: the
dispatcher derives them from the app on every start.

Layout of the snapshot directory: `s3/index.json` + `s3/objects/<sha256 of bucket/key>`,
`dynamodb/<table>.json`, `sqs/queues.json`. Each file is written to a temporary name
and renamed, so an interrupted snapshot leaves the previous one readable.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from boto3.s3.transfer import TransferConfig

# Whole files, as the uploaders did: a multipart upload's ETag depends on its part size,
# and boto3's default is what every writer here (SageMaker, the handlers) used.
_TRANSFER = TransferConfig()
_SQS_SAVED_ATTRIBUTES = ("DelaySeconds", "MaximumMessageSize", "MessageRetentionPeriod",
                         "ReceiveMessageWaitTimeSeconds", "VisibilityTimeout", "RedrivePolicy")


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_text(json.dumps(data))
    os.replace(temporary, path)


def _object_file(bucket: str, key: str) -> str:
    return hashlib.sha256(f"{bucket}/{key}".encode()).hexdigest()


# ---------------------------------------------------------------------------- S3

def save_s3(s3: Any, directory: Path) -> int:
    """Save every object; returns how many were fetched (unchanged ones are kept from before)."""
    index_path, objects = directory / "index.json", directory / "objects"
    objects.mkdir(parents=True, exist_ok=True)
    previous = json.loads(index_path.read_text()) if index_path.exists() else {}
    index: dict[str, dict[str, dict[str, Any]]] = {}
    fetched = 0
    for bucket in (b["Name"] for b in s3.list_buckets().get("Buckets", [])):
        index[bucket] = {}
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for item in page.get("Contents", []):
                key, etag = item["Key"], item["ETag"]
                entry = previous.get(bucket, {}).get(key)
                name = _object_file(bucket, key)
                if not (entry and entry["etag"] == etag and (objects / name).exists()):
                    head = s3.head_object(Bucket=bucket, Key=key)
                    s3.download_file(bucket, key, str(objects / f"{name}.tmp"), Config=_TRANSFER)
                    os.replace(objects / f"{name}.tmp", objects / name)
                    entry = {"etag": etag, "content_type": head.get("ContentType"),
                             "metadata": head.get("Metadata", {})}
                    fetched += 1
                index[bucket][key] = {**entry, "file": name}
    _write_json(index_path, index)
    kept = {entry["file"] for keys in index.values() for entry in keys.values()}
    for path in objects.iterdir():
        if path.name not in kept:
            path.unlink()
    return fetched


def restore_s3(s3: Any, directory: Path) -> int:
    index_path = directory / "index.json"
    if not index_path.exists():
        return 0
    count = 0
    for bucket, keys in json.loads(index_path.read_text()).items():
        s3.create_bucket(Bucket=bucket)
        for key, entry in keys.items():
            extra = {"Metadata": entry.get("metadata") or {}}
            if entry.get("content_type"):
                extra["ContentType"] = entry["content_type"]
            s3.upload_file(str(directory / "objects" / entry["file"]), bucket, key, ExtraArgs=extra,
                           Config=_TRANSFER)
            count += 1
    return count


# ---------------------------------------------------------------------------- DynamoDB

def _binary(value: dict[str, Any], convert) -> dict[str, Any]:
    """A typed DynamoDB value with its binaries converted (bytes <-> base64 text for JSON)."""
    (kind, inner), = value.items()
    if kind == "B":
        return {kind: convert(inner)}
    if kind == "BS":
        return {kind: [convert(v) for v in inner]}
    if kind == "M":
        return {kind: {k: _binary(v, convert) for k, v in inner.items()}}
    if kind == "L":
        return {kind: [_binary(v, convert) for v in inner]}
    return value


def _item_to_json(item: dict[str, Any]) -> dict[str, Any]:
    return {k: _binary(v, lambda b: base64.b64encode(b).decode("ascii")) for k, v in item.items()}


def _item_from_json(item: dict[str, Any]) -> dict[str, Any]:
    return {k: _binary(v, base64.b64decode) for k, v in item.items()}


def _table_request(description: dict[str, Any]) -> dict[str, Any]:
    request = {"TableName": description["TableName"], "KeySchema": description["KeySchema"],
               "AttributeDefinitions": description["AttributeDefinitions"], "BillingMode": "PAY_PER_REQUEST"}
    indexes = [{"IndexName": i["IndexName"], "KeySchema": i["KeySchema"], "Projection": i["Projection"]}
               for i in description.get("GlobalSecondaryIndexes", [])]
    if indexes:
        request["GlobalSecondaryIndexes"] = indexes
    return request


def save_dynamodb(dynamodb: Any, directory: Path) -> int:
    count = 0
    saved = set()
    for page in dynamodb.get_paginator("list_tables").paginate():
        for name in page["TableNames"]:
            description = dynamodb.describe_table(TableName=name)["Table"]
            ttl = dynamodb.describe_time_to_live(TableName=name).get("TimeToLiveDescription", {})
            items = [_item_to_json(item) for scan in dynamodb.get_paginator("scan").paginate(TableName=name)
                     for item in scan.get("Items", [])]
            _write_json(directory / f"{name}.json", {"request": _table_request(description), "ttl": ttl,
                                                     "items": items})
            saved.add(f"{name}.json")
            count += len(items)
    for path in directory.glob("*.json"):
        if path.name not in saved:
            path.unlink()
    return count


def restore_dynamodb(dynamodb: Any, directory: Path) -> int:
    count = 0
    for path in sorted(directory.glob("*.json")) if directory.exists() else []:
        table = json.loads(path.read_text())
        name = table["request"]["TableName"]
        dynamodb.create_table(**table["request"])
        if table["ttl"].get("TimeToLiveStatus") == "ENABLED":
            dynamodb.update_time_to_live(TableName=name, TimeToLiveSpecification={
                "AttributeName": table["ttl"]["AttributeName"], "Enabled": True})
        items = [_item_from_json(item) for item in table["items"]]
        for start in range(0, len(items), 25):
            pending = {name: [{"PutRequest": {"Item": item}} for item in items[start:start + 25]]}
            while pending:
                pending = dynamodb.batch_write_item(RequestItems=pending).get("UnprocessedItems") or None
        count += len(items)
    return count


# ---------------------------------------------------------------------------- SQS

def save_sqs(sqs: Any, directory: Path) -> int:
    """Drain every queue into the snapshot (the stack is stopping: nothing consumes them any more)."""
    queues = []
    for url in sqs.list_queues().get("QueueUrls", []):
        attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
        queues.append((url, attributes))
    # Source queues before their dead-letter queues: a receive may redrive a message there.
    queues.sort(key=lambda q: "RedrivePolicy" not in q[1])
    saved, count = [], 0
    for url, attributes in queues:
        messages = []
        while batch := sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=600,
                                           WaitTimeSeconds=0, MessageAttributeNames=["All"]).get("Messages"):
            messages.extend({"Body": m["Body"], "MessageAttributes": m.get("MessageAttributes", {})}
                            for m in batch)
        saved.append({"name": url.rsplit("/", 1)[-1],
                      "attributes": {k: attributes[k] for k in _SQS_SAVED_ATTRIBUTES if k in attributes},
                      "messages": messages})
        count += len(messages)
    _write_json(directory / "queues.json", saved)
    return count


def restore_sqs(sqs: Any, directory: Path) -> int:
    path = directory / "queues.json"
    if not path.exists():
        return 0
    queues = json.loads(path.read_text())
    queues.sort(key=lambda q: "RedrivePolicy" in q["attributes"])  # dead-letter queues first
    count = 0
    for queue in queues:
        url = sqs.create_queue(QueueName=queue["name"])["QueueUrl"]
        if queue["attributes"]:
            sqs.set_queue_attributes(QueueUrl=url, Attributes=queue["attributes"])
        for start in range(0, len(queue["messages"]), 10):
            chunk = queue["messages"][start:start + 10]
            sqs.send_message_batch(QueueUrl=url, Entries=[
                {"Id": str(i), "MessageBody": m["Body"],
                 **({"MessageAttributes": m["MessageAttributes"]} if m["MessageAttributes"] else {})}
                for i, m in enumerate(chunk)])
        count += len(queue["messages"])
    return count


# ---------------------------------------------------------------------------- all of it

def save(session: Any, directory: Path, *, queues: bool = True) -> dict[str, int]:
    """Save S3 and DynamoDB (and, when the stack stops, the queues' messages)."""
    figures = {"s3_fetched": save_s3(session.client("s3"), directory / "s3"),
               "dynamodb_items": save_dynamodb(session.client("dynamodb"), directory / "dynamodb")}
    if queues:
        figures["sqs_messages"] = save_sqs(session.client("sqs"), directory / "sqs")
    return figures


def restore(session: Any, directory: Path) -> dict[str, int]:
    """Put a snapshot back into a fresh moto (before notifications are configured)."""
    return {"dynamodb_items": restore_dynamodb(session.client("dynamodb"), directory / "dynamodb"),
            "s3_objects": restore_s3(session.client("s3"), directory / "s3"),
            "sqs_messages": restore_sqs(session.client("sqs"), directory / "sqs")}
