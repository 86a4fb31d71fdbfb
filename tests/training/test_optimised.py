"""The optimised model beside the state_dict: built, judged against the eager model, kept only when it agrees."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
import textwrap

import onnx
import pytest
import torch

from training import metrics, optimised
from training.drift import EMBEDDING_DIMS
from training.embedding import EmbeddingClassifier, Projection, split_penultimate
from training.model import ModelSpec, build_model
from training.onnx_engine import OPTIMISED_MODEL, RUNTIMES, OnnxClassifier
from training.optimised import FP32, INT8, Measurement, choose, top1_agreement

from tests.training_job import REPO_ROOT



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


def test_a_classifier_with_its_projection_exports_the_summaries_as_a_second_output(tiny, tmp_path):
    """Agreement is still measured on the logits; both runtimes answer (logits, summaries) as the eager wrapper does."""
    model, calibration, test = tiny
    with torch.inference_mode():
        features = split_penultimate(model)[0](torch.stack(test))
    wrapper = EmbeddingClassifier(model, Projection.fit(features)).eval()
    outcome = optimised.optimise_in_job(wrapper, calibration, test, tmp_path, min_agreement=0.995,
                                        print_line=lambda line: None, candidates=(FP32,))
    assert outcome.chosen is not None and outcome.chosen.agreement == 1.0
    with torch.inference_mode():
        logits, summaries = wrapper(torch.stack(test))
    for runtime in RUNTIMES:
        classifier = OnnxClassifier(tmp_path / OPTIMISED_MODEL, 1, runtimes=(runtime,))
        answer = classifier(torch.stack(test))
        assert classifier.embeddings and isinstance(answer, tuple) and answer[1].shape == (len(test), EMBEDDING_DIMS)
        assert torch.allclose(answer[0], logits, atol=1e-4) and torch.allclose(answer[1], summaries, atol=1e-4)


def test_a_classifier_without_projection_answers_logits_alone(tiny, tmp_path):
    model, calibration, test = tiny
    optimised.optimise_in_job(model, calibration, test, tmp_path, min_agreement=0.995, print_line=lambda line: None,
                              candidates=(FP32,))
    classifier = OnnxClassifier(tmp_path / OPTIMISED_MODEL, 1)
    assert not classifier.embeddings and classifier(torch.stack(test[:2])).shape == (2, 10)


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
    # The final job has a projection: its optimised model answers the embedding summaries too.
    graph = onnx.load(str(trained_run.model_dir / OPTIMISED_MODEL)).graph
    assert [output.name for output in graph.output] == ["logits", "embeddings"]
    report = (trained_run.output_dir / "report" / "report.html").read_text()
    assert "Optimised model" in report and metadata["optimised"]["engine"] in report


# Two OpenVINO engines, released in the order they were made, then a child process ends while a
# Python SIGCHLD handler is set (torch's DataLoader sets one in the training job's process).
ENGINES_THEN_A_CHILD = textwrap.dedent("""
    import gc, signal, subprocess, sys, warnings
    from pathlib import Path
    import torch
    from training.onnx_engine import OnnxClassifier

    warnings.simplefilter("ignore")
    signal.signal(signal.SIGCHLD, lambda *_: None)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.Linear(144, 2)).eval()
    path = Path(sys.argv[1]) / "tiny.onnx"
    torch.onnx.export(model, (torch.zeros(1, 3, 8, 8),), str(path), input_names=["images"],
                      output_names=["logits"], opset_version=17, dynamo=False)
    first, second = (OnnxClassifier(path, 1, runtimes=("openvino",)) for _ in range(2))
    first(torch.zeros(1, 3, 8, 8)), second(torch.zeros(1, 3, 8, 8))
    del first; gc.collect()
    del second; gc.collect()
    subprocess.run(["true"], check=True)
    print("alive")
""")


def test_released_openvino_engines_leave_the_process_able_to_handle_signals(tmp_path):
    """OpenVINO's CPU plugin swaps the thread's alternate signal stack and, released out of order, left
    it on freed memory: the next Python signal handler run there died of SIGSEGV (a test worker and
    the training job both could). A fresh process, since the failure is the process dying."""
    result = subprocess.run([sys.executable, "-c", ENGINES_THEN_A_CHILD, str(tmp_path)], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.split()[-1:] == ["alive"], (result.returncode, result.stderr[-2000:])
