"""The schedule's safety net: no run keeps the lock because an event never came.

EventBridge delivers each SageMaker state change at least once, but a Lambda that fails
three times (two async retries) drops the event into the failure queue, and the run it
was to drive on would sit in TUNING, TRAINING or DEPLOYING holding the lock for good.
So every minute the schedule looks at the run that holds the lock, describes what it
waits for, and once that has settled for RECONCILE_AFTER_SECONDS (time for the event
and Lambda's own retries) does what the event's handler would have done, with the same
functions: every step is idempotent, so a late event finds its work done. A job or an
endpoint still at work is left alone.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import clock, deployment, retraining
from .config import settings
from .observability import logger, tracer
from .stores import stores
from .store.runs import ENDED

# What the schedule does for a run in each active state: (run, now, age) -> None.
_STEPS: dict[str, Callable[[dict[str, Any], float, float], None]] = {
    "STARTING": retraining.resume_start,
    "TUNING": retraining.reconcile_tuning,
    "TRAINING": deployment.reconcile_training,
    "DEPLOYING": deployment.reconcile_deployment,
}


@tracer.capture_method
def reconcile() -> None:
    store = stores()
    lock = store.runs.lock()
    if lock is None:
        return
    run_id, now, age = lock["run_id"], clock.now(), settings().reconcile_after_seconds
    run = store.runs.get(run_id)
    if run is None:
        # The lock was taken but its Lambda died before it recorded the run (listing the data).
        if now - lock["taken_at"] > age:
            logger.warning("launching a run whose start died before its snapshot", extra={"run_id": run_id})
            retraining.relaunch(run_id, "data")
        return
    if run["status"] in ENDED:
        # The run ended but its Lambda died before it freed the lock: the schedule's check then
        # starts what waits.
        logger.warning("freeing the lock of an ended run", extra={"run_id": run_id, "status": run["status"]})
        store.runs.release_lock(run_id)
        return
    step = _STEPS.get(run["status"])
    if step is not None:
        step(run, now, age)
