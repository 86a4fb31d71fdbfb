"""The Lambda entry points, each under Powertools' Logger, Metrics and Tracer.

Powertools decorators cannot sit on a Chalice handler, so app.py forwards the raw
event and the Lambda context here.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from . import deployment, drift_watch, predictions, reconcile, retraining
from .config import settings
from .events import EndpointStateChange, TrainingJobStateChange, TuningJobStateChange, s3_records
from .observability import logger, metrics, tracer

_SQS_CORRELATION = "Records[0].messageId"


def _processor() -> BatchProcessor:
    # A batch whose records all fail is reported record by record too (not raised), so
    # Lambda and the local dispatcher see one contract: batchItemFailures.
    return BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)


def _with_prefix(record: SQSRecord, prefix: str) -> list:
    return [r for r in s3_records(record.body) if r.key.startswith(prefix)]


def _arrival(record: SQSRecord) -> None:
    retraining.record_arrivals(_with_prefix(record, settings().training_prefix))


def _uploads(records: list[dict[str, Any]]) -> tuple[dict[str, list[predictions.Upload]], list[str]]:
    """message id → its uploads under incoming/, and the ids of messages that are not S3 notifications."""
    batch, unreadable = {}, []
    for record in map(SQSRecord, records):
        try:
            batch[record.message_id] = [predictions.Upload.of(r)
                                        for r in _with_prefix(record, settings().incoming_prefix)]
        except Exception:  # noqa: BLE001 - delivered again, then dead-lettered by the queue's redrive policy
            logger.exception("message is not an S3 notification", extra={"message_id": record.message_id})
            unreadable.append(record.message_id)
    return batch, unreadable


@tracer.capture_lambda_handler
@logger.inject_lambda_context(correlation_id_path=_SQS_CORRELATION, clear_state=True)
@metrics.log_metrics
def training_data(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """A batch of S3 notifications for training-data/: dedupe, record, maybe start a run."""
    response = process_partial_response(event=event, record_handler=_arrival,
                                        processor=_processor(), context=context)
    outcome = retraining.maybe_start_run()
    logger.info("run check", extra={"started": outcome.started, "run_id": outcome.run_id, "reason": outcome.reason})
    return response


@tracer.capture_lambda_handler
@logger.inject_lambda_context(correlation_id_path=_SQS_CORRELATION, clear_state=True)
@metrics.log_metrics
def incoming_images(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """A batch of S3 notifications for incoming/, classified together: one prediction item per image.
    The answer is the SQS partial batch response (`batchItemFailures`), as BatchProcessor gives."""
    batch, unreadable = _uploads(event["Records"])
    failed = unreadable + predictions.classify_messages(batch)
    return {"batchItemFailures": [{"itemIdentifier": message_id} for message_id in failed]}


@tracer.capture_lambda_handler
@logger.inject_lambda_context(correlation_id_path=correlation_paths.EVENT_BRIDGE, clear_state=True)
@metrics.log_metrics
def quiet_check(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Every minute: drive the active run on where its event never came or could not act yet (a
    start a person asked for, a stalled start, a job or endpoint that settled unheard, a job whose
    rules have ended, an endpoint a deployment waits for: see reconcile.py), then end a quiet burst
    with a run."""
    reconcile.reconcile()
    outcome = retraining.maybe_start_run()
    logger.info("run check", extra={"started": outcome.started, "run_id": outcome.run_id, "reason": outcome.reason})
    return {"started": outcome.started, "run_id": outcome.run_id, "reason": outcome.reason}


@tracer.capture_lambda_handler
@logger.inject_lambda_context(correlation_id_path=correlation_paths.EVENT_BRIDGE, clear_state=True)
@metrics.log_metrics
def drift_check(event: dict[str, Any], context: Any) -> list[dict[str, Any]]:
    """Every minute: the live model version's newest window of live images against its reference
    (drift_watch.py); a drift episode begins or ends."""
    return [{"model_version": c.model_version, "compared": c.compared, "images": c.images, "reason": c.reason,
             "reasons": list(c.reasons), "began": c.began, "ended": c.ended} for c in drift_watch.check_live()]


@tracer.capture_lambda_handler
@logger.inject_lambda_context(correlation_id_path=correlation_paths.EVENT_BRIDGE, clear_state=True)
@metrics.log_metrics
def tuning_state(event: dict[str, Any], context: Any) -> None:
    retraining.on_tuning_change(TuningJobStateChange.model_validate(event))


@tracer.capture_lambda_handler
@logger.inject_lambda_context(correlation_id_path=correlation_paths.EVENT_BRIDGE, clear_state=True)
@metrics.log_metrics
def training_state(event: dict[str, Any], context: Any) -> None:
    deployment.on_training_change(TrainingJobStateChange.model_validate(event))


@tracer.capture_lambda_handler
@logger.inject_lambda_context(correlation_id_path=correlation_paths.EVENT_BRIDGE, clear_state=True)
@metrics.log_metrics
def endpoint_state(event: dict[str, Any], context: Any) -> None:
    deployment.on_endpoint_change(EndpointStateChange.model_validate(event))
