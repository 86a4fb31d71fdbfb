"""The HTML report written for real: PNGs, embedded figures, tables and findings."""

from __future__ import annotations

import base64
import json
import re
import shutil
from dataclasses import replace

import numpy as np
import pytest

from tests.manual_clock import ManualClock
from training.profiler import Profiler, ProfileSummary
from training.report import (
    confusion_figure,
    diagnose,
    most_confused,
    per_class_recall,
    report_from_output,
    write_report,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CLASSES = ["cat", "dog", "fox"]
CONFUSION = [[8, 2, 0], [1, 9, 0], [0, 5, 5]]
OVERFITTING = [
    {"epoch": 1, "train_loss": 1.0, "valid_loss": 0.90, "valid_accuracy": 0.50},
    {"epoch": 2, "train_loss": 0.6, "valid_loss": 0.60, "valid_accuracy": 0.70},
    {"epoch": 3, "train_loss": 0.4, "valid_loss": 0.70, "valid_accuracy": 0.68},
    {"epoch": 4, "train_loss": 0.2, "valid_loss": 0.85, "valid_accuracy": 0.66},
]
HEALTHY = [
    {"epoch": 1, "train_loss": 1.0, "valid_loss": 0.9, "valid_accuracy": 0.6},
    {"epoch": 2, "train_loss": 0.6, "valid_loss": 0.6, "valid_accuracy": 0.8},
]


@pytest.fixture(scope="module")
def profile(tmp_path_factory) -> ProfileSummary:
    """A real profile of a compute-bound loop: batches arrive at once, each step works 30 ms."""
    clock = ManualClock()
    prof = Profiler(tmp_path_factory.mktemp("profile"), interval_s=0.1, trace_steps=None, clock=clock).start()
    for epoch in range(2):
        for _ in prof.iterate(range(4), phase="train"):
            with prof.compute(4):
                clock.advance(0.03)
    return prof.stop()


def slow_iterator(n: int, delay: float, clock: ManualClock):
    for i in range(n):
        clock.advance(delay)
        yield i


@pytest.fixture(scope="module")
def slow_profile(tmp_path_factory) -> ProfileSummary:
    """The same loop with a loader that takes 30 ms per batch and steps of 2 ms."""
    clock = ManualClock()
    prof = Profiler(tmp_path_factory.mktemp("slow"), interval_s=0.1, trace_steps=None, clock=clock).start()
    for epoch in range(2):
        for _ in prof.iterate(slow_iterator(4, 0.03, clock), phase="train"):
            with prof.compute(4):
                clock.advance(0.002)
    return prof.stop()


def embedded_images(document: str) -> list[bytes]:
    return [base64.b64decode(data) for data in re.findall(r'src="data:image/png;base64,([^"]+)"', document)]


def test_report_has_curves_confusion_matrix_profile_and_findings(tmp_path, slow_profile):
    path = write_report(
        tmp_path,
        history=OVERFITTING,
        test={"test_loss": 0.8, "test_accuracy": 0.733},
        confusion=CONFUSION,
        classes=CLASSES,
        profile=slow_profile,
        rule_verdicts={"Overfit": "IssuesFound", "VanishingGradient": "NoIssuesFound"},
        hyperparameters={"lr": 0.01, "batch-size": 4, "workers": 0},
    )

    assert path == tmp_path / "report.html"
    for name in ("loss_curves.png", "accuracy.png", "confusion_matrix.png", "system_metrics.png", "step_times.png"):
        assert (tmp_path / name).read_bytes().startswith(PNG_MAGIC), name
    document = path.read_text()
    images = embedded_images(document)
    assert len(images) == 5 and all(image.startswith(PNG_MAGIC) for image in images)
    assert (tmp_path / "confusion_matrix.png").read_bytes() in images  # self-contained
    for finding in ("finding-data-loader-bound", "finding-overfitting", "finding-batch-too-small", "finding-rule-Overfit"):
        assert finding in document
    assert "No issues found" not in document
    assert "Confusion matrix (test split)" in document
    assert "<td>fox</td><td>dog</td><td class=\"num\">5</td><td>50.0%</td>" in document  # most confused pair
    assert "<td>batch-size</td><td class=\"num\">4</td>" in document
    assert "0.7330" in document and "IssuesFound" in document


def test_trace_is_linked_relative_to_the_report(tmp_path):
    prof = Profiler(tmp_path / "profiler", trace_steps=(0, 1)).start()
    for _ in prof.iterate(range(3)):
        with prof.compute(1):
            pass
    summary = prof.stop()
    document = write_report(
        tmp_path / "report", history=HEALTHY, test={}, confusion=CONFUSION, classes=CLASSES, profile=summary
    ).read_text()
    assert '<a href="../profiler/trace.json">' in document


def test_report_without_profile_or_issues_says_so(tmp_path):
    path = write_report(
        tmp_path,
        history=HEALTHY,
        test={"test_loss": 0.6, "test_accuracy": 0.8},
        confusion=CONFUSION,
        classes=CLASSES,
        profile=None,
    )
    document = path.read_text()
    assert "No issues found" in document
    assert not (tmp_path / "system_metrics.png").exists()
    assert len(embedded_images(document)) == 3


def test_bad_confusion_matrix_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(ValueError, match="2 rows but there are 3 classes"):
        write_report(tmp_path / "r", history=HEALTHY, test={}, confusion=[[1, 0], [0, 1]], classes=CLASSES, profile=None)
    with pytest.raises(ValueError, match="square"):
        write_report(tmp_path / "r", history=HEALTHY, test={}, confusion=[[1, 0, 0]], classes=CLASSES, profile=None)
    assert not (tmp_path / "r" / "report.html").exists()


def test_many_classes_stay_legible(tmp_path):
    rng = np.random.default_rng(0)
    classes = [f"{i:03d}.Breed_{i}" for i in range(133)]
    matrix = np.diag(rng.integers(5, 10, 133)) + rng.poisson(0.05, (133, 133))
    matrix[7, 9] = 40  # the worst pair

    assert len(confusion_figure(matrix.tolist(), classes).axes[0].texts) == 0  # no per-cell numbers
    assert len(confusion_figure(CONFUSION, CLASSES).axes[0].texts) == 6  # every non-zero cell
    path = write_report(tmp_path, history=HEALTHY, test={}, confusion=matrix.tolist(), classes=classes, profile=None)
    document = path.read_text()
    rows = re.findall(r"<tr>(.*?)</tr>", document.split("Most confused pairs")[1].split("</table>")[0])
    assert len(rows) == 1 + 15  # header + the top 15
    assert rows[1].startswith("<td>007.Breed_7</td><td>009.Breed_9</td><td class=\"num\">40</td>")


def test_most_confused_and_recall():
    pairs = most_confused(CONFUSION, CLASSES)
    assert [(p["true"], p["predicted"], p["count"]) for p in pairs] == [("fox", "dog", 5), ("cat", "dog", 2), ("dog", "cat", 1)]
    assert pairs[0]["share"] == pytest.approx(0.5)
    recall = per_class_recall(CONFUSION, CLASSES)
    assert [r["class"] for r in recall] == ["fox", "cat", "dog"]


def test_gpu_findings_follow_the_gpu_figures(profile):
    busy_loader_free = replace(
        profile,
        gpu_names=["NVIDIA A10G"],
        cuda_used=True,
        gpu_util_mean=18.0,
        gpu_util_max=40.0,
        gpu_memory_peak_mb=2000.0,
        gpu_memory_total_mb=23000.0,
        data_wait_fraction=0.02,
        mean_batch_size=16.0,
        mean_compute_ms=45.0,
        cpu_util_mean=30.0,
    )
    found = {f.key: f for f in diagnose(busy_loader_free, HEALTHY)}
    assert "GPU was busy 18%" in found["gpu-under-used"].evidence
    assert "batch-size" in found["gpu-under-used"].action
    assert "GPU idles" in found["batch-too-small"].evidence
    assert "cpu-saturated" not in found and "data-loader-bound" not in found

    well_fed = replace(busy_loader_free, gpu_util_mean=93.0, gpu_util_max=99.0, mean_batch_size=128.0)
    assert {f.key for f in diagnose(well_fed, HEALTHY)} == set()


def test_curve_findings():
    assert {f.key for f in diagnose(None, OVERFITTING)} == {"overfitting"}
    flat = [{"epoch": e, "train_loss": 1.39, "valid_loss": 1.39} for e in (1, 2, 3)]
    assert {f.key for f in diagnose(None, flat)} == {"not-learning"}
    chance = diagnose(None, HEALTHY, test={"test_accuracy": 0.26}, num_classes=4)
    assert [f.key for f in chance] == ["near-chance"]


def test_a_finished_jobs_report_is_drawn_again_with_the_debugger_verdicts(tmp_path, trained_run):
    # As the demo gets it: the job's output moved elsewhere (output.tar.gz unpacked), the verdicts known later.
    output = tmp_path / "final-job"
    shutil.copytree(trained_run.output_dir, output)
    path = report_from_output(output, tmp_path / "report", {"LossNotDecreasing": "NoIssuesFound",
                                                             "VanishingGradient": "IssuesFound"})
    document = path.read_text()
    assert "<h2>Debugger rules</h2>" in document and "finding-rule-VanishingGradient" in document
    assert "<td>LossNotDecreasing</td><td class=\"\">NoIssuesFound</td>" in document
    # Curves, confusion matrix, and the profile's figures from the moved output's own files.
    for name in ("loss_curves.png", "confusion_matrix.png", "system_metrics.png", "step_times.png"):
        assert (tmp_path / "report" / name).read_bytes().startswith(PNG_MAGIC), name
    metrics = json.loads((output / "metrics.json").read_text())
    assert f"{metrics['metrics']['test_accuracy']:.4f}" in document
    assert '<a href="../final-job/profiler/trace.json">' in document  # not the job's own folder
