"""DynamicBatcher: concurrent callers share runs, within the size and wait limits.

No test here depends on timing: a run waits on a gate the test opens, and the batcher's
waits are timed by a ManualClock that moves only when the test advances it.
"""

from __future__ import annotations

import threading

import pytest

from local_aws.endpoint_host.batching import DynamicBatcher
from tests.manual_clock import HANG_S, ManualClock


class GatedDoubler:
    """Doubles numbers; each run holds until the gate opens, so callers queue up behind it."""

    def __init__(self, open_gate: bool = False) -> None:
        self.batches: list[list] = []
        self.runs = threading.Semaphore(0)  # released once per run started
        self.gate = threading.Event()
        if open_gate:
            self.gate.set()

    def __call__(self, items):
        self.batches.append(list(items))
        self.runs.release()
        assert self.gate.wait(HANG_S), "the test never opened the gate"
        return [2 * item for item in items]

    def await_run(self) -> None:
        assert self.runs.acquire(timeout=HANG_S), "no run started"


def queue_behind_a_running_batch(batcher: DynamicBatcher, run: GatedDoubler, first, rest) -> list:
    """`first` runs alone and holds; `rest` queue meanwhile; then the gate opens. Returns every future."""
    futures = [batcher.enqueue(first)]
    run.await_run()
    futures += [batcher.enqueue(item) for item in rest]
    run.gate.set()
    return futures


def submit_on_a_thread(batcher: DynamicBatcher, item, answers: dict) -> threading.Thread:
    thread = threading.Thread(target=lambda: answers.__setitem__(item, batcher.submit(item)))
    thread.start()
    return thread


def test_waiting_requests_share_a_run_and_each_gets_its_own_answer():
    run = GatedDoubler()
    batcher = DynamicBatcher(run, max_batch_size=4)
    futures = queue_behind_a_running_batch(batcher, run, 0, range(1, 10))
    assert [future.result(HANG_S) for future in futures] == [2 * i for i in range(10)]
    batcher.close()
    assert run.batches == [[0], [1, 2, 3, 4], [5, 6, 7, 8], [9]]  # callers queued behind the first run


def test_batch_size_one_runs_one_at_a_time():
    run = GatedDoubler()
    batcher = DynamicBatcher(run, max_batch_size=1)
    futures = queue_behind_a_running_batch(batcher, run, 0, range(1, 5))
    assert [future.result(HANG_S) for future in futures] == [0, 2, 4, 6, 8]
    batcher.close()
    assert run.batches == [[0], [1], [2], [3], [4]]


def test_a_lone_request_does_not_wait_without_a_wait_time():
    clock = ManualClock()
    batcher = DynamicBatcher(GatedDoubler(open_gate=True), max_batch_size=8, max_wait_ms=0, clock=clock)
    assert batcher.enqueue(21).result(HANG_S) == 42  # the clock never moves: a wait would never end
    batcher.close()
    assert clock.waits == 0


def test_a_wait_time_gathers_requests_that_arrive_apart():
    clock, run, answers = ManualClock(), GatedDoubler(open_gate=True), {}
    batcher = DynamicBatcher(run, max_batch_size=8, max_wait_ms=250, clock=clock)
    callers = []
    for count, item in enumerate(range(3), start=1):
        callers.append(submit_on_a_thread(batcher, item, answers))
        clock.await_waits(count)  # the batch holds it and waits for more
    clock.advance(0.125)  # binary fractions: the sums are exact
    clock.await_waits(4)
    assert run.batches == []  # still within the wait time
    clock.advance(0.125)
    for caller in callers:
        caller.join(HANG_S)
    later = batcher.enqueue(3)  # after the wait: a batch of its own, with a wait of its own
    clock.await_waits(5)
    clock.advance(0.25)
    assert later.result(HANG_S) == 6
    batcher.close()
    assert answers == {0: 0, 1: 2, 2: 4}
    assert [sorted(batch) for batch in run.batches] == [[0, 1, 2], [3]]


def test_sizes_count_images_not_requests():
    run = GatedDoubler()
    batcher = DynamicBatcher(lambda items: run([sum(item) for item in items]), max_batch_size=4, size_of=len)
    futures = queue_behind_a_running_batch(batcher, run, (1, 1, 1), [(2, 2), (3, 3), (4,)])
    assert [future.result(HANG_S) for future in futures] == [6, 8, 12, 8]
    batcher.close()
    # (1,1,1) runs alone first; then 2 + 2 images fill a run of 4; counting requests would put 3 in one run.
    assert run.batches == [[3], [4, 6], [4]]


def test_a_failing_run_fails_its_callers_and_the_batcher_lives_on():
    def run(items):
        if -1 in items:
            raise RuntimeError("model exploded")
        return items

    batcher = DynamicBatcher(run, max_batch_size=1)
    with pytest.raises(RuntimeError, match="model exploded"):
        batcher.submit(-1)
    assert batcher.submit(7) == 7
    batcher.close()


def test_limits_are_validated():
    with pytest.raises(ValueError):
        DynamicBatcher(lambda items: items, max_batch_size=0)
    with pytest.raises(ValueError):
        DynamicBatcher(lambda items: items, max_wait_ms=-1)


def test_on_start_runs_on_the_thread_that_runs_every_batch():
    seen = []
    batcher = DynamicBatcher(lambda items: [seen.append(threading.get_ident()) or item for item in items],
                             max_batch_size=2, on_start=lambda: seen.append(threading.get_ident()))
    assert batcher.submit(1) == 1 and batcher.submit(2) == 2
    batcher.close()
    assert len(seen) == 3 and len(set(seen)) == 1 and seen[0] != threading.get_ident()


def test_a_failing_on_start_is_raised_by_the_constructor():
    def broken_model() -> None:
        raise OSError("model.pth is missing")

    with pytest.raises(OSError, match="model.pth is missing"):
        DynamicBatcher(lambda items: items, on_start=broken_model)


class DecodingClient:
    """A request that has arrived and is decoding until the test lets it finish (or fail)."""

    def __init__(self, batcher: DynamicBatcher, item) -> None:
        self.decoding, self.finish, self.fail = threading.Event(), threading.Event(), False
        self.answer, self.error = None, None
        self._thread = threading.Thread(target=self._run, args=(batcher, item))
        self._thread.start()
        assert self.decoding.wait(HANG_S)

    def _run(self, batcher: DynamicBatcher, item) -> None:
        try:
            with batcher.arrival() as submit:
                self.decoding.set()
                assert self.finish.wait(HANG_S)
                if self.fail:
                    raise ValueError("corrupt image")
                self.answer = submit(item)
        except ValueError as error:
            self.error = error

    def done(self, fail: bool = False) -> None:
        self.fail = fail
        self.finish.set()
        self._thread.join(HANG_S)


def a_batch_held_by_an_arrival(arrival_wait_ms: float):
    """Request 1 queued while request 2 has arrived and is decoding: the batch holds 1 and waits."""
    clock, run = ManualClock(), GatedDoubler(open_gate=True)
    batcher = DynamicBatcher(run, max_batch_size=8, arrival_wait_ms=arrival_wait_ms, clock=clock)
    arriving = DecodingClient(batcher, 2)
    held = batcher.enqueue(1)
    clock.await_waits(1)
    return clock, run, batcher, arriving, held


def test_a_batch_waits_for_a_request_that_has_arrived_and_is_still_decoding():
    _, run, batcher, slow, fast = a_batch_held_by_an_arrival(arrival_wait_ms=2000)
    slow.done()
    assert fast.result(HANG_S) == 2 and slow.answer == 4
    batcher.close()
    assert run.batches == [[1, 2]]


def test_a_batch_waits_for_an_arrival_no_longer_than_the_arrival_wait():
    clock, run, batcher, slow, fast = a_batch_held_by_an_arrival(arrival_wait_ms=2000)
    clock.advance(2.0)
    assert fast.result(HANG_S) == 2  # the slow request is still decoding
    slow.done()
    assert slow.answer == 4
    batcher.close()
    assert run.batches == [[1], [2]]


def test_an_arrival_that_fails_to_decode_releases_the_waiting_batch():
    _, run, batcher, bad, waiting = a_batch_held_by_an_arrival(arrival_wait_ms=60_000)
    bad.done(fail=True)  # the clock never moves: only the failure can release the batch
    assert waiting.result(HANG_S) == 2
    batcher.close()
    assert isinstance(bad.error, ValueError) and run.batches == [[1]]
