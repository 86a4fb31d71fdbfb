"""DynamicBatcher: concurrent callers share runs, within the size and wait limits."""

from __future__ import annotations

import threading
import time

import pytest

from local_aws.endpoint_host.batching import DynamicBatcher


class SlowDoubler:
    """Doubles numbers; each run takes a while, so callers pile up behind it."""

    def __init__(self, seconds: float = 0.05):
        self.seconds, self.batches = seconds, []

    def __call__(self, items):
        self.batches.append(list(items))
        time.sleep(self.seconds)
        return [2 * item for item in items]


def call_concurrently(batcher: DynamicBatcher, items) -> dict:
    results, threads = {}, []
    for item in items:
        thread = threading.Thread(target=lambda i=item: results.__setitem__(i, batcher.submit(i)))
        thread.start()
        threads.append(thread)
        time.sleep(0.002)
    for thread in threads:
        thread.join(timeout=10)
    return results


def test_waiting_requests_share_a_run_and_each_gets_its_own_answer():
    run = SlowDoubler()
    batcher = DynamicBatcher(run, max_batch_size=4)
    results = call_concurrently(batcher, range(10))
    batcher.close()
    assert results == {i: 2 * i for i in range(10)}
    assert max(len(batch) for batch in run.batches) == 4  # callers queued behind the first run
    assert all(len(batch) <= 4 for batch in run.batches) and len(run.batches) < 10


def test_batch_size_one_runs_one_at_a_time():
    run = SlowDoubler(0.01)
    batcher = DynamicBatcher(run, max_batch_size=1)
    assert call_concurrently(batcher, range(5)) == {i: 2 * i for i in range(5)}
    batcher.close()
    assert [len(batch) for batch in run.batches] == [1] * 5


def test_a_lone_request_does_not_wait_without_a_wait_time():
    batcher = DynamicBatcher(SlowDoubler(0.0), max_batch_size=8, max_wait_ms=0)
    began = time.perf_counter()
    assert batcher.submit(21) == 42
    assert time.perf_counter() - began < 0.5
    batcher.close()


def test_a_wait_time_gathers_requests_that_arrive_apart():
    run = SlowDoubler(0.0)
    batcher = DynamicBatcher(run, max_batch_size=8, max_wait_ms=300)
    call_concurrently(batcher, range(3))
    batcher.close()
    assert [sorted(batch) for batch in run.batches] == [[0, 1, 2]]


def test_sizes_count_images_not_requests():
    run = SlowDoubler()
    batcher = DynamicBatcher(lambda items: run([sum(item) for item in items]), max_batch_size=4, size_of=len)
    results = call_concurrently(batcher, [(1, 1, 1), (2, 2), (3, 3), (4,)])
    batcher.close()
    assert results == {(1, 1, 1): 6, (2, 2): 8, (3, 3): 12, (4,): 8}
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


def test_a_batch_waits_for_a_request_that_has_arrived_and_is_still_decoding():
    run = SlowDoubler(0.0)
    batcher = DynamicBatcher(run, max_batch_size=8, arrival_wait_ms=2000)
    decoding, answers = threading.Event(), {}

    def slow_client() -> None:
        with batcher.arrival() as submit:
            decoding.set()
            time.sleep(0.05)  # decoding its image
            answers["slow"] = submit(2)

    client = threading.Thread(target=slow_client)
    client.start()
    decoding.wait()
    answers["fast"] = batcher.submit(1)
    client.join()
    batcher.close()
    assert answers == {"fast": 2, "slow": 4}
    assert run.batches == [[1, 2]]


def test_an_arrival_that_fails_to_decode_releases_the_waiting_batch():
    run = SlowDoubler(0.0)
    batcher = DynamicBatcher(run, max_batch_size=8, arrival_wait_ms=60_000)
    decoding, failed = threading.Event(), threading.Event()

    def bad_client() -> None:
        with pytest.raises(ValueError), batcher.arrival():
            decoding.set()
            time.sleep(0.05)
            raise ValueError("corrupt image")
        failed.set()

    client = threading.Thread(target=bad_client)
    client.start()
    decoding.wait()
    began = time.perf_counter()
    assert batcher.submit(1) == 2
    assert time.perf_counter() - began < 30, "the batch stopped waiting when the arrival failed"
    client.join()
    batcher.close()
    assert failed.is_set() and run.batches == [[1]]
