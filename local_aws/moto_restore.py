"""A `MotoStore` put back into moto's backends, in moto's process, before it serves.

Straight into the backends, not through the API: no request parsing per object (10,000
objects in seconds), and no S3 notification is sent (`disable_notification`; the restored
buckets have no notification configuration yet anyway). Messages keep their IDs and their
order, and are visible at once: whatever was in flight at the crash is delivered again.
"""

from __future__ import annotations

from typing import Any

from moto.dynamodb.models import dynamodb_backends
from moto.s3.models import s3_backends
from moto.sqs.models import Message, sqs_backends

from .moto_store import MotoStore


def restore(store: MotoStore) -> dict[str, int]:
    """Fill moto's (empty) backends from the store; returns how many of each came back."""
    store.sweep()
    figures = {"s3_objects": 0, "dynamodb_items": 0, "sqs_messages": 0}
    for account, name, region in store.buckets():
        s3_backends[account]["global"].create_bucket(name, region)
    for account, bucket, key, stored in store.stored_objects():
        restored = s3_backends[account]["global"].put_object(bucket, key, stored.body, storage=stored.storage,
                                                             etag=stored.etag, disable_notification=True)
        restored.metadata.update(stored.metadata)  # its Content-Type replaces put_object's default
        figures["s3_objects"] += 1
    for account, region, name, definition in store.tables():
        _create_table(dynamodb_backends[account][region], name, dict(definition))
    for account, region, table, item in store.items():
        dynamodb_backends[account][region].get_table(table).put_item(item)
        figures["dynamodb_items"] += 1
    queues = list(store.queues())
    queues.sort(key=lambda q: "RedrivePolicy" in q[3])  # dead-letter queues exist before their sources
    for account, region, name, attributes in queues:
        sqs_backends[account][region].create_queue(name, **attributes)
    for message_id, account, region, queue, state in store.messages():
        _put_message(sqs_backends[account][region].get_queue(queue), message_id, state)
        figures["sqs_messages"] += 1
    return figures


def _create_table(backend: Any, name: str, definition: dict[str, Any]) -> None:
    ttl = definition.pop("ttl")
    table = backend.create_table(name, tags=[], warm_throughput=None, **definition)
    table.ttl = ttl


def _put_message(queue: Any, message_id: str, state: dict[str, Any]) -> None:
    """Appended as moto's `send_message` leaves it, without the hooks that would store it again."""
    message = Message(message_id, state["body"], state["system_attributes"])
    message.message_attributes = state["message_attributes"]
    message.sent_timestamp = state["sent_timestamp"]
    message.group_id = state["group_id"]
    message.deduplication_id = state["deduplication_id"]
    message.sequence_number = state["sequence_number"]
    queue._messages.append(message)
