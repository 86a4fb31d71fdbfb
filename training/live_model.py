"""The live model, judged on this job's test split, so the quality gate compares like with like.

The final training job of a retraining run gets the live model's `model.tar.gz` as its
`live` channel. Its accuracy stored from its own run was measured on an older, smaller
test split; here it answers this job's test images. That is fair: splits come from a
stable hash of each key (`training/splits.py`), so no image of this test split was in
the live model's training split. The live model answers as its endpoint would: the
serving handler (`inference.model_fn`/`predict_fn`) with the live model's own classes
and preprocessing. A class the live model never learned counts as a miss.
"""

from __future__ import annotations

import tarfile
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from training.data import Sample
from training.presets import decode_rgb

ARCHIVE = "model.tar.gz"


class LiveModelError(ValueError):
    """The live channel holds no usable model."""


def _model_dir(channel: Path, scratch: Path) -> Path:
    """The unpacked artefact: the channel's model.tar.gz (extracted safely), or the channel itself."""
    archives = sorted(channel.rglob(ARCHIVE))
    if not archives:
        if (channel / "model.json").exists():
            return channel
        raise LiveModelError(f"the live channel {channel} holds no {ARCHIVE}")
    try:
        with tarfile.open(archives[0]) as tar:
            tar.extractall(scratch, filter="data")  # refuses absolute paths, '..' and links that leave it
    except (tarfile.TarError, OSError) as error:
        raise LiveModelError(f"cannot unpack the live model {archives[0].name}: {error}") from None
    return scratch


def live_test_accuracy(channel: Path, samples: Sequence[Sample],
                       pixels: Callable[[Sample], torch.Tensor] | None = None, batch_size: int = 64) -> float:
    """Top-1 accuracy of the live model in `channel` on `samples` (this job's test split).

    `pixels(sample)` gives a sample's decoded RGB image (the job's in-memory copy); by
    default the file is decoded again.
    """
    if not samples:
        raise LiveModelError("no test images to judge the live model on")
    from inference import inference  # the serving handler travels in the source dir

    pixels = pixels or (lambda sample: decode_rgb(sample.path.read_bytes()))
    with tempfile.TemporaryDirectory(prefix="live-model-") as scratch:
        model_dir = _model_dir(channel, Path(scratch))
        try:
            model = inference.model_fn(model_dir)
        except (OSError, ValueError, KeyError, RuntimeError) as error:
            raise LiveModelError(f"cannot load the live model: {error}") from None
    correct = 0
    for start in range(0, len(samples), batch_size):
        chunk = samples[start:start + batch_size]
        prediction = inference.predict_fn(inference.InferenceRequest([pixels(s) for s in chunk]), model)
        answers = prediction.probabilities.argmax(dim=1).tolist()
        correct += sum(model.classes[index] == sample.label for index, sample in zip(answers, chunk))
    return correct / len(samples)
