"""The review queue: predictions that wait for a person's label, and the label made training data.

A prediction whose top-1 probability is below the stage's REVIEW_THRESHOLD waits for review
("low-confidence"); so does a random sample of all predictions at REVIEW_SAMPLE_RATE, flagged
`sampled` (its reason "sampled" where it is not low-confidence too), at most
REVIEW_SAMPLES_PER_HOUR an hour (counted as the item is stored: store/predictions.py).

A label is given in three idempotent steps, so a repeated or concurrent request, or one retried
after a crash, ends in the same state: claim (the first label wins; another one is refused),
copy the image server-side to `training-data/<label>/<name from its key and eTag>` (the same
object whoever copies it; it arrives as any upload does, through the training prefix's S3
notification), then record the label and leave the queue. A copy whose source is gone undoes
the claim: the item stays as it was. The record counts the label for its model version's live
accuracy and confusion in the same transaction (accuracy.py), so exactly once; a sampled one newly
recorded is published as CloudWatch metrics too.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any

from aws_lambda_powertools.metrics import EphemeralMetrics, MetricUnit
from botocore.exceptions import ClientError

from training.image_contract import HEAD_BYTES, has_image_suffix, sniff

from . import accuracy, aws, clock
from .config import settings
from .image_urls import with_image_urls
from .observability import logger, metrics
from .store.predictions import LOW_CONFIDENCE, SAMPLED, Marking
from .stores import stores

# The sampling draw: a uniform float in [0, 1). Tests replace it with a seeded source.
draw: Callable[[], float] = random.Random().random


class NotInReview(LookupError):
    """No prediction for the image, or one that does not wait for review."""


class LabelConflict(Exception):
    """The image already has another label (or changed while being labelled)."""


class ImageGone(Exception):
    """The image's object no longer exists (or is another upload than the prediction's)."""


def mark(top1: float, threshold: float, rate: float, samples_per_hour: int,
         random_draw: Callable[[], float]) -> Marking:
    """Whether a prediction with this top-1 probability waits for review, and why: low confidence,
    or drawn in the random sample of all predictions (a low-confidence one drawn is flagged as
    sampled too). The draw is taken for every prediction while sampling is on, and only then."""
    sampled = rate > 0 and samples_per_hour > 0 and random_draw() < rate
    reason = LOW_CONFIDENCE if top1 < threshold else SAMPLED if sampled else None
    return Marking(reason, sampled)


def mark_prediction(labels: Sequence[dict[str, Any]], drifting: bool = False) -> Marking:
    """The stage's marking for one image's labels (most probable first). While its model version is
    drifting (drift_watch.py) the sample is drawn at DRIFT_REVIEW_SAMPLE_RATE: more of the new
    traffic gets a person's label, within the same hourly cap."""
    config = settings()
    top1 = float(labels[0]["probability"]) if labels else 0.0
    rate = config.drift_review_sample_rate if drifting else config.review_sample_rate
    return mark(top1, config.review_threshold, rate, config.review_samples_per_hour, draw)


def training_key(image_key: str, etag: str, label: str, suffix: str) -> str:
    """Where a labelled image is copied: one name per (key, eTag), so a repeated copy is the same object."""
    name = image_key.rsplit("/", 1)[-1]
    stem = name[:name.rfind(".")] if has_image_suffix(name) else name
    digest = hashlib.sha256(f"{image_key}\n{etag}".encode()).hexdigest()[:16]
    base = f"{stem[:64]}-{digest}" if stem else digest
    return f"{settings().training_prefix}{label}/{base}{suffix}"


def _suffix(image_key: str) -> str:
    """The image's suffix for the training data (training reads only image suffixes): its key's,
    or, for a key without one, its format's, from its first bytes."""
    if has_image_suffix(image_key):
        return image_key[image_key.rfind("."):].lower()
    config = settings()
    head = aws.client("s3").get_object(Bucket=config.bucket, Key=image_key,
                                       Range=f"bytes=0-{HEAD_BYTES - 1}")["Body"].read()
    image_format = sniff(head)
    if image_format is None:
        raise LabelConflict(f"{image_key} is not an image training accepts")
    return image_format.suffixes[0]


def _gone(error: ClientError) -> bool:
    return aws.error_code(error) in {"NoSuchKey", "404", "PreconditionFailed", "412"}


def answer(item: dict[str, Any]) -> dict[str, Any]:
    """What POST /review/{name} answers for a labelled item (the same for every repetition)."""
    labels = item.get("labels") or []
    return {"image_key": item["image_key"], "label": item["review_label"],
            "predicted": labels[0]["label"] if labels else None, "correct": item.get("correct"),
            "review_reason": item.get("review_reason"), "sampled": bool(item.get("sampled")),
            "training_key": item.get("training_key"), "reviewed_at": item.get("reviewed_at"),
            "model_version": item.get("model_version")}


def _settled(item: dict[str, Any] | None, image_key: str, label: str) -> dict[str, Any] | None:
    """The answer where the item's state already decides it: labelled (the same label: the first
    answer; another: a conflict), claimed by another label, or not in the queue; None where it waits."""
    if item is None:
        raise NotInReview(f"no prediction for {image_key}")
    if "review_label" in item and item.get("review_label") != label:
        raise LabelConflict(f"{image_key} is already labelled {item['review_label']!r}; "
                            "a different label changes nothing")
    if "review" not in item:
        if "review_label" in item:
            return answer(item)
        raise NotInReview(f"{image_key} is not waiting for review")
    return None


def publish_sampled(outcome: accuracy.Outcome) -> None:
    """A newly recorded sampled label as CloudWatch metrics (EMF, through the logs like every metric
    here): ReviewedSamples 1 and ReviewedSamplesCorrect 0 or 1 per ModelVersion, so the ratio of
    their sums is the version's live accuracy over any period. Apart from the shared `metrics`, whose
    dimensions would apply to everything else it flushes."""
    reviewed = EphemeralMetrics(namespace=metrics.namespace, service=metrics.service)
    reviewed.add_dimension(name="ModelVersion", value=outcome.model_version)
    reviewed.add_metric(name="ReviewedSamples", unit=MetricUnit.Count, value=1)
    reviewed.add_metric(name="ReviewedSamplesCorrect", unit=MetricUnit.Count, value=1 if outcome.correct else 0)
    reviewed.flush_metrics()


def label_image(image_key: str, label: str) -> dict[str, Any]:
    """Give a waiting prediction its label: the image is copied under the label as training data."""
    config, store = settings(), stores().predictions
    item = store.get(image_key)
    settled = _settled(item, image_key, label)
    if settled is not None:
        return settled
    assert item is not None
    etag = item["etag"]
    try:
        suffix = _suffix(image_key)
    except ClientError as error:
        if not _gone(error):
            raise
        raise ImageGone(f"{image_key} cannot be labelled: its image no longer exists") from error
    if not store.claim_review(image_key, etag, label):
        # Changed since it was read: labelled or claimed meanwhile, or replaced by a new upload.
        settled = _settled(store.get(image_key), image_key, label)
        if settled is not None:
            return settled
        raise LabelConflict(f"{image_key} changed while it was labelled; ask again")
    try:
        destination = training_key(image_key, etag, label, suffix)
        # CopySourceIfMatch: the image the prediction was made for, not a newer upload of the key.
        # TaggingDirective REPLACE: the copy carries no tags, so no s3:GetObjectTagging on incoming/.
        aws.client("s3").copy_object(Bucket=config.bucket, Key=destination,
                                     CopySource={"Bucket": config.bucket, "Key": image_key},
                                     CopySourceIfMatch=f'"{etag}"', TaggingDirective="REPLACE")
    except ClientError as error:
        if not _gone(error):
            raise  # transient: the claim stays, and the same label asked again completes it
        store.release_review(image_key, label)
        raise ImageGone(f"{image_key} cannot be labelled: its image no longer exists "
                        "(deleted or replaced since its prediction)") from error
    labels = item.get("labels") or []
    correct = bool(labels) and labels[0]["label"] == label
    outcome = accuracy.outcome_of(item, label)
    counters = accuracy.counter_updates(config.pipeline_table, outcome) if outcome else []
    now = clock.now()
    if store.finish_review(image_key, etag, label, now, counters, correct=correct, training_key=destination):
        logger.info("review labelled", extra={"key": image_key, "label": label, "correct": correct,
                                              "training_key": destination})
        if outcome is not None and outcome.sampled:
            publish_sampled(outcome)
        # The item as finish_review left it, without reading it again.
        return answer({**item, "review_label": label, "correct": correct, "training_key": destination,
                       "reviewed_at": Decimal(str(now))})
    # Recorded by a concurrent request meanwhile: its answer is the item's.
    done = store.get(image_key)
    settled = _settled(done, image_key, label)
    if settled is None:
        raise LabelConflict(f"{image_key} changed while it was labelled; ask again")
    return settled


def waiting(limit: int, cursor: str | None) -> dict[str, Any]:
    """The queue, oldest first, each image with a short-lived URL to fetch it."""
    config = settings()
    items, next_cursor = stores().predictions.waiting_for_review(limit, cursor)
    for item in items:
        item["name"] = item["image_key"][len(config.incoming_prefix):]
        item["sampled"] = bool(item.get("sampled"))
    return {"items": with_image_urls(items), "next": next_cursor}
