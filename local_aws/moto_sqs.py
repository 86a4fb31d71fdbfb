"""moto 5.2's SQS made linear in the queue's depth, with the same answers.

Measured on the stack (`bench/e2e.py`, py-spy with --gil): with a few hundred images
queued, 58% of the moto process's time went to `Queue.attributes`. moto computes
every attribute, the three ApproximateNumberOf* counters included (each a pass over
every message, reading the clock twice per message), whenever one is read: on every
SendMessage (an S3 notification reads ContentBasedDeduplication) and three times per
message received (the retention check reads MessageRetentionPeriod through
GetQueueAttributes). Receiving a batch from a deep queue was quadratic.

`make_sqs_linear(patches)` replaces those readers with equivalent ones: the retention check
reads the queue's retention period directly, and each counter is one pass with one
clock reading. Semantics are moto's own (same fields, same comparisons).
"""

from __future__ import annotations

from typing import Any

from moto.core.utils import unix_time, unix_time_millis
from moto.sqs.models import Message, Queue, SQSBackend

from .patching import Patches


def _ready(queue: Queue, now: float) -> list[Message]:
    return [m for m in queue._messages if now > m.visible_at and not now < m.delayed_until]


def _messages(queue: Queue) -> list[Message]:
    return _ready(queue, unix_time_millis())


def _delayed(queue: Queue) -> int:
    now = unix_time_millis()
    return sum(1 for m in queue._messages if now < m.delayed_until)


def _not_visible(queue: Queue) -> int:
    now = unix_time_millis()
    return sum(1 for m in queue._messages if not now > m.visible_at)


def _within_retention(backend: SQSBackend, queue_name: str, message: Message) -> bool:
    retention = int(backend.get_queue(queue_name).message_retention_period)
    return retention + message.sent_timestamp / 1000 > unix_time()  # type: ignore[operator]


def make_sqs_linear(patches: Patches) -> None:
    """Patch moto's SQS models in this process, recorded in `patches`."""
    replacements: dict[tuple[Any, str], Any] = {
        (Queue, "messages"): property(_messages),
        (Queue, "approximate_number_of_messages"): property(lambda queue: len(_messages(queue))),
        (Queue, "approximate_number_of_messages_delayed"): property(_delayed),
        (Queue, "approximate_number_of_messages_not_visible"): property(_not_visible),
        (SQSBackend, "is_message_valid_based_on_retention_period"): _within_retention,
    }
    for (owner, name), replacement in replacements.items():
        if not hasattr(owner, name):  # a moto that changed shape: fail loudly, not silently slow
            raise RuntimeError(f"moto's {owner.__name__}.{name} is gone; review local_aws/moto_sqs.py")
        patches.replace(owner, name, replacement)
