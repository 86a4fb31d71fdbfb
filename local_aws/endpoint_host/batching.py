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

Every wait is on one condition, notified when a request is queued or an arrival
leaves, and timed by a `Clock`: a test's clock moves only when the test says so.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class Clock(Protocol):
    """Where the batcher reads the time and waits for it to pass."""

    def now(self) -> float:
        """Seconds, from any fixed origin."""

    def wait(self, condition: threading.Condition, timeout: float) -> None:
        """With `condition` held: wait until it is notified or `timeout` seconds have passed."""


class MonotonicClock:
    def now(self) -> float:
        return time.monotonic()

    def wait(self, condition: threading.Condition, timeout: float) -> None:
        condition.wait(timeout)


@dataclass
class _Job(Generic[Item, Result]):
    item: Item
    size: int
    future: Future = field(default_factory=Future)


class DynamicBatcher(Generic[Item, Result]):
    """Runs `run_batch(items) -> results` (same order) on one thread, for many callers."""

    def __init__(self, run_batch: Callable[[Sequence[Item]], Sequence[Result]], *, max_batch_size: int = 1,
                 max_wait_ms: float = 0.0, arrival_wait_ms: float = 10.0,
                 size_of: Callable[[Item], int] = lambda item: 1, on_start: Callable[[], None] | None = None,
                 clock: Clock | None = None):
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        if max_wait_ms < 0 or arrival_wait_ms < 0:
            raise ValueError("max_wait_ms and arrival_wait_ms must not be negative")
        self._run_batch = run_batch
        self._max_size = max_batch_size
        self._max_wait = max_wait_ms / 1000.0
        self._arrival_wait = arrival_wait_ms / 1000.0
        self._size_of = size_of
        self._clock = clock or MonotonicClock()
        self._changed = threading.Condition()  # guards the three below; notified whenever one changes
        self._jobs: deque[_Job] = deque()
        self._arriving = 0  # requests announced by arrival() and not queued yet
        self._closed = False
        self._started: Future = Future()
        self._thread = threading.Thread(target=self._loop, args=(on_start,), name="model", daemon=True)
        self._thread.start()
        self._started.result()  # on_start's error, if any, is raised here

    def enqueue(self, item: Item) -> Future:
        """Queue `item` for the next batch that has room; its future holds the result or the error."""
        job: _Job = _Job(item, max(1, self._size_of(item)))
        with self._changed:
            self._jobs.append(job)
            self._changed.notify()
        return job.future

    def submit(self, item: Item) -> Result:
        """Run `item` in the next batch that has room; returns its result or raises its error."""
        return self.enqueue(item).result()

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
                with self._changed:
                    self._arriving -= 1
                    self._changed.notify()

        def submit(item: Item) -> Result:
            future = self.enqueue(item)  # queued before it stops counting as arriving: no gap to miss it in
            leave()
            return future.result()

        with self._changed:
            self._arriving += 1
        try:
            yield submit
        finally:
            leave()

    def close(self) -> None:
        """Run what is queued, then stop the model thread."""
        with self._changed:
            self._closed = True
            self._changed.notify()
        self._thread.join()

    def _collect(self) -> list[_Job]:
        """The next batch: called holding `_changed`, with at least one job queued."""
        first = self._jobs.popleft()
        jobs, size = [first], first.size
        began = self._clock.now()
        while size < self._max_size:
            if self._jobs:
                if size + self._jobs[0].size > self._max_size:
                    break  # it starts the next batch
                job = self._jobs.popleft()
                jobs.append(job)
                size += job.size
                continue
            if self._closed:
                break
            wait = max(self._max_wait, self._arrival_wait) if self._arriving else self._max_wait
            remaining = began + wait - self._clock.now()
            if remaining <= 0:
                break
            self._clock.wait(self._changed, remaining)
        return jobs

    def _loop(self, on_start: Callable[[], None] | None) -> None:
        try:
            if on_start is not None:
                on_start()
        except BaseException as error:
            self._started.set_exception(error)
            return
        self._started.set_result(None)
        while True:
            with self._changed:
                while not self._jobs and not self._closed:
                    self._changed.wait()
                if not self._jobs:
                    return  # closed, and nothing left to run
                jobs = self._collect()
            try:
                results = self._run_batch([job.item for job in jobs])
                for job, result in zip(jobs, results, strict=True):
                    job.future.set_result(result)
            except BaseException as error:  # every caller learns why; the loop lives on
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(error)
