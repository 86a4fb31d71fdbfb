"""Retraining: data arrivals → one run per upload burst → tuning → the final training job.

(The final job's completion is the quality gate's business: see deployment.py.)

event → parsed record → decision → AWS call → stored state. Decisions are plain
functions of stored state; every step is safe to repeat (conditional writes,
deterministic SageMaker names).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit

from . import aws, clock, manifest
from . import sagemaker_requests as requests
from .config import settings
from .events import JOB_ENDED, S3Record, TuningJobStateChange
from .observability import logger, metrics, tracer
from .stores import stores
from .sagemaker_calls import Refused, create_or_refuse
from .store.arrivals import Burst

@dataclass(frozen=True)
class StartOutcome:
    started: bool
    run_id: str | None
    reason: str


def new_run_id(now: float) -> str:
    """20 characters that sort by start time: r<yymmddHHMMSS>-<6 hex>."""
    stamp = datetime.fromtimestamp(now, timezone.utc).strftime("%y%m%d%H%M%S")
    return f"r{stamp}-{secrets.token_hex(3)}"


def record_arrivals(records: list[S3Record]) -> int:
    """Add new uploads (deduped on key and eTag) to the current burst. Returns how many were new."""
    config, store = settings(), stores()
    new = 0
    for record in records:
        if not record.key.startswith(config.training_prefix):
            continue
        commit = manifest.is_commit_marker(record.key, config.training_prefix)
        # An image is new when its content is (key, eTag). Every _COMMIT is empty (one eTag),
        # so a marker is told apart by its event's time and sequencer, which a redelivery repeats.
        version = f"{record.etag}:{record.event_time}:{record.sequencer}" if commit else record.etag
        if store.arrivals.add(record.key, version, clock.now(), commit=commit):
            new += 0 if commit else 1
        else:
            logger.debug("duplicate arrival", extra={"key": record.key, "etag": record.etag})
    if new:
        metrics.add_metric(name="TrainingImagesArrived", unit=MetricUnit.Count, value=new)
    return new


def wait_reason(burst: Burst | None, now: float, quiet_window: float) -> str | None:
    """Why no run should start from this burst yet; None when one should."""
    if burst is None or not burst.pending:
        return "no new training data"
    if not burst.is_quiet(now, quiet_window):
        return "the upload burst is still going on"
    return None


def run_day(now: float) -> str:
    """The UTC day a run started at `now` counts against: its id's yymmdd."""
    return datetime.fromtimestamp(now, timezone.utc).strftime("%y%m%d")


def cap_reason(started_today: int, cap: int, now: float) -> str | None:
    """Why new data may start no run today (each run costs a tuning job); None under the cap."""
    if started_today < cap:
        return None
    tomorrow = (datetime.fromtimestamp(now, timezone.utc) + timedelta(days=1)).strftime("%Y-%m-%d")
    return (f"{started_today} runs started today, the most MAX_RUNS_PER_DAY allows ({cap}); "
            f"the data waits for {tomorrow} UTC")


# A StartOutcome is not JSON; the handlers log it.
@tracer.capture_method(capture_response=False)
def maybe_start_run() -> StartOutcome:
    """Start a run when a quiet or committed burst waits and no run is active (a person's start:
    request_run)."""
    config, store = settings(), stores()
    now = clock.now()
    burst = store.arrivals.current()
    reason = wait_reason(burst, now, config.quiet_window_seconds)
    if reason:
        return StartOutcome(False, None, reason)
    holder = store.runs.lock_holder()
    if holder:
        # The burst stays pending: it becomes the next run when this one ends.
        return StartOutcome(False, holder, f"run {holder} is active; new data will start a run after it")
    capped = cap_reason(store.runs.started_on(run_day(now)), config.max_runs_per_day, now)
    if capped:
        # The burst stays pending (not claimed): the first check of the next day starts its run.
        logger.warning("daily run cap reached", extra={"reason": capped})
        return StartOutcome(False, None, capped)
    run_id = new_run_id(now)
    if not store.runs.take_lock(run_id, now):
        return StartOutcome(False, None, "another run started at the same moment")
    if burst is not None and burst.pending and not store.arrivals.claim(burst):
        store.runs.release_lock(run_id)
        return StartOutcome(False, None, "the upload burst changed while starting; the next check retries")
    return _launch(run_id, "data", now)


def request_run() -> StartOutcome:
    """A person's start, as the API takes it: the lock and the run, STARTING, in one write; the
    schedule's next tick snapshots the data and creates the tuning job (resume_start), as listing
    the data may outlast an API request. `started` is False when another run holds the lock."""
    store = stores()
    now = clock.now()
    run_id = new_run_id(now)
    if store.runs.begin(run_id, now, status="STARTING", trigger="manual"):
        logger.info("run requested", extra={"run_id": run_id})
        return StartOutcome(True, run_id, "requested: the schedule starts it within a minute")
    holder = store.runs.lock_holder()
    return StartOutcome(False, holder, f"run {holder} is active; start another once it has ended" if holder
                        else "another run started at the same moment")


def _snapshot() -> list[manifest.Entry]:
    config = settings()
    paginator = aws.client("s3").get_paginator("list_objects_v2")
    objects = [(obj["Key"], obj.get("ETag", ""), obj.get("Size", 0))
               for page in paginator.paginate(Bucket=config.bucket, Prefix=config.training_prefix)
               for obj in page.get("Contents", [])]
    return manifest.build(objects, config.training_prefix)


def _launch(run_id: str, trigger: str, now: float, created_at: float | None = None) -> StartOutcome:
    """Snapshot the data, record the run and its manifest, start tuning (`created_at`: when a person
    asked for the run, if before now)."""
    config, store = settings(), stores()
    since = {} if created_at is None else {"created_at": created_at}
    entries = _snapshot()
    digest = manifest.digest(entries)
    if trigger == "data":
        took = _run_that_took(digest, run_id)
        if took:
            # A notification that came back after its burst's run had listed the data (its handling
            # failed: SQS delivers it again), or a burst of nothing new: the data is that run's.
            store.runs.release_lock(run_id)
            logger.info("no new data since the last run", extra={"run_id": took})
            return StartOutcome(False, took, f"the data is what run {took} took: nothing new to train on")
    refusal = manifest.refusal(entries, config.min_images)
    labels = sorted({entry.label for entry in entries})
    if refusal:
        store.runs.create(run_id, now, status="REFUSED", reason=refusal, trigger=trigger, images=len(entries),
                          labels=labels, data_digest=digest, **since)
        store.runs.release_lock(run_id)
        logger.warning("run refused", extra={"run_id": run_id, "reason": refusal})
        metrics.add_metric(name="RunsRefused", unit=MetricUnit.Count, value=1)
        return StartOutcome(False, run_id, refusal)
    store.runs.create(run_id, now, status="STARTING", trigger=trigger, images=len(entries), labels=labels,
                      manifest=config.s3_uri(requests.manifest_key(config, run_id)),
                      data_bytes=manifest.total_bytes(entries), data_digest=digest, **since)
    for put in requests.manifest_puts(config, run_id, entries):
        aws.client("s3").put_object(**put)
    return _start_tuning(run_id, now, manifest.total_bytes(entries))


def _run_that_took(digest: str, run_id: str) -> str | None:
    """The latest run before `run_id`, if it listed exactly this data. Runs start one at a time (the
    lock `run_id` holds), so that run recorded what it listed before this one could start."""
    runs, _ = stores().runs.recent(2)
    latest = next((run for run in runs if run["run_id"] != run_id), None)
    return latest["run_id"] if latest and latest.get("data_digest") == digest else None


def _start_tuning(run_id: str, now: float, data_bytes: int | None) -> StartOutcome:
    """`data_bytes`: the run's images' total size, which sizes its jobs' volume (None for a run
    recorded before sizes were)."""
    config, store = settings(), stores()
    request = requests.tuning_job_request(config, run_id, data_bytes=data_bytes)
    try:
        create_or_refuse("create_hyper_parameter_tuning_job", request)
    except Refused as refusal:
        end_run(run_id, ("STARTING",), "FAILED", str(refusal))
        return StartOutcome(False, run_id, str(refusal))
    store.runs.transition(run_id, ("STARTING",), "TUNING", now, tuning_job=request["HyperParameterTuningJobName"])
    logger.info("run started", extra={"run_id": run_id, "tuning_job": request["HyperParameterTuningJobName"]})
    metrics.add_metric(name="RunsStarted", unit=MetricUnit.Count, value=1)
    return StartOutcome(True, run_id, "tuning started")


@tracer.capture_method
def resume_start(run: dict[str, Any], now: float, age: float) -> None:
    """The schedule's part in a STARTING run: launch a run a person asked for (it has no manifest
    yet) at once; give a run whose Lambda died after its snapshot its tuning job once it has
    stalled for `age` (the tuning job's name makes a repeat safe)."""
    if "manifest" not in run:
        relaunch(run["run_id"], run.get("trigger", "manual"), run["created_at"])
    elif now - run["updated_at"] > age:
        logger.warning("resuming a stalled start", extra={"run_id": run["run_id"]})
        _start_tuning(run["run_id"], now, run.get("data_bytes"))


def relaunch(run_id: str, trigger: str, created_at: float | None = None) -> None:
    """Launch a run that holds the lock but has no snapshot yet (requested, or its Lambda died
    before it recorded one). It snapshots everything uploaded: a pending burst is claimed, and one
    that changes meanwhile stays pending for the next run."""
    store = stores()
    burst = store.arrivals.current()
    if burst is not None and burst.pending:
        store.arrivals.claim(burst)
    _launch(run_id, trigger, clock.now(), created_at)


def end_run(run_id: str, from_states: tuple[str, ...], status: str, reason: str, **fields: object) -> None:
    """End a run, free the lock, and let a pending burst start its run."""
    store = stores()
    if store.runs.transition(run_id, from_states, status, clock.now(), reason=reason, **fields):
        logger.info("run ended", extra={"run_id": run_id, "status": status, "reason": reason})
        metrics.add_metric(name=f"Runs{status.title()}", unit=MetricUnit.Count, value=1)
    store.runs.release_lock(run_id)
    maybe_start_run()


def run_for_job(job_name: str, tags: dict[str, str], expected: str) -> dict[str, Any] | None:
    """The run a job belongs to, if it is in the `expected` state (else the event was handled already)."""
    config, store = settings(), stores()
    run_id = tags.get(requests.RUN_TAG) or requests.run_id_from_job_name(config, job_name)
    run = store.runs.get(run_id) if run_id else None
    if run is None:
        logger.info("not a run of this pipeline", extra={"job": job_name})
        return None
    if run["status"] != expected:
        logger.info("event already handled", extra={"run_id": run_id, "status": run["status"]})
        return None
    return run


def _live_artifact() -> str | None:
    """The live model's model.tar.gz: the final job scores it on its own test split for the gate."""
    registry = stores().registry
    live = registry.live()
    model = registry.get(live["model_version"]) if live else None
    return model.get("artifact") if model else None


@tracer.capture_method
def on_tuning_change(event: TuningJobStateChange) -> None:
    detail = event.detail
    run = run_for_job(detail.name, detail.tags, "TUNING")
    if run is not None:
        _tuning_ended(run, detail.name, detail.status, detail.failure_reason)


@tracer.capture_method
def reconcile_tuning(run: dict[str, Any], now: float, age: float) -> None:
    """The schedule's part in a TUNING run: once its tuning job has ended `age` ago and the run is
    still TUNING, the job's event was lost (a Lambda that keeps failing drops it): do its step."""
    name = run.get("tuning_job")
    if not name:
        return
    description = aws.client("sagemaker").describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=name)
    status, ended = description["HyperParameterTuningJobStatus"], description.get("HyperParameterTuningEndTime")
    if status in JOB_ENDED and ended is not None and now - ended.timestamp() > age:
        logger.warning("resuming a run whose tuning event was lost", extra={"run_id": run["run_id"]})
        _tuning_ended(run, name, status, description.get("FailureReason"), description)


def _tuning_ended(run: dict[str, Any], name: str, status: str, failure_reason: str | None,
                  description: dict[str, Any] | None = None) -> None:
    run_id = run["run_id"]
    if status != "Completed":
        end_run(run_id, ("TUNING",), "FAILED", f"tuning job {status}: {failure_reason or 'no reason given'}")
        return
    # The event does not carry the best job; the description does.
    description = description or aws.client("sagemaker").describe_hyper_parameter_tuning_job(
        HyperParameterTuningJobName=name)
    best = description.get("BestTrainingJob")
    if not best or not best.get("TunedHyperParameters"):
        end_run(run_id, ("TUNING",), "FAILED", "tuning completed without a best training job")
        return
    config = settings()
    tuned = best["TunedHyperParameters"]
    request = requests.final_training_job_request(config, run_id, tuned, _live_artifact(),
                                                  data_bytes=run.get("data_bytes"))
    try:
        create_or_refuse("create_training_job", request)
    except Refused as refusal:
        end_run(run_id, ("TUNING",), "FAILED", str(refusal))
        return
    objective = best.get("FinalHyperParameterTuningJobObjectiveMetric", {}).get("Value")
    stores().runs.transition(run_id, ("TUNING",), "TRAINING", clock.now(), training_job=request["TrainingJobName"],
                             best_tuning_trial=best.get("TrainingJobName"), hyperparameters=tuned,
                             valid_accuracy=objective)
    logger.info("final training started", extra={"run_id": run_id, "training_job": request["TrainingJobName"]})
