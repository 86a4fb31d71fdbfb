"""The built-in rules on real runs: quiet on a healthy run, firing on broken ones."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.training.debugged_training import train_digits
from training.debugger import CONFIG_FILE_ENV
from training.metrics import DEBUGGER_RULES
from training.rules import (
    ERROR,
    ISSUES,
    NO_ISSUES,
    evaluate_rule_configurations,
    evaluate_rules,
    parse_params,
)
from training.rules import main as rules_main  # the CLI, in process

REPO = Path(__file__).resolve().parents[2]
ALL = list(DEBUGGER_RULES)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Train once per configuration (each well under a few seconds on one thread)."""
    made: dict[str, Path] = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    mp = pytest.MonkeyPatch()
    mp.setenv(CONFIG_FILE_ENV, str(tmp_path_factory.mktemp("none") / "no-config.json"))

    def make(name: str, **training) -> Path:
        if name not in made:
            made[name] = tmp_path_factory.mktemp(name) / "tensors"
            train_digits(made[name], **training)
        return made[name]

    yield make
    mp.undo()
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def healthy(run) -> Path:
    # Adam at 1e-3 for 12 epochs: validation loss falls every epoch, no gap to training.
    return run("healthy", epochs=12)


def test_a_healthy_run_has_no_issues(healthy):
    assert evaluate_rules(healthy) == {name: NO_ISSUES for name in ALL}


def test_an_absurd_learning_rate_kills_the_gradients(run):
    # SGD at lr=1.0 with momentum: the ReLUs die after a few steps and the gradients are 0.
    verdicts = evaluate_rules(run("absurd-lr", optimizer="sgd", lr=1.0, epochs=6))
    assert verdicts["VanishingGradient"] == ISSUES
    assert verdicts["Overtraining"] == ISSUES  # the training loss is stuck at log(10)


def test_a_learning_rate_that_blows_the_run_up_is_an_exploding_tensor(run):
    tensors = run("exploding", optimizer="sgd", lr=1e6, epochs=2)
    verdicts = evaluate_rules(tensors, ["ExplodingTensor"])
    assert verdicts == {"ExplodingTensor": ISSUES}
    # Restricted to what stays finite longest, or to NaN alone, it can still say why; never on a healthy run.
    assert evaluate_rules(tensors, ["ExplodingTensor"], {"ExplodingTensor": {"collection_names": "losses"}}) == {
        "ExplodingTensor": ISSUES}


def test_a_loss_that_never_decreases(run):
    verdicts = evaluate_rules(run("lr-zero", lr=0.0, epochs=12), ["LossNotDecreasing"])
    assert verdicts == {"LossNotDecreasing": ISSUES}


def test_a_tiny_initialisation_is_poor_and_its_gradients_vanish(run):
    verdicts = evaluate_rules(run("tiny-init", depth=6, init_scale=0.01, epochs=2))
    assert verdicts["PoorWeightInitialization"] == ISSUES
    assert verdicts["VanishingGradient"] == ISSUES


def test_an_initialisation_that_overflows_is_poor(run):
    # Weights ~1e36: the second block's activation inputs overflow (all non-finite, their variance
    # NaN) and most gradients are NaN. NaN compares false both ways, so neither the variance ratio
    # nor the gradients' percentile range would ever fire on them: the overflow itself must.
    out = run("overflowing-init", depth=2, init_scale=1e37, epochs=1)
    assert evaluate_rules(out, ["PoorWeightInitialization"]) == {"PoorWeightInitialization": ISSUES}
    # Each sign alone: the gradients still fire with the activation inputs left out.
    assert evaluate_rules(out, ["PoorWeightInitialization"], {"PoorWeightInitialization": {
        "activation_inputs_regex": "no-such-tensor"}}) == {"PoorWeightInitialization": ISSUES}


def test_memorising_sixty_images_overfits(run):
    out = run("memorise", n_train=60, epochs=30, batch_size=60, lr=0.01, save_interval=1)
    verdicts = evaluate_rules(out, ["Overfit", "Overtraining", "VanishingGradient"])
    assert verdicts == {"Overfit": ISSUES, "Overtraining": ISSUES, "VanishingGradient": NO_ISSUES}


def test_parameters_change_the_verdict(healthy):
    # The loss fell, but not by 99.9 % over 10 validation passes.
    assert evaluate_rules(healthy, ["LossNotDecreasing"], {"LossNotDecreasing": {"diff_percent": "99.9"}}) == {
        "LossNotDecreasing": ISSUES}
    # Any validation loss above training loss counts as overfitting with a threshold below -1.
    assert evaluate_rules(healthy, ["Overfit"], {"Overfit": {"ratio_threshold": "-1.5"}}) == {"Overfit": ISSUES}


def test_rules_that_cannot_be_evaluated_say_error(run, healthy, tmp_path):
    assert evaluate_rules(tmp_path / "missing") == {name: ERROR for name in ALL}
    train_only = run("train-only", epochs=2, validate=False)
    assert evaluate_rules(train_only) == {
        "VanishingGradient": NO_ISSUES, "ExplodingTensor": NO_ISSUES, "Overfit": ERROR, "Overtraining": ERROR,
        "PoorWeightInitialization": NO_ISSUES, "LossNotDecreasing": NO_ISSUES}
    assert evaluate_rules(healthy, ["Overfit", "NoSuchRule"], {"Overfit": {"patience": "soon"}}) == {
        "Overfit": ERROR, "NoSuchRule": ERROR}
    assert evaluate_rules(healthy, ["Overfit"], {"Overfit": {"no_such_parameter": "1"}}) == {"Overfit": ERROR}


def test_debug_rule_configurations_are_evaluated_by_name(healthy, tmp_path):
    configurations = [
        {"RuleConfigurationName": "LossNotDecreasing", "RuleParameters": {"rule_to_invoke": "LossNotDecreasing"}},
        {"RuleConfigurationName": "loss-must-halve",
         "RuleParameters": {"rule_to_invoke": "LossNotDecreasing", "diff_percent": "50", "num_steps": "10"}},
        {"RuleConfigurationName": "Overfit"},
    ]
    assert evaluate_rule_configurations(healthy, configurations) == {
        "LossNotDecreasing": NO_ISSUES, "loss-must-halve": NO_ISSUES, "Overfit": NO_ISSUES}
    assert evaluate_rule_configurations(tmp_path / "missing", configurations[:1]) == {"LossNotDecreasing": ERROR}


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "training.rules", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120, check=False)


def test_cli_prints_the_verdicts_as_its_last_line(run):
    broken = run("lr-zero", lr=0.0, epochs=12)
    done = cli(str(broken), "--rules", "LossNotDecreasing,Overfit", "--param", "Overfit.patience=2")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert json.loads(lines[-1]) == {"LossNotDecreasing": ISSUES, "Overfit": NO_ISSUES}
    assert any('"rule evaluated"' in line and '"LossNotDecreasing"' in line for line in lines[:-1])


def test_cli_on_a_missing_folder_says_error_and_does_not_crash(tmp_path, capsys):
    rules_main([str(tmp_path / "nothing"), "--rules", "VanishingGradient"])  # in process: the CLI test above runs the program
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == {"VanishingGradient": ERROR}


def test_parameters_on_the_command_line():
    assert parse_params(["Overfit.patience=3", "Overfit.start_step=10", "LossNotDecreasing.mode=EVAL"]) == {
        "Overfit": {"patience": "3", "start_step": "10"}, "LossNotDecreasing": {"mode": "EVAL"}}
    for bad in ("patience=3", "Overfit.patience", ".patience=3"):
        with pytest.raises(argparse.ArgumentTypeError, match="Rule.key=value"):
            parse_params([bad])
