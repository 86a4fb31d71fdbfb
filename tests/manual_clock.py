"""A clock that moves only when the test says so, for code that waits on a condition with a timeout.

The code under test calls `wait(condition, timeout)` holding `condition`, as it would call
`condition.wait(timeout)`; here the wait ends only when the code's own notify or `advance`
wakes it, never because the machine was slow. `await_waits(n)` lets a test act at a known
point: once the code has begun its n-th wait.
"""

from __future__ import annotations

import threading

# Only a guard against a hang (a broken implementation that never waits or never wakes):
# nothing here measures how long anything took.
HANG_S = 120.0


class ManualClock:
    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._state = threading.Condition()  # guards _now, waits and _conditions
        self.waits = 0
        self._conditions: set[threading.Condition] = set()

    def now(self) -> float:
        with self._state:
            return self._now

    def wait(self, condition: threading.Condition, timeout: float) -> None:
        with self._state:
            self.waits += 1
            self._conditions.add(condition)
            self._state.notify_all()
        # `advance` must take `condition` to notify it, which it gets only once this wait has released it.
        condition.wait()

    def advance(self, seconds: float) -> None:
        with self._state:
            self._now += seconds
            conditions = list(self._conditions)
        for condition in conditions:
            with condition:
                condition.notify_all()

    def await_waits(self, count: int) -> None:
        """Block until the code under test has begun its `count`-th wait."""
        with self._state:
            if not self._state.wait_for(lambda: self.waits >= count, timeout=HANG_S):
                raise AssertionError(f"the code under test began {self.waits} waits, never {count}")
