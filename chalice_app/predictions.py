"""Predictions: an image under incoming/ → the endpoint → one item in the predictions table.

Nothing is dropped: an image before any endpoint is PENDING (re-driven when a
model goes live), a bad image is FAILED with the reason, and anything transient
(throttling, a 5xx) raises so the SQS batch reports that record as failed and
SQS delivers it again.
"""

from __future__ import annotations

import json
import time
from typing import Any
from urllib.parse import quote_plus

from aws_lambda_powertools.metrics import MetricUnit
from botocore.exceptions import ClientError

from . import aws, clock, images
from .config import settings
from .events import S3Record
from .observability import logger, metrics, tracer
from .pipeline import stores

CONTENT_TYPE = "application/x-image"
_NO_ENDPOINT = ("not found", "Could not find", "not in service", "InService")


def top_labels(body: bytes, k: int) -> tuple[list[dict[str, Any]], str]:
    """The endpoint's answer for one image: its k most probable labels and the model version."""
    payload = json.loads(body)
    ranked = sorted(payload["predictions"][0], key=lambda p: p["probability"], reverse=True)
    return [{"label": p["label"], "probability": float(p["probability"])} for p in ranked[:k]], payload["model_version"]


def _is_bad_input(error: ClientError) -> bool:
    code = aws.error_code(error)
    if code == "ModelError":
        status = error.response.get("OriginalStatusCode") or 400
        return 400 <= int(status) < 500
    return code in {"ValidationError", "ValidationException"}


@tracer.capture_method
def classify(record: S3Record) -> str:
    """Classify one uploaded image and store the result; returns the stored status."""
    config, store = settings(), stores()
    key = record.key
    etag = record.etag.strip('"')
    if store.predictions.is_final(key, etag):
        return "DUPLICATE"
    now = clock.now()
    try:
        obj = aws.client("s3").get_object(Bucket=config.bucket, Key=key)
    except ClientError as error:
        if aws.error_code(error) in {"NoSuchKey", "404"}:
            store.predictions.save(key, etag, "FAILED", now, error="the object no longer exists")
            return "FAILED"
        raise
    etag = obj.get("ETag", etag).strip('"')
    if obj["ContentLength"] > config.max_image_bytes:
        obj["Body"].close()
        reason = f"the object is {obj['ContentLength']} bytes, over the {config.max_image_bytes}-byte limit"
        return _save(key, etag, "FAILED", error=reason)
    data = obj["Body"].read()
    reason = images.check_image(data, config.max_image_bytes)
    if reason:
        return _save(key, etag, "FAILED", error=reason)
    if store.registry.live() is None:
        return _save(key, etag, "PENDING", error="no model is live yet")
    started = time.perf_counter()
    try:
        response = aws.client("sagemaker-runtime").invoke_endpoint(
            EndpointName=config.endpoint_name, ContentType=CONTENT_TYPE, Accept="application/json", Body=data)
    except ClientError as error:
        message = aws.error_message(error)
        if aws.error_code(error) in {"ValidationError", "ValidationException"} and any(s in message for s in _NO_ENDPOINT):
            return _save(key, etag, "PENDING", error=message)
        if _is_bad_input(error):
            return _save(key, etag, "FAILED", error=message)
        raise
    latency_ms = round((time.perf_counter() - started) * 1000, 2)
    labels, version = top_labels(response["Body"].read(), config.top_k)
    metrics.add_metric(name="InvocationLatency", unit=MetricUnit.Milliseconds, value=latency_ms)
    return _save(key, etag, "OK", labels=labels, model_version=version, latency_ms=latency_ms)


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
