"""Retraining: data arrivals → one run per upload burst → tuning → the final training job.

(The final job's completion is the quality gate's business: see deployment.py.)

event → parsed record → decision → AWS call → stored state. Decisions are plain
functions of stored state; every step is safe to repeat (conditional writes,
deterministic SageMaker names).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timezone

from aws_lambda_powertools.metrics import MetricUnit

from . import aws, clock, manifest
from . import sagemaker_requests as requests
from .config import settings
from .events import S3Record, TuningJobStateChange
from .observability import logger, metrics, tracer
from .pipeline import stores
from .sagemaker_calls import Refused, create_or_refuse
from .store.arrivals import Burst

# A run that took the lock but never reached TUNING (its Lambda died mid-start)
# is resumed by the schedule after this long.
STALLED_START_SECONDS = 300
# How long after its SageMaker job ended the schedule takes over a step whose event never came.
STALLED_STEP_SECONDS = 120


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


def wait_reason(burst: Burst | None, now: float, quiet_window: float, *, manual: bool) -> str | None:
    """Why no run should start from this burst yet; None when one should (a person may always start one)."""
    if manual:
        return None
    if burst is None or not burst.pending:
        return "no new training data"
    if not burst.is_quiet(now, quiet_window):
        return "the upload burst is still going on"
    return None


# A StartOutcome is not JSON; the handlers log it.
@tracer.capture_method(capture_response=False)
def maybe_start_run(*, manual: bool = False) -> StartOutcome:
    """Start a run when a quiet or committed burst waits and no run is active (or by hand)."""
    config, store = settings(), stores()
    now = clock.now()
    burst = store.arrivals.current()
    reason = wait_reason(burst, now, config.quiet_window_seconds, manual=manual)
    if reason:
        return StartOutcome(False, None, reason)
    holder = store.runs.lock_holder()
    if holder:
        # The burst stays pending: it becomes the next run when this one ends.
        return StartOutcome(False, holder, f"run {holder} is active; new data will start a run after it")
    run_id = new_run_id(now)
    if not store.runs.take_lock(run_id, now):
        return StartOutcome(False, None, "another run started at the same moment")
    if burst is not None and burst.pending and not store.arrivals.claim(burst):
        store.runs.release_lock(run_id)
        return StartOutcome(False, None, "the upload burst changed while starting; the next check retries")
    return _launch(run_id, "manual" if manual else "data", now)


def _snapshot() -> list[manifest.Entry]:
    config = settings()
    paginator = aws.client("s3").get_paginator("list_objects_v2")
    objects = [(obj["Key"], obj.get("ETag", ""))
               for page in paginator.paginate(Bucket=config.bucket, Prefix=config.training_prefix)
               for obj in page.get("Contents", [])]
    return manifest.build(objects, config.training_prefix)


def _launch(run_id: str, trigger: str, now: float) -> StartOutcome:
    config, store = settings(), stores()
    entries = _snapshot()
    refusal = manifest.refusal(entries, config.min_images)
    labels = sorted({entry.label for entry in entries})
    if refusal:
        store.runs.create(run_id, now, status="REFUSED", reason=refusal, trigger=trigger, images=len(entries),
                          labels=labels)
        store.runs.release_lock(run_id)
        logger.warning("run refused", extra={"run_id": run_id, "reason": refusal})
        metrics.add_metric(name="RunsRefused", unit=MetricUnit.Count, value=1)
        return StartOutcome(False, run_id, refusal)
    store.runs.create(run_id, now, status="STARTING", trigger=trigger, images=len(entries), labels=labels,
                      manifest=config.s3_uri(requests.manifest_key(config, run_id)))
    aws.client("s3").put_object(Bucket=config.bucket, Key=requests.manifest_key(config, run_id),
                                Body=manifest.to_jsonl(entries).encode(), ContentType="application/jsonl")
    return _start_tuning(run_id, now)


def _start_tuning(run_id: str, now: float) -> StartOutcome:
    config, store = settings(), stores()
    request = requests.tuning_job_request(config, run_id)
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
def resume_stalled_start() -> None:
    """Finish a start whose Lambda died after taking the lock (the tuning name makes it safe)."""
    store = stores()
    holder = store.runs.lock_holder()
    run = store.runs.get(holder) if holder else None
    if run and run["status"] == "STARTING" and clock.now() - run["updated_at"] > STALLED_START_SECONDS:
        logger.warning("resuming a stalled start", extra={"run_id": holder})
        _start_tuning(holder, clock.now())


def end_run(run_id: str, from_states: tuple[str, ...], status: str, reason: str, **fields: object) -> None:
    """End a run, free the lock, and let a pending burst start its run."""
    store = stores()
    if store.runs.transition(run_id, from_states, status, clock.now(), reason=reason, **fields):
        logger.info("run ended", extra={"run_id": run_id, "status": status, "reason": reason})
        metrics.add_metric(name=f"Runs{status.title()}", unit=MetricUnit.Count, value=1)
    store.runs.release_lock(run_id)
    maybe_start_run()


def run_for_job(job_name: str, tags: dict[str, str], expected: str) -> str | None:
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
    return run_id


def _live_artifact() -> str | None:
    """The live model's model.tar.gz: the final job scores it on its own test split for the gate."""
    registry = stores().registry
    live = registry.live()
    model = registry.get(live["model_version"]) if live else None
    return model.get("artifact") if model else None


@tracer.capture_method
def on_tuning_change(event: TuningJobStateChange) -> None:
    detail = event.detail
    run_id = run_for_job(detail.name, detail.tags, "TUNING")
    if run_id is not None:
        _tuning_ended(run_id, detail.name, detail.status, detail.failure_reason)


@tracer.capture_method
def resume_stalled_tuning() -> None:
    """A run still TUNING a while after its tuning job ended lost the job's event (EventBridge
    delivers at least once, but a Lambda that keeps failing drops it): the schedule's part."""
    store = stores()
    holder = store.runs.lock_holder()
    run = store.runs.get(holder) if holder else None
    if not run or run["status"] != "TUNING" or not run.get("tuning_job"):
        return
    description = aws.client("sagemaker").describe_hyper_parameter_tuning_job(
        HyperParameterTuningJobName=run["tuning_job"])
    ended = description.get("HyperParameterTuningEndTime")
    if (description["HyperParameterTuningJobStatus"] in ("Completed", "Failed", "Stopped") and ended is not None
            and clock.now() - ended.timestamp() > STALLED_STEP_SECONDS):
        logger.warning("resuming a run whose tuning event was lost", extra={"run_id": holder})
        _tuning_ended(holder, run["tuning_job"], description["HyperParameterTuningJobStatus"],
                      description.get("FailureReason"))


def _tuning_ended(run_id: str, name: str, status: str, failure_reason: str | None) -> None:
    if status != "Completed":
        end_run(run_id, ("TUNING",), "FAILED", f"tuning job {status}: {failure_reason or 'no reason given'}")
        return
    # The event does not carry the best job; the description does.
    description = aws.client("sagemaker").describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=name)
    best = description.get("BestTrainingJob")
    if not best or not best.get("TunedHyperParameters"):
        end_run(run_id, ("TUNING",), "FAILED", "tuning completed without a best training job")
        return
    config = settings()
    tuned = best["TunedHyperParameters"]
    request = requests.final_training_job_request(config, run_id, tuned, _live_artifact())
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
