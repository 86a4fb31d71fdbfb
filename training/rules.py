"""Six of SageMaker Debugger's built-in rules, on smdebug's own Rule framework.

    python -m training.rules DEBUG_OUT_DIR [--rules Name,Name] [--param Name.key=value ...]
    python training/rules.py DEBUG_OUT_DIR --configurations '[{"RuleConfigurationName": ...}]'

prints log lines, then as its LAST line the JSON verdicts
`{"VanishingGradient": "NoIssuesFound" | "IssuesFound" | "Error", ...}`.

AWS runs its built-in rules in its own containers; the smdebug package ships only the
framework (`smdebug.rules.rule.Rule`). These classes follow the rules' descriptions
and default parameters in AWS's "List of Debugger built-in rules"
(awsdocs/amazon-sagemaker-developer-guide, doc_source/debugger-built-in-rules.md).
Where the description leaves a choice open, the docstring of the rule says which
was made. Parameters arrive as strings, as in a DebugRuleConfiguration's
RuleParameters. "patience" counts saved steps: AWS saves losses every 500 steps by
default, so only saved steps can be counted.

A rule reads a finished run: it walks the saved global steps once, in order.
"Error" means the rule could not be evaluated (its tensors are missing, a parameter
is wrong); the reason is logged.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from training.debugger import PURE_PYTHON_PROTOBUF  # noqa: F401 - before smdebug imports protobuf
from training.logs import get_logger
from training.metrics import DEBUGGER_RULES, ERROR, ISSUES, NO_ISSUES, parse_rule_parameters
from smdebug.core.modes import ModeKeys
from smdebug.exceptions import (
    RuleEvaluationConditionMet,
    StepUnavailable,
    TensorUnavailable,
    TensorUnavailableForStep,
)
from smdebug.rules.rule import Rule
from smdebug.trials import create_trial

logger = get_logger("training.rules")  # also when run as __main__



class RuleNotEvaluable(Exception):
    """The run lacks what the rule reads, or the rule was misconfigured."""


def _split(value: str | Iterable[str] | None) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return list(value)


def _bool(value: str | bool) -> bool:
    return value if isinstance(value, bool) else str(value).strip().lower() in ("true", "1", "yes")


def _scalar(trial, name: str, step: int) -> float:
    return float(np.mean(trial.tensor(name).value(step)))


class BuiltInRule(Rule):
    """A rule that says why it fired (`finding`)."""

    def __init__(self, base_trial, action_str: str = ""):
        super().__init__(base_trial, action_str=action_str)
        self.finding: str | None = None
        self._saved: dict[str, set[int]] = {}

    def fire(self, finding: str) -> bool:
        self.finding = finding
        return True

    def saved_at(self, name: str, step: int) -> bool:
        if name not in self._saved:
            self._saved[name] = set(self.base_trial.tensor(name).steps())
        return step in self._saved[name]

    def collection_tensors(self, collection: str) -> list[str]:
        trial = self.base_trial
        return trial.tensor_names(collection=collection) if collection in trial.collections() else []

    def loss_tensors(self, tensor_regex=None, collection_names=None, use_losses_collection=True) -> list[str]:
        trial = self.base_trial
        collections = _split(collection_names) + (["losses"] if _bool(use_losses_collection) else [])
        names = {name for collection in collections for name in self.collection_tensors(collection)}
        if _split(tensor_regex):
            names |= set(trial.tensor_names(regex=_split(tensor_regex)))
        if not names:
            raise RuleNotEvaluable("no loss tensors were saved (collection 'losses' or tensor_regex)")
        return sorted(names)


class ExplodingTensor(BuiltInRule):
    """Fires when a saved tensor holds a non-finite value (NaN, or also infinity unless `only_nan`).

    The tensors are those of `collection_names` and `tensor_regex`; with neither, every saved
    tensor. A run whose learning rate blows it up shows here first: its losses turn NaN.
    """

    def __init__(self, base_trial, collection_names=None, tensor_regex=None, only_nan="False", action_str: str = ""):
        super().__init__(base_trial, action_str)
        self.only_nan = _bool(only_nan)
        names = {name for collection in _split(collection_names) for name in self.collection_tensors(collection)}
        if _split(tensor_regex):
            names |= set(base_trial.tensor_names(regex=_split(tensor_regex)))
        self.tensors = sorted(names) if (_split(collection_names) or _split(tensor_regex)) else base_trial.tensor_names()
        if not self.tensors:
            raise RuleNotEvaluable("no tensors match collection_names or tensor_regex")

    def invoke_at_step(self, step: int) -> bool:
        for name in self.tensors:
            if self.saved_at(name, step):
                value = np.asarray(self.base_trial.tensor(name).value(step))
                bad = np.isnan(value) if self.only_nan else ~np.isfinite(value)
                if bad.any():
                    return self.fire(f"{name} at step {step}: {int(bad.sum())} of {value.size} values are "
                                     f"{'NaN' if self.only_nan else 'not finite'}")
        return False


class VanishingGradient(BuiltInRule):
    """Fires when the mean absolute value of a saved gradient drops below `threshold`."""

    def __init__(self, base_trial, threshold="0.0000001", action_str: str = ""):
        super().__init__(base_trial, action_str)
        self.threshold = float(threshold)
        self.gradients = self.collection_tensors("gradients")
        if not self.gradients:
            raise RuleNotEvaluable("no tensors were saved in the 'gradients' collection")

    def invoke_at_step(self, step: int) -> bool:
        for name in self.gradients:
            if self.saved_at(name, step):
                mean_abs = float(np.abs(self.base_trial.tensor(name).value(step)).mean())
                if mean_abs < self.threshold:
                    return self.fire(f"{name} at step {step}: mean |gradient| {mean_abs:.3g} < {self.threshold:g}")
        return False


class LossNotDecreasing(BuiltInRule):
    """Fires when a loss has not decreased (by at least `diff_percent` %) over `num_steps` steps.

    Steps are counted in the chosen mode; by default the first of EVAL, TRAIN, GLOBAL
    that has losses. A check compares the loss at step s with the last saved loss at or
    before s - num_steps; the next check comes num_steps later.
    """

    def __init__(self, base_trial, collection_names=None, tensor_regex=None, use_losses_collection="True",
                 num_steps="10", diff_percent="0.0", mode=None, action_str: str = ""):
        super().__init__(base_trial, action_str)
        self.num_steps = int(num_steps)
        self.diff_percent = float(diff_percent)
        if self.num_steps < 1 or not 0.0 <= self.diff_percent < 100.0:
            raise RuleNotEvaluable("num_steps must be >= 1 and diff_percent in [0, 100)")
        self.losses = self.loss_tensors(tensor_regex, collection_names, use_losses_collection)
        self.mode = ModeKeys[mode.upper()] if mode else self._first_mode_with_losses()
        self.next_check: dict[str, int] = {}

    def _first_mode_with_losses(self) -> ModeKeys:
        for mode in (ModeKeys.EVAL, ModeKeys.TRAIN, ModeKeys.GLOBAL):
            if any(self.base_trial.tensor(name).steps(mode=mode) for name in self.losses):
                return mode
        raise RuleNotEvaluable("the loss tensors have no saved steps")

    def invoke_at_step(self, step: int) -> bool:
        trial = self.base_trial
        if self.mode == ModeKeys.GLOBAL:
            mode_step = step
        else:
            mode, mode_step = trial.mode_modestep(step)
            if mode != self.mode:
                return False
        for name in self.losses:
            saved = trial.tensor(name).steps(mode=self.mode)
            if mode_step not in saved:
                continue
            if mode_step < self.next_check.setdefault(name, saved[0] + self.num_steps):
                continue
            self.next_check[name] = mode_step + self.num_steps
            before = [s for s in saved if s <= mode_step - self.num_steps][-1]
            previous = float(np.mean(trial.tensor(name).value(before, mode=self.mode)))
            current = float(np.mean(trial.tensor(name).value(mode_step, mode=self.mode)))
            decrease = 100.0 * (previous - current) / abs(previous) if previous else 0.0
            if not np.isfinite(current) or current >= previous or decrease < self.diff_percent:
                return self.fire(f"{name} ({self.mode.name}) went from {previous:.4g} at step {before} "
                                 f"to {current:.4g} at step {mode_step}")
        return False


@dataclass
class _Phase:
    """The losses of one run of consecutive saved steps of one mode."""

    losses: list[float] = field(default_factory=list)

    @property
    def mean(self) -> float:
        return float(np.mean(self.losses))


class Overfit(BuiltInRule):
    """Fires when (mean validation loss - mean training loss) / mean training loss exceeds
    `ratio_threshold` for `patience` validation passes in a row.

    A validation pass is a run of consecutive EVAL steps; it is compared with the
    training steps saved since the pass before it.
    """

    def __init__(self, base_trial, tensor_regex=None, start_step="0", patience="1", ratio_threshold="0.1",
                 action_str: str = ""):
        super().__init__(base_trial, action_str)
        self.start_step, self.patience = int(start_step), int(patience)
        self.ratio_threshold = float(ratio_threshold)
        # tensor_regex, when given, picks the losses to compare instead of the 'losses' collection.
        self.losses = self.loss_tensors(tensor_regex, use_losses_collection=not _split(tensor_regex))
        steps = base_trial.steps()
        self.next_step = dict(zip(steps, steps[1:]))
        if not base_trial.steps(mode=ModeKeys.EVAL) or not base_trial.steps(mode=ModeKeys.TRAIN):
            raise RuleNotEvaluable("Overfit needs losses saved in both TRAIN and EVAL mode")
        self.train = {name: _Phase() for name in self.losses}
        self.valid = {name: _Phase() for name in self.losses}
        self.strikes = {name: 0 for name in self.losses}

    def _ends_eval_phase(self, step: int) -> bool:
        later = self.next_step.get(step)
        return later is None or self.base_trial.mode(later) != ModeKeys.EVAL

    def invoke_at_step(self, step: int) -> bool:
        mode = self.base_trial.mode(step)
        for name in self.losses:
            if not self.saved_at(name, step):
                continue
            if mode == ModeKeys.TRAIN:
                if self.valid[name].losses:  # a new training phase begins
                    self.train[name], self.valid[name] = _Phase(), _Phase()
                self.train[name].losses.append(_scalar(self.base_trial, name, step))
            elif mode == ModeKeys.EVAL:
                self.valid[name].losses.append(_scalar(self.base_trial, name, step))
        if mode != ModeKeys.EVAL or not self._ends_eval_phase(step) or step < self.start_step:
            return False
        for name in self.losses:
            train, valid = self.train[name], self.valid[name]
            if not train.losses or not valid.losses:
                continue
            ratio = (valid.mean - train.mean) / train.mean if train.mean else float("inf")
            self.strikes[name] = self.strikes[name] + 1 if ratio > self.ratio_threshold else 0
            if self.strikes[name] >= self.patience:
                return self.fire(f"{name}: validation {valid.mean:.4g} vs training {train.mean:.4g} "
                                 f"(ratio {ratio:.3g} > {self.ratio_threshold:g}) at step {step}")
        return False


class Overtraining(BuiltInRule):
    """Fires when the training loss has not improved by `delta` for `patience_train` saved
    training steps, or the validation loss for `patience_validation` saved validation steps:
    the model stopped improving and training goes on.
    """

    def __init__(self, base_trial, patience_train="5", patience_validation="10", delta="0.1",
                 action_str: str = ""):
        super().__init__(base_trial, action_str)
        self.patience = {ModeKeys.TRAIN: int(patience_train), ModeKeys.EVAL: int(patience_validation)}
        self.delta = float(delta)
        self.losses = self.loss_tensors()
        if not base_trial.steps(mode=ModeKeys.EVAL) or not base_trial.steps(mode=ModeKeys.TRAIN):
            raise RuleNotEvaluable("Overtraining needs losses saved in both TRAIN and EVAL mode")
        self.best: dict[tuple[str, ModeKeys], float] = {}
        self.waited: dict[tuple[str, ModeKeys], int] = {}

    def invoke_at_step(self, step: int) -> bool:
        mode = self.base_trial.mode(step)
        if mode not in self.patience:
            return False
        for name in self.losses:
            if not self.saved_at(name, step):
                continue
            key, loss = (name, mode), _scalar(self.base_trial, name, step)
            if key not in self.best or loss < self.best[key] - self.delta:
                self.best[key], self.waited[key] = loss, 0
                continue
            self.waited[key] += 1
            if self.waited[key] >= self.patience[mode]:
                kind = "training" if mode == ModeKeys.TRAIN else "validation"
                return self.fire(f"{name}: the {kind} loss has not improved by {self.delta:g} below "
                                 f"{self.best[key]:.4g} for {self.waited[key]} saved steps (step {step})")
        return False


class PoorWeightInitialization(BuiltInRule):
    """Looks at the first `steps` training steps for the three signs AWS names:

    - the variances of the activation inputs (`activation_inputs_regex`) differ across
      layers by a ratio max/min above `threshold`;
    - the gradients of a step, all layers pooled, span less than `distribution_range`
      between their 5th and 95th percentiles (pooled: one layer's small gradients are
      normal in a healthy ResNet);
    - the loss makes no new minimum for `patience` saved steps.
    Non-finite activation inputs or gradients (an initialisation so large that they
    overflow) are the extreme of the first two signs: they fire too, whatever their order
    (NaN compares false both ways: min/max and percentiles would silently pass them).
    Each sign is checked where its tensors were saved; "Error" only when none were.
    """

    def __init__(self, base_trial, activation_inputs_regex=".*relu_input", threshold="10.0",
                 distribution_range="0.001", patience="5", steps="10", action_str: str = ""):
        super().__init__(base_trial, action_str)
        self.threshold, self.distribution_range = float(threshold), float(distribution_range)
        self.patience, self.steps = int(patience), int(float(steps))
        trial = base_trial
        self.activations = trial.tensor_names(regex=_split(activation_inputs_regex))
        self.gradients = self.collection_tensors("gradients")
        try:
            self.losses = self.loss_tensors()
        except RuleNotEvaluable:
            self.losses = []
        if not (self.activations or self.gradients or self.losses):
            raise RuleNotEvaluable("no activation inputs, gradients or losses were saved")
        self.mode = ModeKeys.TRAIN if trial.steps(mode=ModeKeys.TRAIN) else ModeKeys.GLOBAL
        self.best: dict[str, float] = {}
        self.waited: dict[str, int] = {}

    def _values(self, names: list[str], step: int) -> dict[str, np.ndarray]:
        return {n: np.asarray(self.base_trial.tensor(n).value(step), dtype=np.float64)
                for n in names if self.saved_at(n, step)}

    def invoke_at_step(self, step: int) -> bool:
        trial = self.base_trial
        mode_step = step if self.mode == ModeKeys.GLOBAL else trial.mode_modestep(step)[1]
        if (self.mode != ModeKeys.GLOBAL and trial.mode(step) != self.mode) or mode_step >= self.steps:
            return False
        activations = self._values(self.activations, step)
        for name, value in activations.items():
            if not np.isfinite(value).all():
                return self.fire(f"{name} at step {step}: {np.count_nonzero(~np.isfinite(value))} of {value.size} "
                                 f"activation inputs are not finite")
        variances = {n: float(v.var()) for n, v in activations.items()}
        if len(variances) >= 2:
            low, high = min(variances.values()), max(variances.values())
            if low <= 0.0 or high / low > self.threshold:
                lowest, highest = min(variances, key=variances.get), max(variances, key=variances.get)
                return self.fire(f"activation input variances range from {low:.3g} ({lowest}) "
                                 f"to {high:.3g} ({highest}) at step {step}")
        gradients = self._values(self.gradients, step)
        if gradients:
            pooled = np.concatenate([g.ravel() for g in gradients.values()])
            if not np.isfinite(pooled).all():
                return self.fire(f"the gradients of step {step}: {np.count_nonzero(~np.isfinite(pooled))} of "
                                 f"{pooled.size} are not finite")
            low, high = np.percentile(pooled, [5, 95])
            if high - low < self.distribution_range:
                return self.fire(f"the gradients of step {step} span {high - low:.3g} between their 5th and "
                                 f"95th percentiles (< {self.distribution_range:g})")
        for name in self.losses:
            if not self.saved_at(name, step):
                continue
            loss = _scalar(trial, name, step)
            if name not in self.best or loss < self.best[name]:
                self.best[name], self.waited[name] = loss, 0
            else:
                self.waited[name] += 1
                if self.waited[name] >= self.patience:
                    return self.fire(f"{name}: no new minimum for {self.waited[name]} saved steps in the first "
                                     f"{self.steps} steps (step {step})")
        return False


_IMPLEMENTED = {rule.__name__: rule for rule in (VanishingGradient, ExplodingTensor, Overfit, Overtraining,
                                                  PoorWeightInitialization, LossNotDecreasing)}
# In the contract's order (training.metrics); a rule named there but not implemented fails here, at import.
RULES: dict[str, type[BuiltInRule]] = {name: _IMPLEMENTED[name] for name in DEBUGGER_RULES}


def run_rule(rule: BuiltInRule) -> bool:
    """Invoke `rule` on every saved step, as smdebug's invoke_rule does; True when it fired."""
    for step in rule.base_trial.steps():
        try:
            rule.invoke(step)
        except RuleEvaluationConditionMet:
            return True
        except (TensorUnavailableForStep, StepUnavailable, TensorUnavailable) as error:
            logger.debug("tensor unavailable", extra={"rule": rule.rule_name, "step": step, "error": str(error)})
    return False


def evaluate_rule(trial, name: str, params: Mapping[str, str] | None = None) -> str:
    """One verdict; never raises."""
    return _evaluate(trial, name, params)[0]


def _evaluate(trial, name: str, params: Mapping[str, str] | None) -> tuple[str, str | None]:
    """(verdict, what the rule found or why it could not run)."""
    params = {k: v for k, v in (params or {}).items() if k != "rule_to_invoke"}
    try:
        if name not in RULES:
            raise RuleNotEvaluable(f"unknown rule {name!r}; known: {', '.join(RULES)}")
        try:
            rule = RULES[name](trial, **params)
        except TypeError as error:  # an unknown parameter name
            raise RuleNotEvaluable(f"bad parameters {sorted(params)}: {error}") from error
        fired = run_rule(rule)
    except Exception as error:  # noqa: BLE001 - a rule that cannot run says Error, never crashes the job
        reason = f"{type(error).__name__}: {error}"
        logger.warning("rule not evaluated", extra={"rule": name, "reason": reason})
        return ERROR, reason
    logger.info("rule evaluated", extra={"rule": name, "verdict": ISSUES if fired else NO_ISSUES,
                                         "finding": rule.finding, "parameters": params})
    return (ISSUES if fired else NO_ISSUES), rule.finding


def _open_trial(out_dir: Path | str):
    if not Path(out_dir).is_dir():
        raise FileNotFoundError(f"no Debugger output at {out_dir}")
    trial = create_trial(str(out_dir))
    if not trial.steps():
        raise RuleNotEvaluable(f"no saved steps under {out_dir}")
    return trial


def evaluate_rules(out_dir: Path | str, names: Iterable[str] | None = None,
                   params: Mapping[str, Mapping[str, str]] | None = None) -> dict[str, str]:
    """Verdicts of the named rules (all of them by default) on the tensors under `out_dir`."""
    names = list(names or RULES)
    params = params or {}
    try:
        trial = _open_trial(out_dir)
    except Exception as error:  # noqa: BLE001 - no tensors: every rule says Error
        logger.warning("no tensors to evaluate", extra={"out_dir": str(out_dir), "reason": str(error)})
        return {name: ERROR for name in names}
    return {name: evaluate_rule(trial, name, params.get(name)) for name in names}


def judge_rules(out_dir: Path | str | None, names: Iterable[str],
                params: Mapping[str, Mapping[str, str]] | None = None) -> dict[str, dict]:
    """{rule: {"verdict", "finding", "parameters"}} for the named rules on the tensors under `out_dir`:
    what the training job reports of its own Debugger rules."""
    names, params = list(names), params or {}
    try:
        trial = _open_trial(out_dir) if out_dir else None
        if trial is None:
            raise RuleNotEvaluable("the job saved no Debugger tensors")
    except Exception as error:  # noqa: BLE001 - no tensors: every rule says Error, with the reason
        reason = f"{type(error).__name__}: {error}"
        logger.warning("no tensors to evaluate", extra={"out_dir": str(out_dir), "reason": reason})
        return {name: {"verdict": ERROR, "finding": reason, "parameters": dict(params.get(name, {}))}
                for name in names}
    results = {}
    for name in names:
        verdict, finding = _evaluate(trial, name, params.get(name))
        results[name] = {"verdict": verdict, "finding": finding, "parameters": dict(params.get(name, {}))}
    return results


def evaluate_rule_configurations(out_dir: Path | str, configurations: Iterable[Mapping]) -> dict[str, str]:
    """Verdicts keyed by RuleConfigurationName, for CreateTrainingJob's DebugRuleConfigurations
    (the rule is RuleParameters' `rule_to_invoke`, else the configuration's name)."""
    configurations = list(configurations)
    try:
        trial = _open_trial(out_dir)
    except Exception as error:  # noqa: BLE001
        logger.warning("no tensors to evaluate", extra={"out_dir": str(out_dir), "reason": str(error)})
        return {c["RuleConfigurationName"]: ERROR for c in configurations}
    verdicts = {}
    for configuration in configurations:
        parameters = dict(configuration.get("RuleParameters") or {})
        rule = parameters.get("rule_to_invoke", configuration["RuleConfigurationName"])
        verdicts[configuration["RuleConfigurationName"]] = evaluate_rule(trial, rule, parameters)
    return verdicts


def parse_params(items: Iterable[str]) -> dict[str, dict[str, str]]:
    try:
        return parse_rule_parameters(list(items))
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"--param wants Rule.key=value: {error}") from error


def main(argv: list[str] | None = None) -> dict[str, str]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", type=Path, help="the smdebug output folder of a finished run")
    parser.add_argument("--rules", default=",".join(RULES), help="comma-separated rule names (default: all)")
    parser.add_argument("--param", action="append", default=[], metavar="Rule.key=value",
                        help="a rule parameter, repeatable (e.g. Overfit.patience=3)")
    parser.add_argument("--configurations", type=json.loads, default=None, metavar="JSON",
                        help="a training job's DebugRuleConfigurations instead of --rules and --param: "
                             "verdicts keyed by RuleConfigurationName")
    args = parser.parse_args(argv)
    try:
        params = parse_params(args.param)
    except argparse.ArgumentTypeError as error:
        parser.error(str(error))
    if args.configurations is not None:
        verdicts = evaluate_rule_configurations(args.out_dir, args.configurations)
    else:
        verdicts = evaluate_rules(args.out_dir, _split(args.rules), params)
    sys.stdout.flush()
    print(json.dumps(verdicts), flush=True)
    return verdicts


if __name__ == "__main__":
    main()
