"""The optimised model beside the state_dict: built, judged against the eager model, kept only when it agrees."""

from __future__ import annotations

import json
import tarfile

import pytest
import torch

from training import metrics, optimised
from training.model import ModelSpec, build_model
from training.onnx_engine import OPTIMISED_MODEL
from training.optimised import FP32, INT8, Measurement, choose, top1_agreement



# --- the pure core ---------------------------------------------------------------------


def test_the_fastest_candidate_that_agrees_enough_is_chosen():
    int8, fp32 = Measurement(INT8, 0.996, 10.0), Measurement(FP32, 1.0, 25.0)
    assert choose([int8, fp32], 0.995) == int8
    assert choose([Measurement(INT8, 0.99, 10.0), fp32], 0.995) == fp32  # int8 disagrees: the slower fp32 serves
    assert choose([Measurement(INT8, 0.995, 10.0)], 0.995).engine == INT8  # the threshold itself is enough


def test_no_candidate_is_chosen_when_none_agrees():
    assert choose([Measurement(INT8, 0.98, 10.0), Measurement(FP32, 0.994, 25.0)], 0.995) is None
    assert choose([], 0.995) is None


def test_agreement_is_the_share_of_equal_top1_answers():
    assert top1_agreement([1, 2, 3, 4], [1, 2, 3, 0]) == 0.75
    with pytest.raises(ValueError):
        top1_agreement([1, 2], [1])
    with pytest.raises(ValueError):
        top1_agreement([], [])


def test_the_metric_line_reads_back_through_the_jobs_regexes():
    parsed = metrics.parse_metrics(metrics.optimised_line(0.9975, 7.25, 21.5))
    assert parsed == {"optimised:agreement": [0.9975], "optimised:latency_ms": [7.25], "eager:latency_ms": [21.5]}


# --- on a real (tiny) model --------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny():
    """A random-init 10-class ResNet-18 at 16 px, calibration images and test images for it."""
    torch.manual_seed(0)
    model = build_model(ModelSpec("resnet18", 10)).eval()
    images = [torch.randn(3, 16, 16) for _ in range(24)]
    return model, images[:8], images[8:]


def test_a_disagreeing_model_is_left_out_of_the_artefact(tiny, tmp_path, monkeypatch, capsys):
    """A corrupted export (another network's weights) answers differently: no model.onnx, and the line says why."""
    model, calibration, test = tiny
    torch.manual_seed(1)
    other = build_model(ModelSpec("resnet18", 10)).eval()
    export = optimised.export_fp32
    monkeypatch.setattr(optimised, "export_fp32", lambda _model, path, size: export(other, path, size))
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / OPTIMISED_MODEL).write_bytes(b"a stale file from an earlier attempt")
    outcome = optimised.optimise_in_job(model, calibration, test, model_dir, min_agreement=0.995,
                                        print_line=print, candidates=(FP32,))
    assert outcome.chosen is None and outcome.candidates[0].agreement < 0.995
    assert not (model_dir / OPTIMISED_MODEL).exists()
    parsed = metrics.parse_metrics(capsys.readouterr().out)
    assert parsed["optimised:agreement"] == [pytest.approx(outcome.candidates[0].agreement, abs=1e-6)]


def test_an_unreachable_threshold_leaves_even_an_exact_export_out(tiny, tmp_path):
    model, calibration, test = tiny
    outcome = optimised.optimise_in_job(model, calibration, test, tmp_path, min_agreement=1.01,
                                        print_line=lambda line: None, candidates=(FP32,))
    assert outcome.chosen is None and outcome.candidates[0].agreement == 1.0
    assert not (tmp_path / OPTIMISED_MODEL).exists()


def test_an_agreeing_model_goes_into_the_model_dir_labelled_with_its_engine(tiny, tmp_path):
    import onnxruntime
    model, calibration, test = tiny
    outcome = optimised.optimise_in_job(model, calibration, test, tmp_path, min_agreement=0.995,
                                        print_line=lambda line: None, candidates=(FP32,))
    assert outcome.chosen is not None and outcome.chosen.engine.endswith("-fp32") and outcome.chosen.agreement == 1.0
    session = onnxruntime.InferenceSession(str(tmp_path / OPTIMISED_MODEL), providers=["CPUExecutionProvider"])
    assert session.get_modelmeta().custom_metadata_map["precision"] == FP32


# --- in the final job (the session's shared training run) ---------------------------------


def test_the_job_puts_the_optimised_model_in_the_artefact_and_prints_both_figures(trained_run):
    parsed = metrics.parse_metrics(trained_run.log)
    assert parsed["optimised:agreement"][0] >= metrics.DEFAULT_MIN_AGREEMENT
    assert parsed["optimised:latency_ms"][0] > 0 and parsed["eager:latency_ms"][0] > 0
    metadata = json.loads((trained_run.model_dir / "metadata.json").read_text())
    assert metadata["optimised"]["engine"].rsplit("-", 1)[1] in (INT8, FP32)
    assert {c["engine"].rsplit("-", 1)[1] for c in metadata["optimised"]["candidates"]} == {INT8, FP32}
    with tarfile.open(trained_run.model_tar) as tar:
        assert {OPTIMISED_MODEL, "code/training/onnx_engine.py"} <= set(tar.getnames())
    report = (trained_run.output_dir / "report" / "report.html").read_text()
    assert "Optimised model" in report and metadata["optimised"]["engine"] in report
