"""Image drift: what the test split looked like to a model, and how far live traffic is from it.

The one definition every side shares. The final training job builds a `Reference` from its
test split (each image's top-1 confidence, top-1 class and embedding summary) and writes it
into the artefact as REFERENCE_FILE; the endpoint returns the embedding summary of each image
when asked (EMBEDDING_ATTRIBUTE); the Lambda's schedule summarises a rolling window of one
model version's live predictions as a `Window` and `compare`s it with the reference:

- confidence: the Population Stability Index over fixed CONFIDENCE_EDGES bins;
- classes: the p-value of the two-sample chi-square test of the reference's and the window's
  predicted-class counts (a small p: the class mix moved);
- embeddings: the distance between the window's and the reference's embedding means, each
  component scaled by the reference's spread (the root mean square of per-component z-shifts).

The embedding summary is the penultimate layer's features projected onto the test split's
first EMBEDDING_DIMS principal components (training/embedding.py): a few numbers per image,
comparable across images of one model version only.

Standard library only: this file travels in the Lambda zip (vendor/training), in the
training source dir and in the model artefact (`code/training/`).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

REFERENCE_FILE = "drift_reference.json"
# The custom attribute that asks the endpoint for each image's embedding summary
# (`X-Amzn-SageMaker-Custom-Attributes: embeddings=1`); the answer then carries "embeddings".
EMBEDDING_ATTRIBUTE = "embeddings"
EMBEDDING_DIMS = 8
# Fixed bins, not quantiles: a trained model's confidences pile up near 1, where quantile edges
# of a small test split collapse into one.
CONFIDENCE_EDGES = (0.0, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
# Added to every bin's and class's count before fractions are taken, so an empty bin on one side
# gives a finite PSI and a finite chi-square term.
SMOOTHING = 0.5


class DriftInputError(ValueError):
    """A reference or window that cannot be compared (empty, wrong shape, out of range)."""


def confidence_bin(confidence: float) -> int:
    """The CONFIDENCE_EDGES bin of a top-1 probability; 1.0 falls in the last bin."""
    if not 0.0 <= confidence <= 1.0 or math.isnan(confidence):
        raise DriftInputError(f"a confidence is a probability in [0, 1], not {confidence!r}")
    for index, upper in enumerate(CONFIDENCE_EDGES[1:-1]):
        if confidence < upper:
            return index
    return len(CONFIDENCE_EDGES) - 2


def confidence_counts(confidences: Iterable[float]) -> list[int]:
    counts = [0] * (len(CONFIDENCE_EDGES) - 1)
    for confidence in confidences:
        counts[confidence_bin(confidence)] += 1
    return counts


def _check_embeddings(embeddings: Sequence[Sequence[float]], count: int) -> None:
    if len(embeddings) != count:
        raise DriftInputError(f"{len(embeddings)} embeddings for {count} images")
    for row in embeddings:
        if len(row) != EMBEDDING_DIMS or not all(math.isfinite(value) for value in row):
            raise DriftInputError(f"an embedding summary is {EMBEDDING_DIMS} finite numbers, not {list(row)!r}")


def _mean(rows: Sequence[Sequence[float]]) -> list[float]:
    return [sum(column) / len(rows) for column in zip(*rows)]


@dataclass(frozen=True)
class Window:
    """What a set of images looked like to one model: counts per confidence bin, counts per
    predicted class, and the mean embedding summary."""

    images: int
    confidence_counts: tuple[int, ...]
    class_counts: Mapping[str, int]
    embedding_mean: tuple[float, ...]

    @classmethod
    def of(cls, confidences: Sequence[float], labels: Sequence[str],
           embeddings: Sequence[Sequence[float]]) -> "Window":
        if not confidences or len(confidences) != len(labels):
            raise DriftInputError(f"a window needs images: {len(confidences)} confidences, {len(labels)} labels")
        _check_embeddings(embeddings, len(confidences))
        return cls(len(confidences), tuple(confidence_counts(confidences)), dict(Counter(map(str, labels))),
                   tuple(_mean(embeddings)))


@dataclass(frozen=True)
class Reference(Window):
    """A Window of the test split, with the spread of each embedding component (its standard
    deviation over the test images) that scales the embedding distance."""

    embedding_std: tuple[float, ...] = field(default=())

    @classmethod
    def of(cls, confidences: Sequence[float], labels: Sequence[str],  # type: ignore[override]
           embeddings: Sequence[Sequence[float]]) -> "Reference":
        window = Window.of(confidences, labels, embeddings)
        if window.images < 2:
            raise DriftInputError("a reference needs at least two test images")
        std = tuple(math.sqrt(sum((row[j] - window.embedding_mean[j]) ** 2 for row in embeddings)
                              / (window.images - 1)) for j in range(EMBEDDING_DIMS))
        return cls(window.images, window.confidence_counts, window.class_counts, window.embedding_mean, std)

    def to_dict(self) -> dict:
        return {"images": self.images, "confidence_edges": list(CONFIDENCE_EDGES),
                "confidence_counts": list(self.confidence_counts), "class_counts": dict(self.class_counts),
                "embedding_mean": list(self.embedding_mean), "embedding_std": list(self.embedding_std)}

    @classmethod
    def from_dict(cls, data: Mapping) -> "Reference":
        """The reference as to_dict wrote it (JSON, or DynamoDB's Decimals); DriftInputError otherwise."""
        try:
            if [float(edge) for edge in data["confidence_edges"]] != list(CONFIDENCE_EDGES):
                raise DriftInputError("the reference's confidence bins are not this code's CONFIDENCE_EDGES")
            reference = cls(int(data["images"]), tuple(int(c) for c in data["confidence_counts"]),
                            {str(k): int(v) for k, v in data["class_counts"].items()},
                            tuple(float(v) for v in data["embedding_mean"]),
                            tuple(float(v) for v in data["embedding_std"]))
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            if isinstance(error, DriftInputError):
                raise
            raise DriftInputError(f"not a drift reference: {error!r}") from None
        if (len(reference.confidence_counts) != len(CONFIDENCE_EDGES) - 1
                or sum(reference.confidence_counts) != reference.images
                or sum(reference.class_counts.values()) != reference.images
                or len(reference.embedding_mean) != EMBEDDING_DIMS
                or len(reference.embedding_std) != EMBEDDING_DIMS):
            raise DriftInputError("the drift reference's counts or embedding sizes do not add up")
        return reference


# --- the statistics -------------------------------------------------------------------------------


def psi(reference_counts: Sequence[int], live_counts: Sequence[int]) -> float:
    """Population Stability Index: sum over bins of (live - ref) * ln(live / ref), fractions smoothed."""
    if len(reference_counts) != len(live_counts):
        raise DriftInputError("PSI needs the same bins on both sides")
    ref_total = sum(reference_counts) + SMOOTHING * len(reference_counts)
    live_total = sum(live_counts) + SMOOTHING * len(live_counts)
    value = 0.0
    for ref, live in zip(reference_counts, live_counts):
        p, q = (ref + SMOOTHING) / ref_total, (live + SMOOTHING) / live_total
        value += (q - p) * math.log(q / p)
    return value


def chi_square_p_value(statistic: float, degrees: int) -> float:
    """P(X >= statistic) for X ~ chi-square(degrees): the regularised upper incomplete gamma Q(k/2, x/2)."""
    if degrees < 1:
        return 1.0
    a, x = degrees / 2.0, statistic / 2.0
    if x <= 0:
        return 1.0
    log_prefix = a * math.log(x) - x - math.lgamma(a)
    if x < a + 1:  # the series for P converges fast here
        term = total = 1.0 / a
        n = a
        while abs(term) > abs(total) * 1e-15:
            n += 1
            term *= x / n
            total += term
        return max(0.0, 1.0 - total * math.exp(log_prefix))
    # Lentz's continued fraction for Q (Numerical Recipes, gcf)
    tiny = 1e-300
    b = x + 1.0 - a
    c, d = 1.0 / tiny, 1.0 / b
    h = d
    for i in range(1, 1000):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return min(1.0, math.exp(log_prefix) * h)


def class_shift_p_value(reference: Mapping[str, int], live: Mapping[str, int]) -> float:
    """The two-sample chi-square test of homogeneity over the classes either side predicted: the
    probability of a difference at least this large if both drew from one class mix."""
    classes = sorted(set(reference) | set(live))
    ref_total, live_total = sum(reference.values()), sum(live.values())
    if not ref_total or not live_total:
        raise DriftInputError("the class test needs images on both sides")
    total = ref_total + live_total
    statistic = 0.0
    for name in classes:
        observed = (reference.get(name, 0) + SMOOTHING, live.get(name, 0) + SMOOTHING)
        column = observed[0] + observed[1]
        for side_total, seen in zip((ref_total, live_total), observed):
            expected = side_total * column / total
            statistic += (seen - expected) ** 2 / expected
    return chi_square_p_value(statistic, len(classes) - 1)


def embedding_distance(reference: Reference, live_mean: Sequence[float]) -> float:
    """RMS over components of (live mean - reference mean) / reference std: 1.0 is a shift of one
    reference spread in every component."""
    if len(live_mean) != EMBEDDING_DIMS:
        raise DriftInputError(f"an embedding mean has {EMBEDDING_DIMS} components, not {len(live_mean)}")
    shifts = [(live - ref) / max(std, 1e-6)
              for live, ref, std in zip(live_mean, reference.embedding_mean, reference.embedding_std)]
    return math.sqrt(sum(shift * shift for shift in shifts) / EMBEDDING_DIMS)


@dataclass(frozen=True)
class Thresholds:
    """Above any of these a window has drifted (stage settings DRIFT_*; defaults in chalice_app/config.py)."""

    psi: float
    class_p_value: float
    embedding_distance: float


# The stage's defaults (DRIFT_*), measured on the digits model (tests/inference/test_drift_on_digits.py):
# over 1,800 windows of 200 same-distribution images, PSI stayed at 0.03-0.18 (above 0.25 in 6 with a
# 180-image reference), the class p-value never fell under 0.001 and the distance never rose over
# 0.22; inverted digits gave 1.93, 7.6e-30 and 0.52, rotated ones 0.30, 4.6e-52 and 0.75.
DEFAULT_THRESHOLDS = Thresholds(psi=0.25, class_p_value=0.001, embedding_distance=0.3)


@dataclass(frozen=True)
class Statistics:
    images: int
    confidence_psi: float
    class_p_value: float
    embedding_distance: float

    def reasons(self, thresholds: Thresholds) -> list[str]:
        """Why this window has drifted, one line per statistic over its threshold; empty: it has not."""
        reasons = []
        if self.confidence_psi > thresholds.psi:
            reasons.append(f"confidence PSI {self.confidence_psi:.3f} > {thresholds.psi}")
        if self.class_p_value < thresholds.class_p_value:
            reasons.append(f"class-mix p-value {self.class_p_value:.2e} < {thresholds.class_p_value}")
        if self.embedding_distance > thresholds.embedding_distance:
            reasons.append(f"embedding distance {self.embedding_distance:.3f} > {thresholds.embedding_distance}")
        return reasons

    def to_dict(self) -> dict:
        return {"images": self.images, "confidence_psi": self.confidence_psi, "class_p_value": self.class_p_value,
                "embedding_distance": self.embedding_distance}


def compare(reference: Reference, window: Window) -> Statistics:
    return Statistics(window.images, psi(reference.confidence_counts, window.confidence_counts),
                      class_shift_p_value(reference.class_counts, window.class_counts),
                      embedding_distance(reference, window.embedding_mean))
