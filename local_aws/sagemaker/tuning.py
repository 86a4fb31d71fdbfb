"""Hyperparameter tuning jobs, searched by optuna.

Strategies map onto optuna's samplers and pruners:

    Random     RandomSampler
    Grid       GridSampler (categorical and integer ranges, every point once)
    Bayesian   TPESampler (constant liar, so parallel trials do not all pick the same point)
    Hyperband  RandomSampler + HyperbandPruner(MinResource, MaxResource), resource = epochs

TrainingJobEarlyStoppingType=Auto adds a MedianPruner to the other strategies. Pruners
read the objective metric from each running job's log, line by line (one report per
epoch line), and a pruned job is stopped, as AWS's early stopping does: its status is
Stopped and its objective is the last value it reported.
"""

from __future__ import annotations

import re
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import optuna
from aws_lambda_powertools import Logger
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import Trial, TrialState

from .exceptions import ResourceLimitExceeded, ValidationException
from .records import now

# What SageMaker adds to a tuned job's hyperparameters: the objective's name.
TUNING_METRIC_PARAM = "_tuning_objective_metric"

if TYPE_CHECKING:
    from .records import TrainingJob, TuningJob
    from .state import SageMakerState
    from .training_jobs import TrainingRunner

logger = Logger(service="local-sagemaker")
optuna.logging.set_verbosity(optuna.logging.WARNING)

EPOCH = re.compile(r"\bepoch[=:\s]+(\d+)", re.IGNORECASE)
TERMINAL = ("Completed", "Failed", "Stopped")
# The search loop wakes when any job changes; this is only its longest sleep.
POLL_SECONDS = 2.0


@dataclass(frozen=True)
class TuningPlan:
    strategy: str
    metric_name: str
    metric_regex: str
    maximize: bool
    max_jobs: int
    max_parallel: int
    distributions: dict[str, BaseDistribution]
    early_stopping: bool
    hyperband: tuple[int, int] | None
    seed: int | None

    def study(self) -> optuna.Study:
        sampler: optuna.samplers.BaseSampler
        if self.strategy == "Grid":
            sampler = _AskTellGridSampler(
                {name: list(d.choices) if isinstance(d, CategoricalDistribution) else list(range(d.low, d.high + 1))
                 for name, d in self.distributions.items()}, seed=self.seed)
        elif self.strategy == "Bayesian":
            sampler = optuna.samplers.TPESampler(seed=self.seed, constant_liar=True,
                                                 n_startup_trials=max(1, min(10, self.max_jobs // 2)))
        else:
            sampler = optuna.samplers.RandomSampler(seed=self.seed)
        pruner: optuna.pruners.BasePruner = optuna.pruners.NopPruner()
        if self.hyperband:
            pruner = optuna.pruners.HyperbandPruner(min_resource=self.hyperband[0], max_resource=self.hyperband[1],
                                                    reduction_factor=3)
        elif self.early_stopping:
            pruner = optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)
        # Hyperband assigns trials to brackets by a hash of the study's name and the trial's
        # number: a name fixed by the seed makes a seeded search repeatable, as RandomSeed promises.
        name = None if self.seed is None else f"seed-{self.seed}"
        return optuna.create_study(study_name=name, direction="maximize" if self.maximize else "minimize",
                                   sampler=sampler, pruner=pruner)


class _AskTellGridSampler(optuna.samplers.GridSampler):
    """GridSampler for ask-and-tell: its after_trial calls Study.stop(), which is only allowed inside
    Study.optimize. The tuner stops by itself once it has launched every grid point."""

    def after_trial(self, study, trial, state, values) -> None:  # type: ignore[override]
        return None


def _ranges(config: dict[str, Any]) -> dict[str, BaseDistribution]:
    ranges = config.get("ParameterRanges", {})
    distributions: dict[str, BaseDistribution] = {}
    for item in ranges.get("IntegerParameterRanges", []):
        low, high = int(item["MinValue"]), int(item["MaxValue"])
        distributions[item["Name"]] = IntDistribution(low, high, log=item.get("ScalingType") == "Logarithmic")
    for item in ranges.get("ContinuousParameterRanges", []):
        low, high = float(item["MinValue"]), float(item["MaxValue"])
        distributions[item["Name"]] = FloatDistribution(low, high, log=item.get("ScalingType") == "Logarithmic")
    for item in ranges.get("CategoricalParameterRanges", []):
        distributions[item["Name"]] = CategoricalDistribution(list(item["Values"]))
    for name, distribution in distributions.items():
        low = getattr(distribution, "low", None)
        if low is not None and low > distribution.high:  # type: ignore[attr-defined]
            raise ValidationException(f"Parameter range {name}: MinValue must not exceed MaxValue")
        if getattr(distribution, "log", False) and low is not None and low <= 0:
            raise ValidationException(f"Parameter range {name}: Logarithmic scaling needs MinValue > 0")
    return distributions


def make_plan(params: dict[str, Any]) -> TuningPlan:
    """Validate a CreateHyperParameterTuningJob request and decide how to search it."""
    config = params["HyperParameterTuningJobConfig"]
    definition = params.get("TrainingJobDefinition")
    if not definition:
        raise ValidationException("The local SageMaker needs a TrainingJobDefinition (TrainingJobDefinitions is not supported)")
    objective = config.get("HyperParameterTuningJobObjective")
    if not objective:
        raise ValidationException("HyperParameterTuningJobObjective is required")
    definitions = {d["Name"]: d["Regex"] for d in definition["AlgorithmSpecification"].get("MetricDefinitions", [])}
    if objective["MetricName"] not in definitions:
        raise ValidationException(
            f"The objective metric {objective['MetricName']!r} is not among the MetricDefinitions")
    strategy = config.get("Strategy", "Bayesian")
    distributions = _ranges(config)
    if not distributions:
        raise ValidationException("ParameterRanges must name at least one hyperparameter to tune")
    static = definition.get("StaticHyperParameters", {})
    clash = sorted(set(distributions) & set(static))
    if clash:
        raise ValidationException(f"Hyperparameters {clash} are both static and tuned")
    limits = config.get("ResourceLimits", {})
    max_jobs = int(limits.get("MaxNumberOfTrainingJobs", 0) or 0)
    if strategy == "Grid":
        if any(isinstance(d, FloatDistribution) for d in distributions.values()):
            raise ValidationException("The Grid strategy supports categorical and integer parameter ranges only")
        size = 1
        for d in distributions.values():
            size *= len(d.choices) if isinstance(d, CategoricalDistribution) else d.high - d.low + 1  # type: ignore[attr-defined]
        max_jobs = min(max_jobs, size) if max_jobs else size
    if max_jobs < 1:
        raise ValidationException("ResourceLimits.MaxNumberOfTrainingJobs must be at least 1")
    hyperband = None
    if strategy == "Hyperband":
        hb = config.get("StrategyConfig", {}).get("HyperbandStrategyConfig", {})
        low, high = int(hb.get("MinResource", 1)), int(hb.get("MaxResource", 0) or static.get("epochs", 0) or 0)
        if high < low or high < 1:
            raise ValidationException("Hyperband needs StrategyConfig.HyperbandStrategyConfig.MaxResource >= MinResource")
        hyperband = (low, high)
    elif config.get("StrategyConfig"):
        raise ValidationException("StrategyConfig is only valid with the Hyperband strategy")
    return TuningPlan(
        strategy=strategy, metric_name=objective["MetricName"], metric_regex=definitions[objective["MetricName"]],
        maximize=objective["Type"] == "Maximize", max_jobs=max_jobs,
        max_parallel=max(1, int(limits.get("MaxParallelTrainingJobs", 1))), distributions=distributions,
        early_stopping=config.get("TrainingJobEarlyStoppingType", "Off") == "Auto" and not hyperband,
        hyperband=hyperband, seed=config.get("RandomSeed"),
    )


def format_value(value: Any) -> str:
    if isinstance(value, float):
        return repr(value)
    return str(value)


def child_request(tuning: "TuningJob", job_name: str, tuned: dict[str, str]) -> dict[str, Any]:
    """The CreateTrainingJob request of one trial, as AWS launches it from the definition."""
    definition = tuning.request["TrainingJobDefinition"]
    objective = tuning.request["HyperParameterTuningJobConfig"]["HyperParameterTuningJobObjective"]
    request = {
        "TrainingJobName": job_name,
        # AWS adds the objective's name to every child's hyperparameters (the script never sees it).
        "HyperParameters": {**definition.get("StaticHyperParameters", {}), **tuned,
                            TUNING_METRIC_PARAM: objective["MetricName"]},
        "Tags": tuning.tags,
    }
    for key in ("AlgorithmSpecification", "RoleArn", "InputDataConfig", "OutputDataConfig", "ResourceConfig",
                "StoppingCondition", "Environment", "VpcConfig", "EnableNetworkIsolation", "CheckpointConfig",
                "RetryStrategy"):
        if key in definition:
            request[key] = definition[key]
    return request


class MetricReporter:
    """Feeds a running job's objective metric to its trial, and stops the job when pruned."""

    def __init__(self, trial: Trial, regex: str, stop: Callable[[], None]) -> None:
        self.trial, self.regex, self.stop = trial, re.compile(regex), stop
        self.step = 0
        self.pruned = False

    def __call__(self, line: str) -> None:
        match = self.regex.search(line)
        if not match or self.pruned:
            return
        epoch = EPOCH.search(line)
        self.step = int(epoch.group(1)) if epoch else self.step + 1
        self.trial.report(float(match.group(1)), self.step)
        if self.trial.should_prune():
            self.pruned = True
            self.stop()


class StartTrainingJob(Protocol):
    """CreateTrainingJob for a trial: records the child, as the operation does, and starts it."""

    def __call__(self, params: dict[str, Any], *, tuning_job_arn: str | None = None,
                 tuned: dict[str, str] | None = None,
                 on_line: Callable[[str], None] | None = None) -> "TrainingJob": ...


class Tuner:
    def __init__(self, state: "SageMakerState", runner: "TrainingRunner", start_training_job: StartTrainingJob,
                 max_running_jobs: int) -> None:
        self.state = state
        self.runner = runner
        self.start_training_job = start_training_job
        self.max_running_jobs = max_running_jobs
        self._threads: dict[str, threading.Thread] = {}

    def plan(self, params: dict[str, Any]) -> TuningPlan:
        plan = make_plan(params)
        self.runner.validate(child_request(
            _RequestView(params), "validation", {name: "0" for name in plan.distributions}))
        return plan

    def start(self, name: str, plan: TuningPlan) -> None:
        thread = threading.Thread(target=self._run, args=(name, plan), name=f"tuning-{name}", daemon=True)
        self._threads[name] = thread
        thread.start()

    def stop(self, name: str) -> None:
        tuning = self.state.tuning_jobs[name]
        for child in self.state.children(tuning):
            if child.status == "InProgress":
                _stop_quietly(self.runner, child.name)

    def wait(self, name: str, timeout: float | None = None) -> None:
        thread = self._threads.get(name)
        if thread:
            thread.join(timeout)

    def shutdown(self) -> None:
        for name, thread in list(self._threads.items()):
            if thread.is_alive():
                self.state.change_tuning_job(name, lambda t: setattr(t, "stop_requested", True))
                self.stop(name)
                thread.join(60)

    # ----- the search loop ---------------------------------------------------------------

    def _run(self, name: str, plan: TuningPlan) -> None:
        try:
            self._search(name, plan)
        except Exception as error:  # noqa: BLE001 - a tuner crash fails the tuning job, with its reason
            logger.exception("tuning job failed", tuning_job=name)
            self.stop(name)
            self._finish(name, "Failed", f"InternalServerError: {error}")

    def _search(self, name: str, plan: TuningPlan) -> None:
        study = plan.study()
        running: dict[str, tuple[Trial, MetricReporter]] = {}
        launched = 0
        parallel = min(plan.max_parallel, self.max_running_jobs)
        while True:
            seen = self.state.changes_seen()
            tuning = self.state.tuning_jobs[name]
            while (not tuning.stop_requested and launched < plan.max_jobs and len(running) < parallel
                   and self.state.running_training_jobs() < self.max_running_jobs):
                trial = study.ask(plan.distributions)
                job_name = f"{name}-{launched + 1:03d}-{uuid.uuid4().hex[:8]}"
                tuned = {key: format_value(value) for key, value in trial.params.items()}
                reporter = MetricReporter(trial, plan.metric_regex, lambda j=job_name: self._early_stop(j))
                try:
                    self.start_training_job(child_request(tuning, job_name, tuned), tuning_job_arn=tuning.arn,
                                                    tuned=tuned, on_line=reporter)
                except ResourceLimitExceeded:  # another client took the slot: try again later
                    study.tell(trial, state=TrialState.FAIL)
                    break
                running[job_name] = (trial, reporter)
                launched += 1
            for job_name in [j for j in running if self.state.training_jobs[j].status in TERMINAL]:
                trial, reporter = running.pop(job_name)
                self._score(name, plan, study, trial, reporter, self.state.training_jobs[job_name])
            if not running and (tuning.stop_requested or launched >= plan.max_jobs):
                break
            self.state.wait_for_change(seen, POLL_SECONDS)
        self._conclude(name)

    def _early_stop(self, job_name: str) -> None:
        # Marked on the job's own log thread, so the job ends Stopped however fast its process
        # finishes; ended on another, as ending waits for the process that feeds this thread.
        try:
            self.runner.request_stop(job_name)
        except ValidationException:  # it ended meanwhile: nothing to stop
            return
        threading.Thread(target=self.runner.end_process, args=(job_name,), daemon=True).start()

    def _score(self, name: str, plan: TuningPlan, study: optuna.Study, trial: Trial, reporter: MetricReporter,
               job: "TrainingJob") -> None:
        value = next((m["Value"] for m in job.final_metrics if m["MetricName"] == plan.metric_name), None)
        objective = None
        if value is not None:
            objective = {"Type": "Maximize" if plan.maximize else "Minimize", "MetricName": plan.metric_name,
                         "Value": value}
        if reporter.pruned:
            study.tell(trial, state=TrialState.PRUNED)
        elif job.status == "Completed" and value is not None:
            study.tell(trial, value)
        else:
            study.tell(trial, state=TrialState.FAIL)
        self.state.change_training_job(job.name, lambda j: (
            setattr(j, "objective", objective),
            setattr(j, "objective_status", "Succeeded" if objective else "Failed")))
        best = self._best(name, plan)
        if best:
            self.state.change_tuning_job(name, lambda t: setattr(t, "best_training_job", best))

    def _best(self, name: str, plan: TuningPlan) -> str | None:
        scored = [c for c in self.state.children(self.state.tuning_jobs[name])
                  if c.objective_status == "Succeeded" and c.objective]
        if not scored:
            return None
        sign = 1 if plan.maximize else -1
        # Ties go to the earlier job, as the first to reach a value is the one reported.
        return max(scored, key=lambda c: (sign * c.objective["Value"], -c.creation_time)).name

    def _conclude(self, name: str) -> None:
        tuning = self.state.tuning_jobs[name]
        children = self.state.children(tuning)
        if tuning.stop_requested:
            self._finish(name, "Stopped", None)
        elif any(c.objective_status == "Succeeded" for c in children):
            self._finish(name, "Completed", None)
        else:
            reasons = [c.failure_reason for c in children if c.failure_reason]
            reason = "No training job succeeded" + (f"; first failure: {reasons[0]}" if reasons else "")
            self._finish(name, "Failed", reason[:1024])

    def _finish(self, name: str, status: str, reason: str | None) -> None:
        def mark(tuning: "TuningJob") -> None:
            tuning.status, tuning.failure_reason, tuning.end_time = status, reason, now()
        self.state.change_tuning_job(name, mark)


def _stop_quietly(runner: "TrainingRunner", job_name: str) -> None:
    """Stop a child that may have ended meanwhile (then there is nothing to stop)."""
    try:
        runner.stop(job_name)
    except ValidationException:
        pass


class _RequestView:
    """Lets `child_request` read a request that is not yet a TuningJob record (for validation)."""

    def __init__(self, params: dict[str, Any]) -> None:
        self.request = params
        self.tags = list(params.get("Tags", []))
