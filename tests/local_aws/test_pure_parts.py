"""The pure parts: hyperparameter decoding, failure reasons, rule verdicts, event shapes, the source archive."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

from local_aws.sagemaker.config import Settings
from local_aws.sagemaker.events import endpoint_status_for_event, tag_map, to_event_times, training_job_event
from local_aws.sagemaker.rules import parse_rule_output
from infra.sourcedir import PROGRAM, build_sourcedir
from local_aws.sagemaker.training_jobs import decode_hyperparameters, failure_reason, final_metrics
from training.metrics import METRIC_DEFINITIONS, epoch_line
from training.metrics import test_line as format_test_line


def test_sdk_encoded_hyperparameters_are_decoded():
    decoded = decode_hyperparameters({"sagemaker_program": '"training/train.py"', "lr": "0.01", "arch": "resnet18"})
    assert decoded == {"sagemaker_program": "training/train.py", "lr": 0.01, "arch": "resnet18"}


def test_the_failure_reason_is_the_containers_failure_file(tmp_path: Path):
    failure = tmp_path / "failure"
    failure.write_text('AlgorithmError: ExecuteUserScriptError:\nExitCode 2\nErrorMessage "ERROR: no class 7"\n' + "x" * 2000)
    reason = failure_reason("whatever the log says", 2, failure)
    assert reason.startswith("AlgorithmError: ExecuteUserScriptError:\nExitCode 2\n") and len(reason) == 1024


def test_without_a_failure_file_the_reason_is_the_logs_last_error(tmp_path: Path):
    log = "epoch=1 ...\nTraceback (most recent call last):\n  File x\nRuntimeError: CUDA out of memory\n"
    reason = failure_reason(log, 1, tmp_path / "failure")
    assert reason == "AlgorithmError: the container exited 1: RuntimeError: CUDA out of memory"


def test_final_metrics_are_the_last_values_of_the_projects_metric_lines():
    log = "\n".join([epoch_line(1, 2.0, 1.5, 0.4), epoch_line(2, 1.0, 0.9, 0.7), format_test_line(0.8, 0.69)])
    metrics = {m["MetricName"]: m["Value"] for m in final_metrics(log, METRIC_DEFINITIONS)}
    assert metrics == {"train:loss": 1.0, "valid:loss": 0.9, "valid:accuracy": 0.7, "test:loss": 0.8,
                       "test:accuracy": 0.69}


def test_events_use_milliseconds_tag_maps_and_the_endpoint_status_spelling():
    assert to_event_times({"CreationTime": 1.5, "Nested": [{"StartTime": 2.0, "Count": 3}]}) == {
        "CreationTime": 1500, "Nested": [{"StartTime": 2000, "Count": 3}]}
    assert tag_map([{"Key": "a", "Value": "b"}]) == {"a": "b"}
    assert [endpoint_status_for_event(s) for s in ("InService", "Creating", "OutOfService")] == [
        "IN_SERVICE", "CREATING", "OUT_OF_SERVICE"]
    event = training_job_event({"TrainingJobArn": "arn:x", "TrainingJobName": "j", "CreationTime": 1.0}, None)
    assert event.entry()["Source"] == "aws.sagemaker" and event.detail["Tags"] == {}


def test_the_source_archive_is_deterministic_and_holds_the_program():
    first, second = build_sourcedir(), build_sourcedir()
    assert first == second
    names = tarfile.open(fileobj=io.BytesIO(first)).getnames()
    assert PROGRAM in names and "inference/inference.py" in names
    # The toolkit installs a requirements.txt at the source's root, and only there.
    requirements = tarfile.open(fileobj=io.BytesIO(first)).extractfile("requirements.txt").read().decode()
    assert "smdebug==" in requirements
    assert not any("__pycache__" in name or Path(name).is_absolute() for name in names)


def test_rule_verdicts_are_the_programs_last_json_line_after_its_log_lines():
    output = ('{"level":"INFO","message":"evaluating","service":"training"}\n'
              '{"Overfit": "IssuesFound", "LossNotDecreasing": "NoIssuesFound"}\n'
              '{"level":"INFO","message":"done","service":"training"}\n')
    assert parse_rule_output(["Overfit", "LossNotDecreasing", "Missing"], 0, output) == {
        "Overfit": {"RuleEvaluationStatus": "IssuesFound"},
        "LossNotDecreasing": {"RuleEvaluationStatus": "NoIssuesFound"},
        "Missing": {"RuleEvaluationStatus": "Error", "StatusDetails": "no verdict for Missing"},
    }


def test_a_rule_program_that_crashed_gives_error_with_its_last_line():
    output = "Traceback (most recent call last):\n  File x\nModuleNotFoundError: No module named 'smdebug'\n"
    verdict = parse_rule_output(["Overfit"], 1, output)["Overfit"]
    assert verdict == {"RuleEvaluationStatus": "Error",
                       "StatusDetails": "rule evaluation exited 1: ModuleNotFoundError: No module named 'smdebug'"}


def test_a_job_gets_the_cores_shared_by_the_jobs_running_when_it_starts(monkeypatch, tmp_path):
    monkeypatch.setattr("os.cpu_count", lambda: 4)
    settings = Settings(state_dir=tmp_path, max_running_jobs=2)
    # alone: every core; beside another: half; never fewer than one, never past the running limit.
    assert [settings.job_threads(running) for running in (0, 1, 2, 3)] == [4, 4, 2, 2]
    assert Settings(state_dir=tmp_path, max_running_jobs=8).job_threads(8) == 1
