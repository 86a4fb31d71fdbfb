"""The local SageMaker's state: the record tables, persisted after every change (see `store`),
and the state change events those changes publish (see `events`).

The operations (`backend`) and the runners (training, tuning, endpoints) both work on it:
the runners report progress through `change_*`, and a waiting tuner wakes on `wait_for_change`.

On a restart, jobs that were running come back as Failed with a reason saying so (a
training process cannot be re-attached), and their events are published.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import asdict
from typing import Any, TypeVar

from . import events
from .config import Settings
from .exceptions import ResourceNotFound, ValidationException
from .records import (ACTIVE_JOB, RECORD_TYPES, RESTART_REASON, Endpoint, EndpointConfig, Model, TrainingJob,
                      TuningJob, describe_endpoint, describe_tuning_job, now)
from .store import StateStore


class SageMakerState:
    def __init__(self, settings: Settings, publish: Callable[[events.Event], None]) -> None:
        self.settings = settings
        self.publish = publish
        self.lock = threading.RLock()
        self.store = StateStore(settings.state_dir)
        self.training_jobs: dict[str, TrainingJob] = {}
        self.tuning_jobs: dict[str, TuningJob] = {}
        self.models: dict[str, Model] = {}
        self.endpoint_configs: dict[str, EndpointConfig] = {}
        self.endpoints: dict[str, Endpoint] = {}
        # Bumped on every job state change, so a waiting tuner wakes when a trial ends rather than on a timer.
        self._changes = threading.Condition()
        self._version = 0
        self._load()

    # ----- persistence -------------------------------------------------------------------

    def _load(self) -> None:
        state = self.store.load()
        for key, record_type in RECORD_TYPES.items():
            table = getattr(self, key)
            for data in state.get(key, []):
                record = record_type(**data)
                table[record.name] = record
        # Jobs cut off by the restart fail, and say so as AWS would: whoever waits for
        # their state change (the pipeline's run lock) must hear of it.
        failed: list[events.Event] = []
        for job in self.training_jobs.values():
            if job.status in ACTIVE_JOB:
                job.failure_reason = RESTART_REASON
                job.move_to("Failed", RESTART_REASON, status="Failed")
                if job.tuning_job_arn:
                    job.objective_status = "Failed"
                failed.append(events.training_job_event(job.describe(), job.tags))
        for tuning in self.tuning_jobs.values():
            if tuning.status in ACTIVE_JOB:
                tuning.status, tuning.failure_reason, tuning.end_time = "Failed", RESTART_REASON, now()
                failed.append(events.tuning_job_event(self.describe_tuning_job(tuning), tuning.tags))
        self.save()
        for event in failed:
            self.publish(event)

    def save(self) -> None:
        with self.lock:
            self.store.save({key: [asdict(r) for r in getattr(self, key).values()] for key in RECORD_TYPES})

    # ----- changes, persisted and announced ----------------------------------------------

    def changes_seen(self) -> int:
        with self._changes:
            return self._version

    def wait_for_change(self, seen: int, timeout: float) -> None:
        """Return once a job changed after `changes_seen()` said `seen`, or after `timeout` seconds."""
        with self._changes:
            self._changes.wait_for(lambda: self._version != seen, timeout)

    def _announce_change(self) -> None:
        with self._changes:
            self._version += 1
            self._changes.notify_all()

    def change_training_job(self, name: str, mutate: Callable[[TrainingJob], None]) -> TrainingJob:
        with self.lock:
            job = self.training_jobs[name]
            before = (job.status, job.secondary_status)
            mutate(job)
            job.last_modified_time = now()
            self.save()
            changed = (job.status, job.secondary_status) != before
            event = events.training_job_event(job.describe(), job.tags) if changed else None
        self._announce_change()
        if event:
            self.publish(event)
        return job

    def change_tuning_job(self, name: str, mutate: Callable[[TuningJob], None]) -> TuningJob:
        with self.lock:
            tuning = self.tuning_jobs[name]
            before = tuning.status
            mutate(tuning)
            tuning.last_modified_time = now()
            self.save()
            event = None
            if tuning.status != before:
                event = events.tuning_job_event(self.describe_tuning_job(tuning), tuning.tags)
        self._announce_change()
        if event:
            self.publish(event)
        return tuning

    def change_endpoint(self, name: str, mutate: Callable[[Endpoint], None], *, announce: bool = True) -> Endpoint:
        with self.lock:
            endpoint = self.endpoints[name]
            mutate(endpoint)
            endpoint.last_modified_time = now()
            self.save()
            event = events.endpoint_event(self.describe_endpoint(endpoint), endpoint.tags) if announce else None
        if event:
            self.publish(event)
        return endpoint

    # ----- queries -----------------------------------------------------------------------

    def running_training_jobs(self) -> int:
        with self.lock:
            return sum(job.status in ACTIVE_JOB for job in self.training_jobs.values())

    def children(self, tuning: TuningJob) -> list[TrainingJob]:
        with self.lock:
            return [j for j in self.training_jobs.values() if j.tuning_job_arn == tuning.arn]

    def describe_tuning_job(self, tuning: TuningJob) -> dict[str, Any]:
        with self.lock:
            best = self.training_jobs.get(tuning.best_training_job or "")
            return describe_tuning_job(tuning, self.children(tuning), best)

    def describe_endpoint(self, endpoint: Endpoint) -> dict[str, Any]:
        with self.lock:
            return describe_endpoint(endpoint, self.endpoint_configs.get(endpoint.config_name), self.models)

    # ----- lookups, answering as AWS does for a name it does not know ---------------------

    def training_job(self, name: str) -> TrainingJob:
        return _found(self.training_jobs, name, lambda: ResourceNotFound(
            f"Requested resource not found: training job {name!r} does not exist"))

    def tuning_job(self, name: str) -> TuningJob:
        return _found(self.tuning_jobs, name, lambda: ResourceNotFound(
            f"Amazon SageMaker can't find a tuning job with name {name}"))

    def model(self, name: str) -> Model:
        return _found(self.models, name, lambda: ValidationException(
            f"Could not find model \"{self.settings.arn('model', name)}\"."))

    def endpoint_config(self, name: str) -> EndpointConfig:
        return _found(self.endpoint_configs, name, lambda: ValidationException(
            f"Could not find endpoint configuration \"{self.settings.arn('endpoint-config', name)}\"."))

    def endpoint(self, name: str) -> Endpoint:
        return _found(self.endpoints, name, lambda: ValidationException(
            f"Could not find endpoint \"{self.settings.arn('endpoint', name)}\"."))

    def config_model(self, config_name: str) -> tuple[dict[str, Any], Model]:
        """The first production variant of a config and its model (the local host serves one variant)."""
        with self.lock:
            config = self.endpoint_config(config_name)
            variant = config.request["ProductionVariants"][0]
            return variant, self.model(variant["ModelName"])


R = TypeVar("R")


def _found(table: dict[str, R], name: str, missing: Callable[[], Exception]) -> R:
    """The record named `name`, or the error AWS answers for a name it does not know."""
    record = table.get(name)
    if record is None:
        raise missing()
    return record
