"""Predictions: images under incoming/ → the endpoint → one item each in the predictions table.

A batch of SQS messages is classified together: one read finds the images already
final (redeliveries), one registry read and one InvokeEndpoint per group of images
serve the rest (the endpoint runs one batched forward pass), and each image's item
is written on its own. Each image still succeeds or fails alone.

The batch goes one invoke group at a time: read its objects, invoke, store, release,
then the next group. Groups are planned from the sizes the notifications announce, so
at most one request's bytes are held (64 images of 6 MiB would be 384 MiB in a 512 MB
Lambda); an object that has grown since its notification waits for a later group.

Nothing is dropped: an image before any endpoint is PENDING (re-driven when a
model goes live), a bad image is FAILED with the reason, and anything transient
(throttling, a 5xx) is that record's failure in the batch response, so SQS
delivers it again.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Union
from urllib.parse import quote_plus

from aws_lambda_powertools.metrics import MetricUnit
from botocore.exceptions import ClientError

import training.image_contract as image_contract

from . import aws, clock, invocations, review
from .config import settings
from .events import S3Record
from .observability import logger, metrics, tracer
from .stores import stores

_NO_ENDPOINT = ("not found", "Could not find", "not in service", "InService")


@dataclass(frozen=True)
class Upload:
    """One S3 notification for incoming/: the object's key and the eTag and size it announced
    (0: not announced; the size plans the invoke groups and is no part of the upload's identity)."""

    key: str
    etag: str
    size: int = field(default=0, compare=False)

    @classmethod
    def of(cls, record: S3Record) -> "Upload":
        return cls(record.key, record.etag.strip('"'), record.size)


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


def _refusal(error: ClientError) -> str:
    """What a person reads on the FAILED image: the endpoint's own message, not the SDK's wrapper
    ('Received client error (400) from primary with message "..."')."""
    original = error.response.get("OriginalMessage")
    return invocations.endpoint_message(original) if original else aws.error_message(error)


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
    todo = [upload for upload in unique if upload not in outcomes]
    live = bool(todo) and stores().registry.live() is not None
    while todo:
        planned = len(invocations.groups(planned_sizes(todo, settings().max_image_bytes))[0])
        group_outcomes, grown = _classify_group(todo[:planned], live)
        outcomes.update(group_outcomes)
        # A grown object leads the next group: alone there if need be, so it is read then.
        todo = grown + todo[planned:]
    return outcomes


def planned_sizes(uploads: Sequence[Upload], max_image_bytes: int) -> list[int]:
    """The sizes that plan the invoke groups: as announced, or the largest image accepted where
    the notification said none (a re-drive of an item stored before sizes were)."""
    return [upload.size or max_image_bytes for upload in uploads]


def _classify_group(uploads: Sequence[Upload], live: bool) -> tuple[dict[Upload, Outcome], list[Upload]]:
    """Read these uploads, invoke once for the readable ones, store; the bytes go when this returns.
    Also the uploads whose object outgrew the group (replaced since its notification)."""
    outcomes: dict[Upload, Outcome] = {}
    group: list[Image] = []
    grown: list[Upload] = []
    for upload in uploads:
        read = _attempt(_read, upload, [len(image.data) for image in group])
        if isinstance(read, Image):
            group.append(read)
        elif isinstance(read, Upload):
            grown.append(read)
        else:
            outcomes[upload] = read
    if group:
        outcomes.update(_invoke_or_errors(group) if live else _store_pending(group, "no model is live yet"))
    return outcomes, grown


def _read(upload: Upload, held: Sequence[int] = ()) -> Image | Upload | str:
    """The object's bytes; or the status stored for an object that cannot be classified; or, for an
    object that no longer fits one request with the `held` images, the upload with its real size
    (its body unread)."""
    config = settings()
    try:
        obj = aws.client("s3").get_object(Bucket=config.bucket, Key=upload.key)
    except ClientError as error:
        if aws.error_code(error) in {"NoSuchKey", "404"}:
            return _save(upload.key, upload.etag, "FAILED", error="the object no longer exists")
        raise
    etag = obj.get("ETag", upload.etag).strip('"')
    too_large = image_contract.bytes_refusal(obj["ContentLength"], config.max_image_bytes)
    if too_large:
        obj["Body"].close()
        return _save(upload.key, etag, "FAILED", error=too_large)
    if held and len(invocations.groups([*held, obj["ContentLength"]])) > 1:
        obj["Body"].close()
        return replace(upload, size=obj["ContentLength"])
    data = obj["Body"].read()
    reason = image_contract.refusal(data, config.max_image_bytes)
    if reason:
        return _save(upload.key, etag, "FAILED", error=reason)
    return Image(upload, etag, data)


def _store_each(group: Sequence[Image], status: str, **fields: Any) -> dict[Upload, Outcome]:
    return {image.upload: _attempt(_save, image.upload.key, image.etag, status, **fields) for image in group}


def _store_pending(group: Sequence[Image], reason: str) -> dict[Upload, Outcome]:
    # The size rides on the re-drive message, which plans its group as a notification's does.
    return {image.upload: _attempt(_save, image.upload.key, image.etag, "PENDING", error=reason,
                                   size=len(image.data)) for image in group}


def _invoke_or_errors(group: Sequence[Image]) -> dict[Upload, Outcome]:
    try:
        return _invoke(group)
    except Exception as error:  # noqa: BLE001 - transient (throttled, 5xx, timeout): SQS delivers them again
        # Logged here with its traceback, then dropped from it: the traceback's frames hold this
        # group's bytes, which must go before the next group is read.
        logger.warning("invocation failed; SQS delivers its records again", exc_info=error,
                       extra={"keys": [image.upload.key for image in group]})
        error = error.with_traceback(None)
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
            return _store_pending(group, aws.error_message(error))
        if not _is_bad_input(error):
            raise
        if len(group) == 1:
            return _store_each(group, "FAILED", error=_refusal(error))
        # The endpoint refuses a request when one of its images is bad: ask for each alone,
        # so the bad one is FAILED with its own reason and the others are classified.
        outcomes: dict[Upload, Outcome] = {}
        for image in group:
            outcomes.update(_invoke_or_errors([image]))
        return outcomes
    latency_ms = round((time.perf_counter() - started) * 1000, 2)
    answer = invocations.read_answer(response["Body"].read(), len(group), config.top_k)
    metrics.add_metric(name="InvocationLatency", unit=MetricUnit.Milliseconds, value=latency_ms)
    drifting = stores().drift.drifting(answer.model_version)
    # Each image's review marking (chalice_app/review.py) is decided as it is stored; a sampled one
    # counts in its hour's sample counter in the same write. Its embedding summary puts it in its
    # version's drift window (store/predictions.py).
    return {image.upload: _attempt(_save, image.upload.key, image.etag, "OK", labels=labels_of_image,
                                   model_version=answer.model_version, latency_ms=latency_ms, embedding=embedding,
                                   review=review.mark_prediction(labels_of_image, drifting),
                                   samples_per_hour=config.review_samples_per_hour)
            for image, labels_of_image, embedding in zip(group, answer.labels, answer.embeddings)}


def _save(key: str, etag: str, status: str, **fields: Any) -> str:
    stored = stores().predictions.save(key, etag, status, clock.now(), **fields)
    if stored:
        metrics.add_metric(name=f"Predictions{status.title()}", unit=MetricUnit.Count, value=1)
        logger.info("prediction stored", extra={"key": key, "status": status, "error": fields.get("error")})
        return status
    return "DUPLICATE"


def redrive_message(bucket: str, key: str, etag: str, size: int = 0) -> str:
    """An S3-notification-shaped message, so re-driven images take the normal path."""
    return json.dumps({"Records": [{"eventSource": "aws:s3", "eventName": "ObjectCreated:Redrive",
                                    "s3": {"bucket": {"name": bucket},
                                           "object": {"key": quote_plus(key), "eTag": etag, "size": size}}}]})


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
        entries = [{"Id": str(i), "MessageBody": redrive_message(config.bucket, item["image_key"], item["etag"],
                                                                item.get("size", 0))}
                   for i, item in enumerate(chunk)]
        result = sqs.send_message_batch(QueueUrl=queue_url, Entries=entries)
        if result.get("Failed"):
            raise RuntimeError(f"could not re-drive {len(result['Failed'])} pending predictions: {result['Failed']}")
    logger.info("pending predictions re-driven", extra={"count": len(pending)})
    return len(pending)
