"""The HTTP API's logic: each function takes plain arguments and returns a JSON-ready dict.

Errors are Chalice's view errors, which Chalice turns into JSON bodies with the
right status code (400, 404, 409, 410).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

from chalice import BadRequestError, ChaliceViewError, ConflictError, NotFoundError

from training.image_contract import SUFFIXES, has_image_suffix

from . import accuracy, aws, drift_watch, reports, retraining, review
from .image_urls import with_image_urls
from .config import settings
from .stores import stores
from .store.drift import decode_cursor as drift_cursor
from .store.predictions import REVIEW_CURSOR, decode_cursor, public

# What a label may be: for uploads under training-data/<label>/ and for labels given in review.
_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
LABEL_RULE = "label must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"


def valid_label(label: object) -> bool:
    # fullmatch: `$` would let a trailing newline through.
    return isinstance(label, str) and _LABEL.fullmatch(label) is not None


class GoneError(ChaliceViewError):
    """410: what was asked about existed once and is gone."""

    STATUS_CODE = 410


_RUN_ID = re.compile(r"^r\d{12}-[0-9a-f]{6}$")
MAX_PAGE = 100


def page_size(raw: str | None, default: int = 20) -> int:
    if raw is None:
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_PAGE:
        raise BadRequestError(f"limit must be an integer from 1 to {MAX_PAGE}")
    return int(raw)


def get_prediction(name: str) -> dict[str, Any]:
    key = settings().incoming_prefix + unquote(name)
    item = stores().predictions.get(key)
    if item is None:
        raise NotFoundError(f"no prediction for {key}")
    return public(item)


def _check_cursor(cursor: str | None, decode: Callable[[str], Any]) -> None:
    """A pagination cursor the route's store can decode, else 400 (None: the first page)."""
    if cursor:
        try:
            decode(cursor)
        except ValueError as error:
            raise BadRequestError(str(error)) from error


def list_predictions(limit: str | None, cursor: str | None) -> dict[str, Any]:
    _check_cursor(cursor, decode_cursor)
    items, next_cursor = stores().predictions.recent(page_size(limit), cursor)
    return {"items": with_image_urls(items), "next": next_cursor}



def _filename(body: dict[str, Any]) -> str:
    name = str(body.get("filename") or "image.jpg").rsplit("/", 1)[-1]
    if not has_image_suffix(name):
        raise BadRequestError(f"filename must end with one of {', '.join(SUFFIXES)}")
    return name


def upload_url(body: dict[str, Any] | None) -> dict[str, Any]:
    """A presigned PUT for a new image: under incoming/ to classify, or under a label to train."""
    config = settings()
    body = body or {}
    target = body.get("target", "incoming")
    name = _filename(body)
    suffix = name[name.rfind("."):].lower()
    if target == "incoming":
        key = f"{config.incoming_prefix}{uuid.uuid4().hex}{suffix}"
    elif target == "training":
        label = str(body.get("label", ""))
        if not valid_label(label):
            raise BadRequestError(LABEL_RULE)
        split = body.get("split")
        if split not in (None, "train", "valid", "test"):
            raise BadRequestError("split must be train, valid or test (or left out: assigned from the key)")
        key = f"{config.training_prefix}{split + '/' if split else ''}{label}/{uuid.uuid4().hex[:8]}-{name}"
    else:
        raise BadRequestError("target must be 'incoming' or 'training'")
    url = aws.client("s3").generate_presigned_url(
        "put_object", Params={"Bucket": config.bucket, "Key": key}, ExpiresIn=config.upload_url_seconds)
    return {"method": "PUT", "url": url, "key": key, "expires_in": config.upload_url_seconds}


def list_models() -> dict[str, Any]:
    """The registry, each version with its live accuracy (from the sampled review labels) and the
    confusion its review labels show."""
    registry = stores().registry
    counted = accuracy.by_version(stores().accuracy.all())
    live = registry.live()
    return {"items": [accuracy.with_figures(model, counted) for model in registry.all()],
            "live": accuracy.with_figures(live, counted) if live else None}


def live_model() -> dict[str, Any]:
    live = stores().registry.live()
    if live is None:
        raise NotFoundError("no model is live yet")
    return accuracy.with_figures(live, accuracy.by_version(stores().accuracy.of(live["model_version"])))


def list_runs(limit: str | None, cursor: str | None) -> dict[str, Any]:
    if cursor and not _RUN_ID.match(cursor):
        raise BadRequestError("the pagination cursor is not valid")
    items, next_cursor = stores().runs.recent(page_size(limit), cursor)
    return {"items": items, "next": next_cursor}


def get_run(run_id: str) -> dict[str, Any]:
    run = stores().runs.get(run_id) if _RUN_ID.match(run_id) else None
    if run is None:
        raise NotFoundError(f"no run {run_id}")
    return run


def run_report(run_id: str) -> str:
    """The HTML report of the run's final job (chalice_app/reports.py)."""
    try:
        return reports.report_html(get_run(run_id))
    except reports.NoReport as error:
        raise NotFoundError(str(error)) from error


def start_run() -> dict[str, Any]:
    """Ask for a run by hand, on the data as it is when it starts: the run, STARTING (the route
    answers 202); the schedule lists the data and starts tuning within a minute, off the request.
    Too little data shows on the run as REFUSED, with the reason."""
    outcome = retraining.request_run()
    if not outcome.started:
        raise ConflictError(outcome.reason)
    return get_run(outcome.run_id)


def list_review(limit: str | None, cursor: str | None) -> dict[str, Any]:
    """The predictions waiting for a label, oldest first, each with a short-lived URL to its image."""
    _check_cursor(cursor, lambda text: decode_cursor(text, REVIEW_CURSOR))
    return review.waiting(page_size(limit), cursor)


def label_review(name: str, body: dict[str, Any] | None) -> dict[str, Any]:
    """Label a prediction waiting for review (`incoming/<name>`): the image becomes training data
    under the label. The same label again answers as the first time; another one is a conflict."""
    label = (body or {}).get("label") if isinstance(body, dict) else None
    if not valid_label(label):
        raise BadRequestError(LABEL_RULE)
    key = settings().incoming_prefix + unquote(name)
    try:
        return review.label_image(key, label)
    except review.NotInReview as error:
        raise NotFoundError(str(error)) from error
    except review.LabelConflict as error:
        raise ConflictError(str(error)) from error
    except review.ImageGone as error:
        raise GoneError(str(error)) from error


def list_drift(limit: str | None, cursor: str | None) -> dict[str, Any]:
    """Drift events newest first, each model version's latest drift statistics, and the thresholds."""
    _check_cursor(cursor, drift_cursor)
    return drift_watch.report(page_size(limit), cursor)
