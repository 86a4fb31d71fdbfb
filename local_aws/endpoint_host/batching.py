"""Dynamic batching: concurrent requests of one worker share a forward pass.

One thread runs the model; request threads hand it work and wait. It takes the oldest
request, then whatever else is already waiting, up to `max_batch_size` images, waiting
at most `max_wait_ms` for more. It also waits, at most `arrival_wait_ms`, for requests
that have arrived and are still being decoded (callers announce them with `arrival()`):
under load, clients answered by one batch send their next requests together, and
without this the next batch would start with the first of them alone. A lone request
never waits, so with `max_wait_ms=0` (the default) it runs at once.
`max_batch_size=1` turns batching off but keeps one model thread, so a worker never
runs two forward passes at once (its torch threads would fight for the same cores).

`on_start` runs on the model thread before the first batch (the host loads and warms
up the model there): here, a ResNet-18 forward pass on a thread other than the one
that loaded the model measured 40 ms p50 instead of 31.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


@dataclass
class _Job(Generic[Item, Result]):
    item: Item
    size: int
    future: Future = field(default_factory=Future)


class DynamicBatcher(Generic[Item, Result]):
    """Runs `run_batch(items) -> results` (same order) on one thread, for many callers."""

    def __init__(self, run_batch: Callable[[Sequence[Item]], Sequence[Result]], *, max_batch_size: int = 1,
                 max_wait_ms: float = 0.0, arrival_wait_ms: float = 10.0,
                 size_of: Callable[[Item], int] = lambda item: 1, on_start: Callable[[], None] | None = None):
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        if max_wait_ms < 0 or arrival_wait_ms < 0:
            raise ValueError("max_wait_ms and arrival_wait_ms must not be negative")
        self._run_batch = run_batch
        self._max_size = max_batch_size
        self._max_wait = max_wait_ms / 1000.0
        self._arrival_wait = arrival_wait_ms / 1000.0
        self._arriving = 0  # requests announced by arrival() and not submitted yet
        self._arriving_lock = threading.Lock()
        self._size_of = size_of
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._held: _Job | None = None  # took it from the queue, but it did not fit the last batch
        self._started: Future = Future()
        self._thread = threading.Thread(target=self._loop, args=(on_start,), name="model", daemon=True)
        self._thread.start()
        self._started.result()  # on_start's error, if any, is raised here

    def _enqueue(self, item: Item) -> Future:
        job: _Job = _Job(item, max(1, self._size_of(item)))
        self._queue.put(job)
        return job.future

    def submit(self, item: Item) -> Result:
        """Run `item` in the next batch that has room; returns its result or raises its error."""
        return self._enqueue(item).result()

    @contextmanager
    def arrival(self) -> Iterator[Callable[[Item], Result]]:
        """Announce a request while it is prepared; yields its `submit`.

            with batcher.arrival() as submit:
                item = decode(body)      # a batch being formed waits for this
                result = submit(item)
        """
        announced = [True]

        def leave() -> None:
            if announced[0]:
                announced[0] = False
                with self._arriving_lock:
                    self._arriving -= 1

        def submit(item: Item) -> Result:
            future = self._enqueue(item)  # queued before it stops counting as arriving: no gap to miss it in
            leave()
            return future.result()

        with self._arriving_lock:
            self._arriving += 1
        try:
            yield submit
        finally:
            leave()

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()

    def _next(self, timeout: float | None) -> _Job | None:
        if self._held is not None:
            job, self._held = self._held, None
            return job
        if timeout is None:
            return self._queue.get()
        if timeout <= 0:
            return self._queue.get_nowait()
        return self._queue.get(timeout=timeout)

    def _collect(self, first: _Job) -> tuple[list[_Job], bool]:
        jobs, size = [first], first.size
        began = time.monotonic()
        deadline, arrival_deadline = began + self._max_wait, began + self._arrival_wait
        while size < self._max_size:
            now = time.monotonic()
            timeout = deadline - now
            if timeout <= 0 and self._arriving > 0 and now < arrival_deadline:
                timeout = min(0.001, arrival_deadline - now)  # re-check: the arrival may fail to decode
            try:
                job = self._next(timeout)
            except queue.Empty:
                if self._arriving > 0 and time.monotonic() < arrival_deadline:
                    continue
                break
            if job is None:
                return jobs, True
            if size + job.size > self._max_size:
                self._held = job
                break
            jobs.append(job)
            size += job.size
        return jobs, False

    def _loop(self, on_start: Callable[[], None] | None) -> None:
        try:
            if on_start is not None:
                on_start()
        except BaseException as error:
            self._started.set_exception(error)
            return
        self._started.set_result(None)
        while True:
            first = self._next(None)
            if first is None:
                return
            jobs, closing = self._collect(first)
            try:
                results = self._run_batch([job.item for job in jobs])
                for job, result in zip(jobs, results, strict=True):
                    job.future.set_result(result)
            except BaseException as error:  # every caller learns why; the loop lives on
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(error)
            if closing:
                return
