"""Drift statistics on the real trained digits model, through the endpoint handler with embeddings.

The session's trained model's test split is cut in two halves, each label's files alternating
between them (sorted by name), so both halves have the same class mix: the no-drift case. A
split by a hash of the name left the halves' class mixes apart by chance (chi-square p 0.035
between the whole halves), and windows resampled from one half then flagged the class mix
against the other in 370 of 1,800 windows (200 seeds): an artefact of resampling one fixed
set of 180 images, not of traffic.

One half is the reference; 1,000 images resampled (seeded) from the other stream through
windows of 200 sliding by 100, compared with that reference and with the job's own reference
(drift_reference.json: the whole test split, computed by the job in eager fp32, compared here
with what the serving engine answers). Then the same half inverted, or rotated a quarter turn:
the first window has drifted.
"""

from __future__ import annotations

import base64
import io
import json
import random
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from inference import inference as handler
from training import drift
from training.drift import DEFAULT_THRESHOLDS, EMBEDDING_ATTRIBUTE, REFERENCE_FILE, Reference, Window

THRESHOLDS = DEFAULT_THRESHOLDS  # the stage's
STREAM, WINDOW, SLIDE = 1000, 200, 100
Answer = tuple[float, str, list[float]]  # top-1 probability, top-1 label, embedding summary


@pytest.fixture(scope="module")
def model(model_dir):
    return handler.model_fn(model_dir)


def halves(digits_dir: Path) -> tuple[list[bytes], list[bytes]]:
    labels = sorted(path for path in (digits_dir / "test").iterdir() if path.is_dir())
    files = [sorted(label.glob("*.png")) for label in labels]
    return ([path.read_bytes() for each in files for path in each[0::2]],
            [path.read_bytes() for each in files for path in each[1::2]])


def answers(model, bodies: list[bytes]) -> list[Answer]:
    """Each image's top-1 and summary, asked for as the Lambda asks: the custom attribute."""
    found: list[Answer] = []
    for start in range(0, len(bodies), 32):
        body = json.dumps({"images": [base64.b64encode(data).decode() for data in bodies[start:start + 32]]})
        request = handler.input_fn(body, "application/json",
                                   {handler.CUSTOM_ATTRIBUTES_HEADER: f"{EMBEDDING_ATTRIBUTE}=1"})
        result = json.loads(handler.output_fn(handler.predict_fn(request, model), "application/json")[0])
        found += [(ranking[0]["probability"], ranking[0]["label"], summary)
                  for ranking, summary in zip(result["predictions"], result["embeddings"])]
    return found


def window(answered: list[Answer]) -> Window:
    confidences, labels, embeddings = zip(*answered)
    return Window.of(confidences, labels, embeddings)


def transformed(bodies: list[bytes], change: Callable[[Image.Image], Image.Image]) -> list[bytes]:
    changed = []
    for data in bodies:
        out = io.BytesIO()
        change(Image.open(io.BytesIO(data)).convert("RGB")).save(out, "PNG")
        changed.append(out.getvalue())
    return changed


@pytest.fixture(scope="module")
def reference_and_other_half(model, digits_dir) -> tuple[Reference, list[bytes]]:
    first, second = halves(digits_dir)
    confidences, labels, embeddings = zip(*answers(model, first))
    return Reference.of(confidences, labels, embeddings), second


def test_windows_of_the_same_distribution_have_not_drifted(model, model_dir, reference_and_other_half):
    reference, other_half = reference_and_other_half
    job_reference = Reference.from_dict(json.loads((model_dir / REFERENCE_FILE).read_text()))
    stream = random.Random(17).choices(answers(model, other_half), k=STREAM)
    for name, against in (("half", reference), ("job", job_reference)):
        measured = [drift.compare(against, window(stream[start:start + WINDOW]))
                    for start in range(0, STREAM - WINDOW + 1, SLIDE)]
        print(f"{model.engine} vs {name} reference ({against.images} images):",
              json.dumps([statistics.to_dict() for statistics in measured]))
        assert len(measured) == 9
        assert all(not statistics.reasons(THRESHOLDS) for statistics in measured), [
            statistics.reasons(THRESHOLDS) for statistics in measured]


@pytest.mark.parametrize("change", [
    pytest.param(lambda image: Image.eval(image, lambda value: 255 - value), id="inverted"),
    pytest.param(lambda image: image.rotate(90), id="rotated"),
])
def test_the_first_window_of_changed_images_has_drifted(model, reference_and_other_half, change):
    reference, other_half = reference_and_other_half
    stream = random.Random(18).choices(answers(model, transformed(other_half, change)), k=WINDOW)
    statistics = drift.compare(reference, window(stream))
    print(f"{model.engine}:", json.dumps(statistics.to_dict()), statistics.reasons(THRESHOLDS))
    assert statistics.reasons(THRESHOLDS)
