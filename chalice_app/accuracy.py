"""Live accuracy: what the review labels say about each model version on live traffic.

Only the sampled labels (an unbiased random sample of all predictions, review.py) measure
accuracy: the low-confidence ones are chosen by the model's own doubt, so their share of
mistakes says nothing about the traffic as a whole. Every label, sampled or not, counts in
the confusion (predicted -> label), and the low-confidence ones apart: they show where the
model hesitates.

The counts live in the pipeline table, under pk ACCURACY (not on the registry's MODEL/<version>
item: a prediction's version may have no registry item, and an ADD on a missing item would
create a partial MODEL item that the registry would list as a model):

- sk <version>: `sampled_reviews`, `sampled_correct`, `reviews`, `low_confidence_reviews`;
- sk <version>#<predicted>#<label>: one item per confusion pair, `reviews` and `low_confidence`.

One small item per pair rather than a map on one item: an ADD on a nested map path fails while
the map does not exist, and one item holding every pair of a version would grow with every new
label people invent, towards DynamoDB's 400 KB item limit. Labels and versions reach the
request only as expression values, never as attribute names, so '.' and '-' in a label need no
escaping. The counters are written in the same transaction as the label itself
(store/predictions.py, `finish_review`), so each label counts exactly once however often it is
asked for. Everything here is pure: request builders and figures.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .store.accuracy import ACCURACY_PK
from .store.predictions import LOW_CONFIDENCE

Z_95 = 1.959963984540054  # the standard normal's 97.5th percentile: a two-sided 95 % interval
CONFUSION_PAIRS = 20  # the pairs GET /models shows per version, most frequent first


@dataclass(frozen=True)
class Outcome:
    """One recorded label, as the counters see it."""

    model_version: str
    predicted: str | None  # the top-1 label; None when the prediction had no labels
    label: str
    sampled: bool
    low_confidence: bool

    @property
    def correct(self) -> bool:
        return self.predicted == self.label


def outcome_of(item: Mapping[str, Any], label: str) -> Outcome | None:
    """The outcome of labelling this prediction item `label`; None when it has no model version
    to count it for."""
    version = item.get("model_version")
    if not version:
        return None
    labels = item.get("labels") or []
    return Outcome(model_version=str(version), predicted=labels[0]["label"] if labels else None, label=label,
                   sampled=bool(item.get("sampled")), low_confidence=item.get("review_reason") == LOW_CONFIDENCE)


def pair_key(version: str, predicted: str, label: str) -> str:
    # Labels never contain '#' ([A-Za-z0-9._-]), so the pair is the sort key's last two fields.
    return f"{version}#{predicted}#{label}"


def counter_updates(table: str, outcome: Outcome) -> list[dict[str, Any]]:
    """TransactWriteItems Update actions counting `outcome` for its version (ADD creates the items)."""
    one, flag = 1, lambda condition: 1 if condition else 0
    totals = {"Update": {
        "TableName": table, "Key": {"pk": ACCURACY_PK, "sk": outcome.model_version},
        "UpdateExpression": "SET model_version = :version ADD sampled_reviews :sampled, sampled_correct :correct, "
                            "reviews :one, low_confidence_reviews :low",
        "ExpressionAttributeValues": {":version": outcome.model_version, ":one": one,
                                      ":sampled": flag(outcome.sampled),
                                      ":correct": flag(outcome.sampled and outcome.correct),
                                      ":low": flag(outcome.low_confidence)}}}
    if outcome.predicted is None:
        return [totals]
    pair = {"Update": {
        "TableName": table, "Key": {"pk": ACCURACY_PK, "sk": pair_key(outcome.model_version, outcome.predicted,
                                                                       outcome.label)},
        "UpdateExpression": "SET model_version = :version, predicted = :predicted, #label = :label "
                            "ADD reviews :one, low_confidence :low",
        "ExpressionAttributeNames": {"#label": "label"},  # a placeholder: DynamoDB reserves many plain words
        "ExpressionAttributeValues": {":version": outcome.model_version, ":predicted": outcome.predicted,
                                      ":label": outcome.label, ":one": one, ":low": flag(outcome.low_confidence)}}}
    return [totals, pair]


def wilson_interval(correct: int, total: int, z: float = Z_95) -> tuple[float, float] | None:
    """The Wilson score interval for a proportion of `correct` in `total` (None when total is 0).
    Unlike p ± z·sqrt(p(1-p)/n) it stays inside [0, 1] and does not collapse to a point at 0 or n,
    which matters for the small samples a review queue gives."""
    if total <= 0:
        return None
    if not 0 <= correct <= total:
        raise ValueError(f"correct ({correct}) must be between 0 and total ({total})")
    p, z2 = correct / total, z * z
    denominator = 1 + z2 / total
    centre = (p + z2 / (2 * total)) / denominator
    half = z * math.sqrt(p * (1 - p) / total + z2 / (4 * total * total)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def live_accuracy(totals: Mapping[str, Any] | None) -> dict[str, Any]:
    """`live_accuracy` of a version, from its counter item (None: nothing counted yet)."""
    totals = totals or {}
    sampled, correct = int(totals.get("sampled_reviews", 0)), int(totals.get("sampled_correct", 0))
    interval = wilson_interval(correct, sampled)
    return {"sampled": sampled, "correct": correct, "accuracy": correct / sampled if sampled else None,
            "interval": [round(interval[0], 4), round(interval[1], 4)] if interval else None}


def confusion(totals: Mapping[str, Any] | None, pairs: Iterable[Mapping[str, Any]],
              limit: int = CONFUSION_PAIRS) -> dict[str, Any]:
    """`confusion` of a version: its reviewed counts and its predicted -> label pairs, the
    low-confidence ones' most frequent first (then all reviews'), at most `limit` of them."""
    totals = totals or {}
    rows = [{"predicted": p["predicted"], "label": p["label"], "low_confidence": int(p.get("low_confidence", 0)),
             "reviewed": int(p.get("reviews", 0))} for p in pairs]
    rows.sort(key=lambda row: (-row["low_confidence"], -row["reviewed"], row["predicted"], row["label"]))
    return {"reviewed": int(totals.get("reviews", 0)), "low_confidence": int(totals.get("low_confidence_reviews", 0)),
            "pairs": rows[:limit], "more_pairs": max(0, len(rows) - limit)}


def by_version(items: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Counter items (pk ACCURACY) -> version -> {"live_accuracy": …, "confusion": …}."""
    totals: dict[str, Mapping[str, Any]] = {}
    pairs: dict[str, list[Mapping[str, Any]]] = {}
    for item in items:
        version = str(item["model_version"])
        if "predicted" in item:
            pairs.setdefault(version, []).append(item)
        else:
            totals[version] = item
    return {version: figures(totals.get(version), pairs.get(version, ())) for version in {*totals, *pairs}}


def figures(totals: Mapping[str, Any] | None, pairs: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    return {"live_accuracy": live_accuracy(totals), "confusion": confusion(totals, pairs)}


def with_figures(model: dict[str, Any], counted: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
    """A registry record with its version's live figures (zero counts where none are counted), as the
    API shows it: without the drift reference kept on it (GET /drift says whether it has one)."""
    shown = {key: value for key, value in model.items() if key != "drift_reference"}
    return {**shown, **(counted.get(model["model_version"]) or figures(None, ()))}
