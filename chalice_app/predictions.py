"""Predictions: images under incoming/ → the endpoint → one item each in the predictions table.

A batch of SQS messages is classified together: one read finds the images already
final (redeliveries), one registry read and one InvokeEndpoint per group of images
serve the rest (the endpoint runs one batched forward pass), and each image's item
is written on its own. Each image still succeeds or fails alone.

Nothing is dropped: an image before any endpoint is PENDING (re-driven when a
model goes live), a bad image is FAILED with the reason, and anything transient
(throttling, a 5xx) is that record's failure in the batch response, so SQS
delivers it again.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Union
from urllib.parse import quote_plus

from aws_lambda_powertools.metrics import MetricUnit
from botocore.exceptions import ClientError

from . import aws, clock, images, invocations
from .config import settings
from .events import S3Record
from .observability import logger, metrics, tracer
from .pipeline import stores

_NO_ENDPOINT = ("not found", "Could not find", "not in service", "InService")


@dataclass(frozen=True)
class Upload:
    """One S3 notification for incoming/: the object's key and the eTag it announced."""

    key: str
    etag: str

    @classmethod
    def of(cls, record: S3Record) -> "Upload":
        return cls(record.key, record.etag.strip('"'))


@dataclass(frozen=True)
class Image:
    """An upload's bytes, with the eTag of the object as read (a newer upload may have replaced it)."""

    upload: Upload
    etag: str
    data: bytes


# The status stored for an upload ("DUPLICATE" when a redelivery found it final), or the
# error that sends its SQS message back for another delivery.
Outcome = Union[str, Exception]


def _attempt(step: Callable[..., Outcome], *args: Any, **kwargs: Any) -> Outcome:
    try:
        return step(*args, **kwargs)
    except Exception as error:  # noqa: BLE001 - this record alone is retried by SQS
        return error


def _is_bad_input(error: ClientError) -> bool:
    code = aws.error_code(error)
    if code == "ModelError":
        status = error.response.get("OriginalStatusCode") or 400
        return 400 <= int(status) < 500
    return code in {"ValidationError", "ValidationException"}


def _endpoint_missing(error: ClientError) -> bool:
    return (aws.error_code(error) in {"ValidationError", "ValidationException"}
            and any(s in aws.error_message(error) for s in _NO_ENDPOINT))


def classify_messages(batch: Mapping[str, Sequence[Upload]]) -> list[str]:
    """Classify the uploads of a batch of SQS messages (message id → its uploads); returns the
    ids of the messages to deliver again: those with an upload that failed transiently."""
    uploads = [upload for its in batch.values() for upload in its]
    try:
        outcomes = classify_batch(uploads)
    except Exception as error:  # noqa: BLE001 - a batch-wide step failed: every record is retried
        logger.exception("batch failed; SQS delivers every record again", extra={"size": len(uploads)})
        outcomes = {upload: error for upload in uploads}
    failed = []
    for message_id, its in batch.items():
        errors = [outcomes[upload] for upload in its if isinstance(outcomes[upload], Exception)]
        if errors:
            logger.warning("record failed; SQS delivers it again", exc_info=errors[0],
                           extra={"message_id": message_id, "keys": [upload.key for upload in its]})
            failed.append(message_id)
    return failed


# Its return (Upload keys, exceptions among the values) is not JSON: X-Ray could not serialise it.
@tracer.capture_method(capture_response=False)
def classify_batch(uploads: Sequence[Upload]) -> dict[Upload, Outcome]:
    """Classify these uploads together; each one's outcome."""
    unique = list(dict.fromkeys(uploads))
    final = stores().predictions.final_etags(upload.key for upload in unique)
    outcomes: dict[Upload, Outcome] = {u: "DUPLICATE" for u in unique if final.get(u.key) == u.etag}
    readable: list[Image] = []
    for upload in unique:
        if upload not in outcomes:
            read = _attempt(_read, upload)
            if isinstance(read, Image):
                readable.append(read)
            else:
                outcomes[upload] = read
    if readable:
        outcomes.update(_classify(readable))
    return outcomes


def _read(upload: Upload) -> Image | str:
    """The object's bytes, or the status stored for an object that cannot be classified."""
    config = settings()
    try:
        obj = aws.client("s3").get_object(Bucket=config.bucket, Key=upload.key)
    except ClientError as error:
        if aws.error_code(error) in {"NoSuchKey", "404"}:
            return _save(upload.key, upload.etag, "FAILED", error="the object no longer exists")
        raise
    etag = obj.get("ETag", upload.etag).strip('"')
    if obj["ContentLength"] > config.max_image_bytes:
        obj["Body"].close()
        reason = f"the object is {obj['ContentLength']} bytes, over the {config.max_image_bytes}-byte limit"
        return _save(upload.key, etag, "FAILED", error=reason)
    data = obj["Body"].read()
    reason = images.check_image(data, config.max_image_bytes)
    if reason:
        return _save(upload.key, etag, "FAILED", error=reason)
    return Image(upload, etag, data)


def _store_each(group: Sequence[Image], status: str, **fields: Any) -> dict[Upload, Outcome]:
    return {image.upload: _attempt(_save, image.upload.key, image.etag, status, **fields) for image in group}


def _classify(readable: Sequence[Image]) -> dict[Upload, Outcome]:
    if stores().registry.live() is None:
        return _store_each(readable, "PENDING", error="no model is live yet")
    outcomes: dict[Upload, Outcome] = {}
    for indices in invocations.groups([len(image.data) for image in readable]):
        outcomes.update(_invoke_or_errors([readable[index] for index in indices]))
    return outcomes


def _invoke_or_errors(group: Sequence[Image]) -> dict[Upload, Outcome]:
    try:
        return _invoke(group)
    except Exception as error:  # noqa: BLE001 - transient (throttled, 5xx, timeout): SQS delivers them again
        return {image.upload: error for image in group}


def _invoke(group: Sequence[Image]) -> dict[Upload, Outcome]:
    """One InvokeEndpoint for the group; transient errors raise."""
    config = settings()
    started = time.perf_counter()
    try:
        response = aws.client("sagemaker-runtime").invoke_endpoint(
            **invocations.invoke_request(config.endpoint_name, [image.data for image in group]))
    except ClientError as error:
        if _endpoint_missing(error):
            return _store_each(group, "PENDING", error=aws.error_message(error))
        if not _is_bad_input(error):
            raise
        if len(group) == 1:
            return _store_each(group, "FAILED", error=aws.error_message(error))
        # The endpoint refuses a request when one of its images is bad: ask for each alone,
        # so the bad one is FAILED with its own reason and the others are classified.
        outcomes: dict[Upload, Outcome] = {}
        for image in group:
            outcomes.update(_invoke_or_errors([image]))
        return outcomes
    latency_ms = round((time.perf_counter() - started) * 1000, 2)
    labels, version = invocations.labels_per_image(response["Body"].read(), len(group), config.top_k)
    metrics.add_metric(name="InvocationLatency", unit=MetricUnit.Milliseconds, value=latency_ms)
    return {image.upload: _attempt(_save, image.upload.key, image.etag, "OK", labels=labels_of_image,
                                   model_version=version, latency_ms=latency_ms)
            for image, labels_of_image in zip(group, labels)}


def _save(key: str, etag: str, status: str, **fields: Any) -> str:
    stored = stores().predictions.save(key, etag, status, clock.now(), **fields)
    if stored:
        metrics.add_metric(name=f"Predictions{status.title()}", unit=MetricUnit.Count, value=1)
        logger.info("prediction stored", extra={"key": key, "status": status, "error": fields.get("error")})
        return status
    return "DUPLICATE"


def redrive_message(bucket: str, key: str, etag: str) -> str:
    """An S3-notification-shaped message, so re-driven images take the normal path."""
    return json.dumps({"Records": [{"eventSource": "aws:s3", "eventName": "ObjectCreated:Redrive",
                                    "s3": {"bucket": {"name": bucket},
                                           "object": {"key": quote_plus(key), "eTag": etag}}}]})


@tracer.capture_method
def redrive_pending() -> int:
    """Queue every PENDING image again (a model has just gone live)."""
    config, store = settings(), stores()
    pending = store.predictions.pending()
    if not pending:
        return 0
    sqs = aws.client("sqs")
    queue_url = sqs.get_queue_url(QueueName=config.incoming_queue)["QueueUrl"]
    for start in range(0, len(pending), 10):
        chunk = pending[start:start + 10]
        entries = [{"Id": str(i), "MessageBody": redrive_message(config.bucket, item["image_key"], item["etag"])}
                   for i, item in enumerate(chunk)]
        result = sqs.send_message_batch(QueueUrl=queue_url, Entries=entries)
        if result.get("Failed"):
            raise RuntimeError(f"could not re-drive {len(result['Failed'])} pending predictions: {result['Failed']}")
    logger.info("pending predictions re-driven", extra={"count": len(pending)})
    return len(pending)
