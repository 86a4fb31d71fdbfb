"""The training job through SageMaker's script-mode contract, on real digits and real torch.

Jobs run in this process (tests/training_job.py); one test runs training/train.py as SageMaker does."""

from __future__ import annotations

import json
import tarfile

import pytest
import torch

from tests.training.digits_subset import small_copy
from tests.training_job import TINY_HYPERPARAMETERS, metric_lines, run_training_job, run_training_script
from training import metrics, train
from training.drift import EMBEDDING_DIMS, REFERENCE_FILE, Reference
from training.embedding import EMBEDDING_FILE, Projection
from training.model import ModelSpec, build_model
from training.presets import ClassificationPresetEval


def test_job_prints_one_metric_line_per_epoch_and_the_test_line(trained_run):
    lines = metric_lines(trained_run.log)
    assert [line.split()[0] for line in lines] == ["epoch=1", "epoch=2", lines[-1].split()[0]]
    parsed = metrics.parse_metrics(trained_run.log)
    assert len(parsed["train:loss"]) == len(parsed["valid:accuracy"]) == 2
    assert len(parsed["test:accuracy"]) == 1 and 0.0 <= parsed["test:accuracy"][0] <= 1.0
    # The regexes read the same numbers the script printed, and nothing from other log lines.
    assert f"valid_accuracy={parsed['valid:accuracy'][-1]:.6f}" in lines[1]
    assert parsed["test:accuracy"][0] > 0.5  # two epochs on the digits learn something real
    profile = [line for line in trained_run.log.splitlines() if line.startswith("profile steps=")]
    assert len(profile) == 1 and "images_per_s=" in profile[0]  # where the time went, in the job's log


def test_the_job_evaluates_its_debugger_rules_and_prints_each_verdict_as_a_metric_line(trained_run):
    definitions = metrics.METRIC_DEFINITIONS + metrics.RULE_METRIC_DEFINITIONS
    parsed = metrics.parse_metrics(trained_run.log, definitions)
    verdicts = {name.removeprefix("rule:"): metrics.verdict_of(values[-1])
                for name, values in parsed.items() if name.startswith("rule:")}
    assert list(verdicts) == list(metrics.DEBUGGER_RULES)
    written = json.loads((trained_run.output_dir / train.DEBUGGER_VERDICTS).read_text())
    assert {rule: result["verdict"] for rule, result in written.items()} == verdicts
    assert written["LossNotDecreasing"]["parameters"] == {"mode": "TRAIN"}
    # A verdict other than NoIssuesFound says why (the rule's finding, or why it could not run).
    assert all(result["finding"] for result in written.values() if result["verdict"] != "NoIssuesFound")
    assert json.loads((trained_run.model_dir / "metadata.json").read_text())["debugger_rules"] == verdicts
    assert "Debugger rules" in (trained_run.output_dir / "report" / "report.html").read_text()


def test_model_dir_holds_the_artefact_serving_needs(trained_run):
    model_dir = trained_run.model_dir
    classes = json.loads((model_dir / "classes.json").read_text())
    assert classes == [str(d) for d in range(10)]
    spec = ModelSpec.from_dict(json.loads((model_dir / "model.json").read_text()))
    model = build_model(spec)
    model.load_state_dict(torch.load(model_dir / "model.pth", weights_only=True))
    preprocessing = ClassificationPresetEval.from_dict(json.loads((model_dir / "preprocessing.json").read_text()))
    assert preprocessing == ClassificationPresetEval.for_image_size(32)
    metadata = json.loads((model_dir / "metadata.json").read_text())
    assert metadata["version"].startswith("test-")
    assert metadata["weights_source"] == "random init"
    assert metadata["data"]["counts"]["test"]["3"] > 0
    with tarfile.open(trained_run.model_tar) as tar:
        names = set(tar.getnames())
    assert {"model.pth", "classes.json", "preprocessing.json", "code/training/presets.py", "code/training/model.py",
            REFERENCE_FILE, EMBEDDING_FILE, "code/training/drift.py", "code/training/embedding.py"} <= names


def test_the_final_job_describes_its_test_split_for_drift(trained_run):
    """The reference counts every test image once, and its embedding statistics are the summaries'
    own: the projection is centred on the test split, so the mean is ~0 and the spread shrinks
    component by component (principal components, largest first)."""
    model_dir = trained_run.model_dir
    reference = Reference.from_dict(json.loads((model_dir / REFERENCE_FILE).read_text()))
    counts = json.loads((model_dir / "metadata.json").read_text())["data"]["counts"]["test"]
    assert reference.images == sum(counts.values())
    assert set(reference.class_counts) <= set(counts)
    assert reference.embedding_mean == pytest.approx([0.0] * EMBEDDING_DIMS, abs=1e-3 * reference.embedding_std[0])
    assert list(reference.embedding_std) == sorted(reference.embedding_std, reverse=True)
    assert reference.embedding_std[-1] > 0
    projection = Projection.load(model_dir / EMBEDDING_FILE)
    spec = ModelSpec.from_dict(json.loads((model_dir / "model.json").read_text()))
    assert projection.components.shape == (EMBEDDING_DIMS, build_model(spec).fc[-1].in_features)
    assert torch.allclose(projection.components @ projection.components.T, torch.eye(EMBEDDING_DIMS), atol=1e-4)


def test_the_script_runs_as_sagemaker_runs_it(tmp_path, digits_labels):
    """`python training/train.py --name value ...` in a fresh process, told everything by SM_* variables."""
    data_dir = small_copy(digits_labels, tmp_path / "data")
    run = run_training_script(tmp_path, {"training": data_dir}, {
        **TINY_HYPERPARAMETERS, "epochs": "1", "min-images-per-class": "3", "debugger-rules": "", "report": "off",
        "optimise": "off", "drift-reference": "off"})
    assert run.returncode == 0, run.log[-3000:]
    # A tuning trial's switches: no drift reference and no projection (nobody serves a trial's model).
    assert not (run.model_dir / REFERENCE_FILE).exists() and not (run.model_dir / EMBEDDING_FILE).exists()
    parsed = metrics.parse_metrics(run.log)
    assert len(parsed["valid:accuracy"]) == 1 and len(parsed[metrics.GATE_METRIC]) == 1  # one epoch, one test line
    assert json.loads((run.model_dir / "classes.json").read_text()) == ["0", "1", "7"]
    assert json.loads((run.model_dir / "metadata.json").read_text())["version"].startswith("test-")


def test_per_sample_means_do_not_depend_on_batch_size(digits_splits):
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(0)
    network = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    dataset = TensorDataset(torch.randn(50, 12), torch.randint(0, 3, (50,)))
    results = [
        train.evaluate(network, train.SplitLoader(DataLoader(dataset, batch_size=size), len(dataset)),
                       torch.nn.CrossEntropyLoss(), torch.device("cpu"), False)
        for size in (1, 7, 64)
    ]
    assert all(r.loss == pytest.approx(results[0].loss, rel=1e-5) for r in results)
    assert len({r.accuracy for r in results}) == 1


def test_corrupt_images_are_skipped_and_counted(tmp_path, digits_labels):
    data_dir = small_copy(digits_labels, tmp_path / "data")
    (data_dir / "1" / "truncated.png").write_bytes((data_dir / "1").joinpath(sorted(p.name for p in (data_dir / "1").iterdir())[0]).read_bytes()[:40])
    (data_dir / "7" / "not-an-image.jpg").write_text("hello")
    run = run_training_job(tmp_path, {"training": data_dir}, {**TINY_HYPERPARAMETERS, "epochs": "1", "min-images-per-class": "3",
                                                                     "optimise": "off"})
    assert run.returncode == 0, run.log[-2000:]
    assert "skipped 2 unreadable image(s)" in run.log
    assert json.loads((run.model_dir / "metadata.json").read_text())["data"]["rejected"] == 2


@pytest.mark.parametrize(
    ("labels", "per_label", "message"),
    [
        (("3",), 20, "at least 2 classes; found only the class '3'"),
        (("3", "5"), 3, "at least 5 images; too few in"),
    ],
)
def test_data_that_cannot_train_is_refused_before_training(tmp_path, digits_labels, labels, per_label, message):
    data_dir = small_copy(digits_labels, tmp_path / "data", labels, per_label)
    run = run_training_job(tmp_path, {"training": data_dir}, TINY_HYPERPARAMETERS)
    assert run.returncode == 2
    assert message in run.log
    assert "epoch=" not in run.log and not run.model_dir.exists()


def test_manifest_channel_trains_on_exactly_the_listed_keys(tmp_path, digits_labels):
    data_dir = small_copy(digits_labels, tmp_path / "training-data")
    listed = sorted(data_dir.rglob("*.png"))[:-3]  # three files arrived after the snapshot
    manifest_dir = tmp_path / "manifest"
    manifest_dir.mkdir()
    with open(manifest_dir / "run-1.jsonl", "w") as out:
        for index, path in enumerate(listed):
            key = "training-data/" + path.relative_to(data_dir).as_posix()
            out.write(json.dumps({"key": key, "label": path.parent.name, "split": ("train", "valid", "test")[index % 3], "etag": "x"}) + "\n")
    run = run_training_job(tmp_path, {"training": data_dir, "manifest": manifest_dir},
                           {**TINY_HYPERPARAMETERS, "epochs": "1", "optimise": "off"})
    assert run.returncode == 0, run.log[-2000:]
    counts = json.loads((run.model_dir / "metadata.json").read_text())["data"]["counts"]
    assert sum(sum(c.values()) for c in counts.values()) == len(listed)


def test_unknown_hyperparameters_are_refused_and_sagemaker_ones_ignored():
    args = train.parse_args(["--lr", "0.1", "--sagemaker_program", "train.py", "--sagemaker_region", "us-east-1"])
    assert args.lr == 0.1
    with pytest.raises(SystemExit):
        train.parse_args(["--learning-rate", "0.1"])


def test_frozen_backbone_is_cached_and_only_the_head_learns(tmp_path, digits_labels, monkeypatch):
    for name in [k for k in __import__("os").environ if k.startswith("SM_")]:
        monkeypatch.delenv(name)
    data_dir = small_copy(digits_labels, tmp_path / "data")
    # Start from the weights of an earlier model, as the pipeline can ("a path to a state_dict").
    source = build_model(ModelSpec("resnet18", 5))
    torch.save(source.state_dict(), tmp_path / "earlier.pth")
    args = train.parse_args([
        "--data-dir", str(data_dir), "--model-dir", str(tmp_path / "model"), "--output-dir", str(tmp_path / "out"),
        "--pretrained", str(tmp_path / "earlier.pth"), "--freeze", "backbone", "--image-size", "32",
        "--epochs", "2", "--hflip-prob", "0", "--min-images-per-class", "3",
    ])
    metadata = train.main(args)
    trained = torch.load(tmp_path / "model" / "model.pth", weights_only=True)
    original = source.state_dict()
    assert all(torch.equal(trained[k], original[k]) for k in original if not k.startswith("fc."))
    assert trained["fc.1.weight"].shape == (3, 512)
    assert metadata["weights_source"].endswith("earlier.pth")


def test_a_tuning_jobs_own_hyperparameter_is_not_the_scripts():
    args = train.parse_args(["--epochs", "2", "--_tuning_objective_metric", '"valid:accuracy"'])
    assert args.epochs == 2


def gate_verdict(run, live_accuracy: float | None = None):
    """What the quality gate says of a finished job: its log read with the final job's
    MetricDefinitions, as SageMaker fills FinalMetricDataList, judged with the default policy."""
    from chalice_app.config import DEFAULT_RULE_POLICY
    from chalice_app.gate import judge

    parsed = metrics.parse_metrics(run.log, metrics.METRIC_DEFINITIONS + metrics.RULE_METRIC_DEFINITIONS)
    description = {"FinalMetricDataList": [{"MetricName": name, "Value": values[-1]} for name, values in parsed.items()]}
    return judge(description, live_accuracy, 0.0, DEFAULT_RULE_POLICY)


def test_the_gate_vetoes_a_run_blown_up_by_an_absurd_learning_rate_naming_the_rule(tmp_path, digits_labels):
    from chalice_app.config import DEFAULT_RULE_POLICY

    data = small_copy(digits_labels, tmp_path / "data", per_label=16)
    broken = run_training_job(tmp_path / "job", {"training": data}, {
        **TINY_HYPERPARAMETERS, "optimizer": "sgd", "lr": "1000", "batch-size": "8", "min-images-per-class": "3",
        "debug-save-interval": "1", "report": "off", "optimise": "off"})
    assert broken.returncode == 0, broken.log[-2000:]
    verdict = gate_verdict(broken)
    # Which veto rule sees it first depends on what was saved when (here: every step, so also the
    # dead ReLUs' zero gradients); the reason names the rules that found issues.
    assert not verdict.passed and verdict.reason.startswith("Debugger rules found issues: ")
    named = verdict.reason.removeprefix("Debugger rules found issues: ").split(", ")
    assert named and all(DEFAULT_RULE_POLICY[rule] == "veto" for rule in named)


def test_the_gate_passes_a_healthy_run_whatever_its_warnings(trained_run):
    verdict = gate_verdict(trained_run)
    assert verdict.passed, verdict.reason
