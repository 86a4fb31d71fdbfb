"""The drift statistics (training/drift.py) against scipy's and against known shifts."""

from __future__ import annotations

import json
import random

import pytest
from scipy import stats

from training import drift
from training.drift import DriftInputError, Reference, Thresholds, Window


@pytest.mark.parametrize("degrees", [1, 2, 9, 40, 132])
@pytest.mark.parametrize("statistic", [0.01, 0.5, 3.0, 12.0, 60.0, 250.0])
def test_the_chi_square_p_value_is_scipys(statistic, degrees):
    assert drift.chi_square_p_value(statistic, degrees) == pytest.approx(stats.chi2.sf(statistic, degrees),
                                                                          rel=1e-9, abs=1e-300)


def test_confidence_bins_cover_zero_to_one_and_refuse_what_is_not_a_probability():
    assert drift.confidence_bin(0.0) == 0
    assert drift.confidence_bin(0.3) == 1
    assert drift.confidence_bin(1.0) == len(drift.CONFIDENCE_EDGES) - 2
    for bad in (-0.1, 1.01, float("nan")):
        with pytest.raises(DriftInputError):
            drift.confidence_bin(bad)


def _draw(rng: random.Random, n: int, *, shift: float = 0.0, confidence: float = 0.95,
          classes: tuple[str, ...] = tuple("0123456789")):
    confidences = [min(1.0, max(0.0, rng.gauss(confidence, 0.05))) for _ in range(n)]
    labels = [rng.choice(classes) for _ in range(n)]
    embeddings = [[rng.gauss(shift, 1.0) for _ in range(drift.EMBEDDING_DIMS)] for _ in range(n)]
    return confidences, labels, embeddings


THRESHOLDS = Thresholds(psi=0.25, class_p_value=0.001, embedding_distance=0.5)  # fixed: the synthetic shifts are sized to it


def test_windows_from_the_reference_distribution_do_not_drift():
    rng = random.Random(7)
    reference = Reference.of(*_draw(rng, 300))
    windows = [drift.compare(reference, Window.of(*_draw(rng, 200))) for _ in range(20)]
    assert all(not statistics.reasons(THRESHOLDS) for statistics in windows), windows


def test_each_kind_of_shift_is_seen_by_its_own_statistic():
    rng = random.Random(8)
    reference = Reference.of(*_draw(rng, 300))
    unsure = drift.compare(reference, Window.of(*_draw(rng, 200, confidence=0.6)))
    assert unsure.confidence_psi > THRESHOLDS.psi
    one_class = drift.compare(reference, Window.of(*_draw(rng, 200, classes=("3", "8"))))
    assert one_class.class_p_value < THRESHOLDS.class_p_value
    moved = drift.compare(reference, Window.of(*_draw(rng, 200, shift=1.0)))
    assert moved.embedding_distance == pytest.approx(1.0, abs=0.2)
    assert [len(s.reasons(THRESHOLDS)) for s in (unsure, one_class, moved)] == [1, 1, 1]


def test_a_reference_survives_json_and_a_bad_one_is_refused():
    reference = Reference.of(*_draw(random.Random(9), 50))
    assert Reference.from_dict(json.loads(json.dumps(reference.to_dict()))) == reference
    broken = reference.to_dict() | {"confidence_counts": [1, 2]}
    with pytest.raises(DriftInputError):
        Reference.from_dict(broken)
    with pytest.raises(DriftInputError):
        Reference.from_dict({"images": 3})


def test_a_window_refuses_embeddings_of_the_wrong_size():
    with pytest.raises(DriftInputError):
        Window.of([0.9], ["1"], [[0.0, 1.0]])
    with pytest.raises(DriftInputError):
        Window.of([], [], [])
