"""Every write moto acknowledges is on disk before its answer leaves: a WSGI middleware.

Around moto's application, in moto's process (where its backends are), each request
notes what it may have changed; before the answer goes back, the current state of
exactly those things (their post-image, read from moto's backends) is committed to the
`MotoStore` in one transaction. Recording state rather than requests means a restart
re-sends no S3 events and needs no receipt handles to match.

What a request may change is read from the request itself, for S3 (the bucket and key
of a PUT, POST or DELETE; the keys a multi-object delete reports deleted) and DynamoDB
(the keys of PutItem, UpdateItem, DeleteItem, BatchWriteItem, TransactWriteItems; the
table of CreateTable, UpdateTable, DeleteTable, UpdateTimeToLive), and from moto's SQS
models for SQS (`make_sqs_durable`): messages arrive there from S3 notifications and
EventBridge targets as well as from SendMessage, and leave on delete, purge or redrive.

Covered: buckets, each key's latest version (body, ETag, metadata, storage class), tables
(schema, indexes, TTL) and items, queues (attributes) and messages (body, attributes,
group and deduplication ids), and as the requests that set them, bucket configurations
(notifications, lifecycle, encryption...) and EventBridge rules and targets
(`local_aws.moto_configuration`). Not covered: object versions and tags, message receive counts (a message in
flight at a crash is visible again after the restart, as SQS promises: at least once).
S3 requests are expected path-style (http://host:port/bucket/key), as boto3 sends them
to an endpoint URL.
"""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs
from xml.etree import ElementTree

from moto.dynamodb.models import dynamodb_backends
from moto.dynamodb.models.dynamo_type import DynamoType
from moto.iam.models import get_account_id_from
from moto.s3.models import FakeKey, s3_backends
from moto.sqs.models import Message, Queue, SQSBackend, sqs_backends

from . import moto_configuration
from .moto_store import Change, MotoStore, StoredObject, item_key
from .patching import Patches

_DYNAMODB_TABLE_OPERATIONS = ("CreateTable", "UpdateTable", "DeleteTable", "UpdateTimeToLive")
# Read-only or computed queue attributes; the rest is what creates the queue again.
_QUEUE_COMPUTED = ("ApproximateNumberOfMessages", "ApproximateNumberOfMessagesDelayed",
                   "ApproximateNumberOfMessagesNotVisible", "CreatedTimestamp", "LastModifiedTimestamp", "QueueArn")


@dataclass
class _Touched:
    """What one request may have changed (read back from moto when it ends)."""

    buckets: set[tuple[str, str]] = field(default_factory=set)
    objects: set[tuple[str, str, str]] = field(default_factory=set)
    tables: set[tuple[str, str, str]] = field(default_factory=set)
    items: dict[tuple[str, str, str, str], dict[str, Any]] = field(default_factory=dict)  # -> the key
    queues: set[tuple[str, str, str]] = field(default_factory=set)
    messages: dict[str, tuple[Queue, Message] | None] = field(default_factory=dict)
    purged: set[tuple[str, str, str]] = field(default_factory=set)
    configuration: moto_configuration.Changes = field(default_factory=list)


def _scope(environ: dict[str, Any]) -> tuple[str, str, str] | None:
    """(account, region, service) from a SigV4 request's credential scope."""
    credential = environ.get("HTTP_AUTHORIZATION", "").partition("Credential=")[2].split(",")[0]
    if not credential:
        credential = parse_qs(environ.get("QUERY_STRING", "")).get("X-Amz-Credential", [""])[0]
    parts = credential.split("/")
    if len(parts) != 5:
        return None
    access_key, _, region, service, _ = parts
    return get_account_id_from(access_key), region, service


class WriteThrough:
    """`WriteThrough(app, store)` is a WSGI application; `install(patches)` hooks moto's SQS models."""

    def __init__(self, app: Callable, store: MotoStore) -> None:
        self._app = app
        self._store = store
        self._current = threading.local()

    def __call__(self, environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        scope = _scope(environ)
        body = b""
        configures = bool(scope) and moto_configuration.sets_configuration(scope, environ)
        if scope and (scope[2] == "dynamodb" or configures):  # small: read here, given to moto as it came
            body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
            environ["wsgi.input"] = io.BytesIO(body)
        touched = self._current.touched = _Touched()
        try:
            status, headers, exc_info, content = self._call(environ)
            if scope and status[:1] == "2":
                if scope[2] == "s3":
                    _touch_s3(touched, scope[0], environ, content)
                elif scope[2] == "dynamodb":
                    _touch_dynamodb(touched, scope[0], scope[1], environ.get("HTTP_X_AMZ_TARGET", ""), body)
                if configures:
                    touched.configuration += moto_configuration.changes(scope, environ, body)
        finally:
            self._current.touched = None
            self._commit(touched)  # whatever happened: what moto's models changed is stored
        start_response(status, headers, exc_info)
        return [content]

    def _call(self, environ: dict[str, Any]) -> tuple[str, list[tuple[str, str]], Any, bytes]:
        """moto's whole answer, held back until its changes are stored."""
        started: list[Any] = []
        written: list[bytes] = []

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable:
            started[:] = [status, headers, exc_info]
            return written.append

        result = self._app(environ, start_response)
        try:
            written.extend(result)
        finally:
            if hasattr(result, "close"):
                result.close()
        return started[0], started[1], started[2], b"".join(written)

    def _commit(self, touched: _Touched) -> None:
        with self._store.lock:  # read and written under one lock: the last commit holds the latest state
            self._store.commit(_post_images(touched))

    # --- SQS, from moto's models ----------------------------------------------------------

    def _touched(self) -> tuple[_Touched, bool]:
        """This request's record, or a fresh one to commit now (a change made outside a request)."""
        touched = getattr(self._current, "touched", None)
        return (touched, False) if touched is not None else (_Touched(), True)

    def _note(self, change: Callable[[_Touched], None]) -> None:
        touched, alone = self._touched()
        change(touched)
        if alone:
            self._commit(touched)

    def install(self, patches: Patches) -> None:
        """Hook moto's SQS models (recorded in `patches`) so every message change is noted."""
        add_message, delete_message = Queue.add_message, Queue.delete_message
        create_queue, set_attributes = SQSBackend.create_queue, SQSBackend.set_queue_attributes
        delete_queue, purge_queue = SQSBackend.delete_queue, SQSBackend.purge_queue
        note = self._note

        def added(queue: Queue, message: Message) -> None:
            add_message(queue, message)
            # A FIFO queue drops a duplicate; everything else is appended.
            if not queue.fifo_queue or any(m is message for m in queue._messages):
                note(lambda t: t.messages.__setitem__(message.id, (queue, message)))

        def deleted(queue: Queue, receipt_handle: str) -> None:
            before = [m.id for m in queue._messages if m.had_receipt_handle(receipt_handle)]
            delete_message(queue, receipt_handle)
            note(lambda t: t.messages.update(dict.fromkeys(before)))

        def queue_changed(method: Callable) -> Callable:
            def changed(backend: SQSBackend, name: str, *args: Any, **kwargs: Any) -> Any:
                result = method(backend, name, *args, **kwargs)
                note(lambda t: t.queues.add((backend.account_id, backend.region_name, name)))
                return result
            return changed

        def purged(backend: SQSBackend, name: str) -> None:
            purge_queue(backend, name)
            note(lambda t: t.purged.add((backend.account_id, backend.region_name, name)))

        patches.replace(Queue, "add_message", added)
        patches.replace(Queue, "delete_message", deleted)
        patches.replace(SQSBackend, "create_queue", queue_changed(create_queue))
        patches.replace(SQSBackend, "set_queue_attributes", queue_changed(set_attributes))
        patches.replace(SQSBackend, "delete_queue", queue_changed(delete_queue))
        patches.replace(SQSBackend, "purge_queue", purged)


# ---------------------------------------------------------------------------- what a request touched

def _touch_s3(touched: _Touched, account: str, environ: dict[str, Any], content: bytes) -> None:
    method = environ["REQUEST_METHOD"]
    if method not in ("PUT", "POST", "DELETE"):
        return
    # WSGI gives the path's bytes as latin-1 text.
    path = environ.get("PATH_INFO", "").encode("latin-1").decode("utf-8")
    bucket, _, key = path.lstrip("/").partition("/")
    query = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
    if not bucket:
        return
    if not key:
        if method == "POST" and "delete" in query:  # DeleteObjects: the answer lists what went
            for element in ElementTree.fromstring(content).iter():
                if element.tag.endswith("Deleted"):
                    name = next((e.text for e in element if e.tag.endswith("Key")), None)
                    if name is not None:
                        touched.objects.add((account, bucket, name))
        elif not query:  # CreateBucket, DeleteBucket
            touched.buckets.add((account, bucket))
        return
    if "uploads" in query or ("uploadId" in query and method != "POST"):
        return  # a multipart upload's start, parts or abort: the key changes on completion only
    touched.objects.add((account, bucket, key))


def _touch_dynamodb(touched: _Touched, account: str, region: str, target: str, body: bytes) -> None:
    operation = target.rpartition(".")[2]
    request = json.loads(body or b"{}")
    if operation in _DYNAMODB_TABLE_OPERATIONS:
        touched.tables.add((account, region, request["TableName"]))
        return
    writes: list[tuple[str, dict[str, Any]]] = []  # (table, key or whole item)
    if operation == "PutItem":
        writes.append((request["TableName"], request["Item"]))
    elif operation in ("UpdateItem", "DeleteItem"):
        writes.append((request["TableName"], request["Key"]))
    elif operation == "BatchWriteItem":
        for table, requests in request["RequestItems"].items():
            for entry in requests:
                writes.append((table, entry["PutRequest"]["Item"] if "PutRequest" in entry
                               else entry["DeleteRequest"]["Key"]))
    elif operation == "TransactWriteItems":
        for entry in request["TransactItems"]:
            kind, action = next(iter(entry.items()))
            if kind != "ConditionCheck":
                writes.append((action["TableName"], action.get("Item") or action["Key"]))
    backend = dynamodb_backends[account][region]
    for table_name, attributes in writes:
        table = backend.tables.get(table_name)
        if table is None:
            continue
        names = [table.hash_key_attr] + ([table.range_key_attr] if table.range_key_attr else [])
        key = {name: attributes[name] for name in names}
        touched.items[(account, region, table_name, item_key(key))] = key


# ---------------------------------------------------------------------------- their state now

def _post_images(touched: _Touched) -> Change:
    change = Change()
    for account, name in touched.buckets:
        bucket = s3_backends[account]["global"].buckets.get(name)
        change.buckets[account, name] = bucket.region_name if bucket else None
    for account, bucket_name, key_name in touched.objects:
        bucket = s3_backends[account]["global"].buckets.get(bucket_name)
        key = bucket.keys.get(key_name) if bucket else None
        change.objects[account, bucket_name, key_name] = StoredObject(
            key.value, key.etag.strip('"'), dict(key.metadata), key.storage_class) if isinstance(key, FakeKey) else None
    for account, region, name in touched.tables:
        table = dynamodb_backends[account][region].tables.get(name)
        change.tables[account, region, name] = table_definition(table) if table else None
    for (account, region, name, text), key in touched.items.items():
        backend = dynamodb_backends[account][region]
        item = backend.get_item(name, key) if name in backend.tables else None
        change.items[account, region, name, text] = {k: _typed(v) for k, v in item.attrs.items()} if item else None
    for account, region, name in touched.queues:
        queue = sqs_backends[account][region].queues.get(name)
        change.queues[account, region, name] = {
            k: v for k, v in queue.attributes.items() if k not in _QUEUE_COMPUTED and v is not None
        } if queue else None
    change.purged = touched.purged
    change.configuration = touched.configuration
    for message_id, placed in touched.messages.items():
        if placed is None:
            change.messages[message_id] = None
            continue
        queue, message = placed
        # Gone from that queue since (deleted, or redriven to its dead-letter queue): whatever
        # removed it records that itself, committed after it happened.
        if any(m is message for m in queue._messages):
            change.messages[message_id] = (queue.account_id, queue.region, queue.name, message_state(message))
    return change


def _typed(value: DynamoType) -> dict[str, Any]:
    """A DynamoDB value as PutItem takes it ({type: value}, nested), its binaries as moto holds them."""
    if value.is_list():
        return {"L": [_typed(v) for v in value.value]}
    if value.is_map():
        return {"M": {k: _typed(v) for k, v in value.value.items()}}
    return {value.type: value.value}


def table_definition(table: Any) -> dict[str, Any]:
    """What moto's `create_table` takes to make the table again, and its TTL."""
    def index(description: dict[str, Any]) -> dict[str, Any]:
        return {k: description[k] for k in ("IndexName", "KeySchema", "Projection") if k in description}

    return {"schema": table.schema, "attr": table.attr, "throughput": table.throughput,
            "global_indexes": [index(i.describe()) for i in table.global_indexes],
            "indexes": [index(i.describe()) for i in table.indexes], "billing_mode": table.billing_mode,
            "streams": table.stream_specification, "sse_specification": table.sse_specification,
            "deletion_protection_enabled": table.deletion_protection_enabled, "ttl": table.ttl}


def message_state(message: Message) -> dict[str, Any]:
    return {"body": message.body, "message_attributes": message.message_attributes,
            "system_attributes": message.system_attributes, "sent_timestamp": message.sent_timestamp,
            "group_id": message.group_id, "deduplication_id": message.deduplication_id,
            "sequence_number": message.sequence_number}
