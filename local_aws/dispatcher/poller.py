"""Lambda's SQS poller: gather a batch, invoke, delete what succeeded.

A batch is invoked when it holds `batch_size` messages or when the batching window,
counted from its first message, has passed. Only the messages the handler did not
report in `batchItemFailures` are deleted; the others become visible again when the
queue's visibility timeout ends, and the queue's redrive policy moves a message to
its dead-letter queue after maxReceiveCount receives (moto does that, as SQS does).
A handler that raises fails its whole batch.

On stop, messages this poller still holds (received, not deleted) are made visible
at once, so whoever polls the queue next gets them without waiting for the timeout.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import Any

from aws_lambda_powertools import Logger

logger = Logger(service="local-aws-dispatcher")

Invoke = Callable[[list[dict[str, Any]]], "set[str] | None"]
MAX_RECEIVE = 10  # SQS returns at most 10 messages per ReceiveMessage
IDLE_WAIT_SECONDS = 1  # long poll while idle; short, so a stop is noticed quickly


class QueuePoller:
    def __init__(self, sqs: Any, queue_url: str, *, batch_size: int, batching_window: float, invoke: Invoke,
                 name: str, visibility_timeout: float, idle_wait: int = IDLE_WAIT_SECONDS) -> None:
        self.sqs = sqs
        self.queue_url = queue_url
        self.batch_size = batch_size
        self.batching_window = batching_window
        self.invoke = invoke
        self.name = name
        self.visibility_timeout = visibility_timeout
        self.idle_wait = idle_wait  # a long poll's wait, whole seconds as SQS takes it (0: answer at once)
        self._held: dict[str, float] = {}  # receipt handle -> when SQS makes it visible again
        self._lock = threading.Lock()

    # --- one round ------------------------------------------------------------------------

    def _receive(self, count: int, wait: int) -> list[dict[str, Any]]:
        answer = self.sqs.receive_message(QueueUrl=self.queue_url, MaxNumberOfMessages=min(MAX_RECEIVE, count),
                                          WaitTimeSeconds=wait, AttributeNames=["All"],
                                          MessageAttributeNames=["All"])
        messages = answer.get("Messages", [])
        with self._lock:
            deadline = time.monotonic() + self.visibility_timeout
            self._held.update({m["ReceiptHandle"]: deadline for m in messages})
        return messages

    def gather(self, stop: threading.Event) -> list[dict[str, Any]]:
        """One batch: up to batch_size messages, waiting at most the window after the first;
        empty when none came within one idle wait."""
        batch: list[dict[str, Any]] = []
        closes_at = math.inf
        while len(batch) < self.batch_size and not stop.is_set():
            remaining = closes_at - time.monotonic()
            if batch and remaining <= 0:
                break
            wait = self.idle_wait if not batch else min(self.idle_wait, int(remaining))
            try:
                messages = self._receive(self.batch_size - len(batch), wait)
            except Exception:  # noqa: BLE001 - what the batch holds is in flight: invoke with it, not drop it
                if not batch:
                    raise
                logger.exception("receive failed; the batch goes with what it holds", poller=self.name,
                                 size=len(batch))
                break
            if not messages and not batch:
                break
            if messages and not batch:
                closes_at = time.monotonic() + self.batching_window
            # A message whose visibility timeout ran out while the batch gathered comes back:
            # keep it once, with its newest receipt handle.
            fresh = {m["MessageId"]: m for m in messages}
            batch = [m for m in batch if m["MessageId"] not in fresh] + list(fresh.values())
            if not messages and batch and wait == 0:
                time.sleep(min(0.05, max(0.0, remaining)))  # under a second left: poll briefly
        return batch

    def process(self, batch: list[dict[str, Any]]) -> tuple[int, int]:
        """Invoke with one batch; returns (deleted, failed)."""
        try:
            failed = self.invoke(batch)
        except Exception:  # noqa: BLE001 - a handler error fails the batch, as in Lambda
            logger.exception("handler failed its whole batch", poller=self.name, size=len(batch))
            failed = None
        if failed is None:
            failed = {m["MessageId"] for m in batch}
        done = [m for m in batch if m["MessageId"] not in failed]
        for start in range(0, len(done), MAX_RECEIVE):
            chunk = done[start:start + MAX_RECEIVE]
            answer = self.sqs.delete_message_batch(QueueUrl=self.queue_url, Entries=[
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(chunk)])
            for problem in answer.get("Failed", []):
                logger.warning("delete failed", poller=self.name, problem=problem)
        with self._lock:
            for message in done:
                self._held.pop(message["ReceiptHandle"], None)
        if failed:
            logger.warning("batch items failed; they return after the visibility timeout",
                           poller=self.name, failed=len(failed), size=len(batch))
        return len(done), len(failed)

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                batch = self.gather(stop)
                if batch:
                    self.process(batch)
            except Exception:  # noqa: BLE001 - a poller outlives a bad round (moto restarting, ...)
                logger.exception("poll round failed", poller=self.name)
                stop.wait(1.0)

    # --- stop ---------------------------------------------------------------------------

    def release(self) -> int:
        """Make every message this poller holds visible again; returns how many."""
        now = time.monotonic()
        with self._lock:
            handles = [h for h, deadline in self._held.items() if deadline > now]
            self._held.clear()
        released = 0
        for start in range(0, len(handles), MAX_RECEIVE):
            chunk = handles[start:start + MAX_RECEIVE]
            answer = self.sqs.change_message_visibility_batch(QueueUrl=self.queue_url, Entries=[
                {"Id": str(i), "ReceiptHandle": h, "VisibilityTimeout": 0} for i, h in enumerate(chunk)])
            released += len(answer.get("Successful", []))
        return released
