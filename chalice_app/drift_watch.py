"""Image drift (#17 part 3): the live model's newest window of live images against its test split.

Every minute (its own schedule, app.py `drift_check`) the live version's newest
DRIFT_WINDOW_IMAGES predictions that carry an embedding summary (the predictions table's `drift`
index) are summarised as a training.drift.Window and compared with the version's reference once
there are DRIFT_MIN_IMAGES of them. The statistics are published as CloudWatch metrics (EMF, per
ModelVersion, and `Drifted` for the service too, which the ImageDriftAlarm watches). Over a
threshold the version starts drifting: one drift event for the episode (store/drift.py: exactly
once, whatever is repeated), and its predictions are sampled for review at
DRIFT_REVIEW_SAMPLE_RATE (review.py). A later window under every threshold ends the episode.

The reference is read out of the version's model.tar.gz the first time it is needed and kept on
its registry item (`drift_reference`: {"reference": ...} or {"missing": why}), so the archive is
read once per version, here rather than when the model is registered: the gate and deployment
stay as they were, and versions registered before references existed are checked (or said to
have none) all the same. A version with none is logged once, when that is kept, and GET /drift
says why it is not checked.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from aws_lambda_powertools.metrics import EphemeralMetrics, MetricUnit
from botocore.exceptions import ClientError

from training.drift import REFERENCE_FILE, DriftInputError, Reference, Statistics, Window, compare

from . import aws, clock, drift_reference
from .config import settings
from .observability import logger, metrics
from .stores import stores

# DynamoDB numbers go down to 1e-130 and CloudWatch's to 2^-360 (about 4e-109): a p-value below this
# says "the mix moved" as well as 0 does.
_SMALLEST = 1e-100


@dataclass(frozen=True)
class Check:
    """One version's check: compared (with its statistics and reasons) or why not."""

    model_version: str
    compared: bool
    images: int
    reason: str | None = None
    statistics: Statistics | None = None
    reasons: tuple[str, ...] = ()
    began: bool = False
    ended: bool = False


def _storable(value: float) -> float:
    """A statistic as DynamoDB and CloudWatch take it: 6 significant digits, nothing below _SMALLEST."""
    return 0.0 if abs(value) < _SMALLEST else float(f"{value:.6g}")


def figures(statistics: Statistics, reasons: list[str]) -> dict[str, Any]:
    return {"statistics": {name: _storable(v) if isinstance(v, float) else v
                           for name, v in statistics.to_dict().items()},
            "reasons": list(reasons)}


def window_of(items: list[Mapping[str, Any]]) -> Window:
    """The window's summary: each image's top-1 confidence and class, and its embedding."""
    rows = [item for item in items if item.get("labels") and item.get("embedding")]
    confidences = [min(1.0, max(0.0, float(item["labels"][0]["probability"]))) for item in rows]
    return Window.of(confidences, [str(item["labels"][0]["label"]) for item in rows],
                     [[float(v) for v in item["embedding"]] for item in rows])


def _read(model: Mapping[str, Any]) -> dict[str, Any]:
    artifact = model.get("artifact")
    if not artifact:
        return {"missing": "the registry names no artefact for it"}
    try:
        reference = drift_reference.read_reference(artifact)
    except DriftInputError as error:
        return {"missing": f"its {REFERENCE_FILE} cannot be used: {error}"}
    except ClientError as error:
        if aws.error_code(error) not in ("NoSuchKey", "404"):
            raise  # a passing fault: the next minute's check reads it again
        return {"missing": f"its model.tar.gz is gone ({artifact})"}
    if reference is None:
        return {"missing": f"its model.tar.gz has no {REFERENCE_FILE}"}
    return {"reference": reference.to_dict()}


def reference_of(version: str) -> Reference | str:
    """The version's reference, or why it has none."""
    registry = stores().registry
    model = registry.get(version)
    if model is None:
        return "the version is not in the model registry"
    kept = model.get("drift_reference")
    if kept is None:
        kept = _read(model)
        if registry.keep_drift_reference(version, kept):
            if "missing" in kept:
                logger.warning("no drift check for this model version", extra={"model_version": version,
                                                                                "reason": kept["missing"]})
        else:  # kept by a concurrent check first: the same artefact, so the same answer
            kept = (registry.get(version) or {}).get("drift_reference") or kept
    if "missing" in kept:
        return str(kept["missing"])
    return Reference.from_dict(kept["reference"])


def publish(version: str, statistics: Statistics, drifted: bool) -> None:
    """The window's statistics per ModelVersion, and Drifted (0/1) for the service as a whole too,
    the metric the ImageDriftAlarm watches (an alarm names exact dimensions, not any version's)."""
    per_version = EphemeralMetrics(namespace=metrics.namespace, service=metrics.service)
    per_version.add_dimension(name="ModelVersion", value=version)
    per_version.add_metric(name="DriftConfidencePSI", unit=MetricUnit.NoUnit,
                           value=_storable(statistics.confidence_psi))
    per_version.add_metric(name="DriftClassPValue", unit=MetricUnit.NoUnit, value=_storable(statistics.class_p_value))
    per_version.add_metric(name="DriftEmbeddingDistance", unit=MetricUnit.NoUnit,
                           value=_storable(statistics.embedding_distance))
    per_version.add_metric(name="DriftWindowImages", unit=MetricUnit.Count, value=statistics.images)
    per_version.add_metric(name="Drifted", unit=MetricUnit.Count, value=1 if drifted else 0)
    per_version.flush_metrics()
    service = EphemeralMetrics(namespace=metrics.namespace, service=metrics.service)
    service.add_metric(name="Drifted", unit=MetricUnit.Count, value=1 if drifted else 0)
    service.flush_metrics()


def check(version: str) -> Check:
    """Compare the version's newest window with its reference; record, publish, begin or end an episode."""
    config, store = settings(), stores()
    reference = reference_of(version)
    if isinstance(reference, str):
        return Check(version, False, 0, reason=f"no drift reference: {reference}")
    items = store.predictions.drift_window(version, config.drift_window_images)
    if len(items) < config.drift_min_images:
        return Check(version, False, len(items),
                     reason=f"{len(items)} images in its window, "
                            f"fewer than DRIFT_MIN_IMAGES ({config.drift_min_images})")
    statistics = compare(reference, window_of(items))
    reasons = statistics.reasons(config.drift_thresholds)
    publish(version, statistics, bool(reasons))
    now, recorded = clock.now(), figures(statistics, reasons)
    state = store.drift.state(version) or {}
    began = ended = False
    if reasons and not state.get("drifting"):
        began = store.drift.begin(version, now, recorded, asdict(config.drift_thresholds))
    elif not reasons and state.get("drifting"):
        ended = store.drift.end(version, state["episode"], now, recorded)
    else:
        store.drift.record(version, now, recorded)
    if began or ended:
        logger.warning("drift episode " + ("began" if began else "ended"),
                       extra={"model_version": version, "statistics": recorded["statistics"], "reasons": reasons})
    return Check(version, True, statistics.images, statistics=statistics, reasons=tuple(reasons),
                 began=began, ended=ended)


def check_live() -> list[Check]:
    """The schedule's check. Only the live version: an update moves all traffic to the new one, so a
    retired version's window no longer changes (an episode open on it stays as it was)."""
    live = stores().registry.live()
    if live is None:
        return []
    result = check(live["model_version"])
    logger.info("drift check", extra={"model_version": result.model_version, "compared": result.compared,
                                      "images": result.images, "reason": result.reason,
                                      "reasons": list(result.reasons)})
    return [result]


def _version_view(model: Mapping[str, Any] | None, state: Mapping[str, Any] | None, version: str) -> dict[str, Any]:
    state, kept = state or {}, (model or {}).get("drift_reference")
    if model is None:
        has_reference, why = False, "the version is not in the model registry"
    else:  # None: not read yet (the schedule reads it when it first checks the version)
        has_reference, why = (None, None) if kept is None else ("reference" in kept, kept.get("missing"))
    return {"model_version": version, "status": (model or {}).get("status"),
            "has_reference": has_reference, "no_reference_reason": why,
            "drifting": bool(state.get("drifting")), "episode": state.get("episode"),
            "statistics": state.get("statistics"), "reasons": state.get("reasons", []),
            "checked_at": state.get("checked_at")}


def report(limit: int, cursor: str | None) -> dict[str, Any]:
    """GET /drift: the drift events newest first (paginated), each version's latest statistics and
    whether it is drifting, and the settings in force."""
    config, store = settings(), stores()
    events, next_cursor = store.drift.events(limit, cursor)
    models = {model["model_version"]: model for model in store.registry.all()}
    states = {state["model_version"]: state for state in store.drift.states()}
    names = [*models, *(version for version in states if version not in models)]
    versions = [_version_view(models.get(version), states.get(version), version) for version in names]
    return {"thresholds": asdict(config.drift_thresholds), "window_images": config.drift_window_images,
            "min_images": config.drift_min_images, "review_sample_rate": config.drift_review_sample_rate,
            "versions": versions, "items": events, "next": next_cursor}
