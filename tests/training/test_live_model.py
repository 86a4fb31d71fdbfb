"""The live model judged on a job's test split: as the endpoint answers, and refusing bad artefacts."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from dataclasses import replace

import pytest

from training import data
from training.live_model import LiveModelError, live_test_accuracy


@pytest.fixture(scope="module")
def test_split(digits_splits) -> list[data.Sample]:
    return [s for s in data.discover({"training": digits_splits}) if s.split == "test"]


def live_channel(tmp_path, model_tar):
    channel = tmp_path / "live"
    channel.mkdir()
    shutil.copy(model_tar, channel / "model.tar.gz")
    return channel


def test_the_live_model_scores_what_its_own_job_measured_on_the_same_split(tmp_path, trained_run, test_split):
    measured = json.loads((trained_run.model_dir / "metadata.json").read_text())["metrics"]["test_accuracy"]
    accuracy = live_test_accuracy(live_channel(tmp_path, trained_run.model_tar), test_split)
    assert accuracy == pytest.approx(measured, abs=1.5 / len(test_split))  # one image may flip on rounding


def test_a_label_the_live_model_never_learned_is_a_miss(tmp_path, trained_model_tar, test_split):
    renamed = [replace(sample, label=f"new-{sample.label}") for sample in test_split[:20]]
    assert live_test_accuracy(live_channel(tmp_path, trained_model_tar), renamed) == 0.0


def test_in_memory_pixels_are_used_when_given(tmp_path, trained_model_tar, test_split):
    seen = []

    def pixels(sample):
        seen.append(sample)
        from training.presets import decode_rgb
        return decode_rgb(sample.path.read_bytes())

    live_test_accuracy(live_channel(tmp_path, trained_model_tar), test_split[:10], pixels)
    assert seen == test_split[:10]


def test_an_empty_channel_a_corrupt_archive_and_a_traversal_are_refused(tmp_path, test_split):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(LiveModelError, match="holds no model.tar.gz"):
        live_test_accuracy(empty, test_split)

    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "model.tar.gz").write_bytes(b"not a tar archive")
    with pytest.raises(LiveModelError, match="cannot unpack"):
        live_test_accuracy(corrupt, test_split)

    evil = tmp_path / "evil"
    evil.mkdir()
    with tarfile.open(evil / "model.tar.gz", "w:gz") as tar:
        info = tarfile.TarInfo("../escaped.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"bad"))
    with pytest.raises(LiveModelError, match="cannot unpack"):
        live_test_accuracy(evil, test_split)
    assert not (tmp_path / "escaped.txt").exists()


def test_no_test_images_is_an_error(tmp_path, trained_model_tar):
    with pytest.raises(LiveModelError, match="no test images"):
        live_test_accuracy(live_channel(tmp_path, trained_model_tar), [])


def test_the_live_line_is_its_own_metric_and_never_read_as_the_job_s_test_accuracy():
    from training.metrics import LIVE_GATE_METRIC, GATE_METRIC, live_test_line, parse_metrics, test_line

    found = parse_metrics("\n".join([test_line(0.3, 0.9), live_test_line(0.8)]))
    assert found[GATE_METRIC] == [0.9] and found[LIVE_GATE_METRIC] == [0.8]


def _final_job(tmp_path, digits_splits, live):
    from tests.training_job import TINY_HYPERPARAMETERS, run_training_job

    return run_training_job(tmp_path / "job", {"training": digits_splits, "live": live},
                            {**TINY_HYPERPARAMETERS, "epochs": "1", "freeze": "backbone", "report": "off",
                             "optimise": "off"})


def test_a_job_with_a_live_channel_prints_the_live_model_s_accuracy_on_its_test_split(tmp_path, digits_splits,
                                                                                    trained_run, test_split):
    from training.metrics import LIVE_GATE_METRIC, parse_metrics

    job = _final_job(tmp_path, digits_splits, live_channel(tmp_path, trained_run.model_tar))
    assert job.returncode == 0, job.log[-3000:]
    [live] = parse_metrics(job.log)[LIVE_GATE_METRIC]
    measured = json.loads((trained_run.model_dir / "metadata.json").read_text())["metrics"]["test_accuracy"]
    assert live == pytest.approx(measured, abs=1.5 / len(test_split))
    # The metric line carries six decimals (training.metrics); the metadata keeps the fraction.
    assert json.loads((job.model_dir / "metadata.json").read_text())["metrics"]["live_test_accuracy"] == \
        pytest.approx(live, abs=5e-7)


def test_a_live_model_that_cannot_be_scored_is_a_warning_not_a_failed_job(tmp_path, digits_splits):
    from training.metrics import LIVE_GATE_METRIC, parse_metrics

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.tar.gz").write_bytes(b"truncated")
    job = _final_job(tmp_path, digits_splits, broken)
    assert job.returncode == 0, job.log[-3000:]
    assert LIVE_GATE_METRIC not in parse_metrics(job.log) and "the live model could not be scored" in job.log
