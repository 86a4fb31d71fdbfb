"""The metric lines the training job prints, and the regexes that read them back.

SageMaker's MetricDefinitions (training and tuning jobs) and the local SageMaker parse
the job's log with exactly these regexes; tests run them against real output. The
module is pure Python so the Lambda side can import it without torch.
"""

from __future__ import annotations

import re

_NUMBER = r"([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)"

METRIC_DEFINITIONS: list[dict[str, str]] = [
    {"Name": "train:loss", "Regex": rf"\btrain_loss={_NUMBER}"},
    {"Name": "valid:loss", "Regex": rf"\bvalid_loss={_NUMBER}"},
    {"Name": "valid:accuracy", "Regex": rf"\bvalid_accuracy={_NUMBER}"},
    {"Name": "test:loss", "Regex": rf"\btest_loss={_NUMBER}"},
    {"Name": "test:accuracy", "Regex": rf"\btest_accuracy={_NUMBER}"},
    {"Name": "live:test_accuracy", "Regex": rf"\blive_test_accuracy={_NUMBER}"},
    # The optimised model beside the eager one (training/optimised.py): its top-1 agreement with the
    # eager fp32 model on the test split, and both models' batch-1 forward latency in the job.
    {"Name": "optimised:agreement", "Regex": rf"\boptimised_agreement={_NUMBER}"},
    {"Name": "optimised:latency_ms", "Regex": rf"\boptimised_latency_ms={_NUMBER}"},
    {"Name": "eager:latency_ms", "Regex": rf"\beager_latency_ms={_NUMBER}"},
]

# The tuning objective: validation accuracy. The test split stays for the quality gate.
OBJECTIVE_METRIC = {"Type": "Maximize", "MetricName": "valid:accuracy"}
GATE_METRIC = "test:accuracy"
# The live model's accuracy on the same test split (a retraining run's final job measures it).
LIVE_GATE_METRIC = "live:test_accuracy"

# The optimised model goes into the artefact only when it gives the eager model's top-1 answer on at
# least this fraction of the test split (a stage setting, OPTIMISED_MIN_AGREEMENT, may raise or lower it).
DEFAULT_MIN_AGREEMENT = 0.995

EPOCH_RE = re.compile(r"\bepoch=(\d+)\b")

# The Debugger rules the final job evaluates itself (training/rules.py, AWS's built-in rules on
# smdebug), each verdict one metric line, `rule_VanishingGradient=0`, so that it reaches the
# gate through DescribeTrainingJob's FinalMetricDataList like any other metric.
DEBUGGER_RULES = ("VanishingGradient", "ExplodingTensor", "Overfit", "Overtraining", "PoorWeightInitialization",
                  "LossNotDecreasing")
NO_ISSUES, ISSUES, ERROR = "NoIssuesFound", "IssuesFound", "Error"
VERDICT_VALUES = {NO_ISSUES: 0, ISSUES: 1, ERROR: -1}
RULE_METRIC_PREFIX = "rule:"
RULE_METRIC_DEFINITIONS: list[dict[str, str]] = [
    {"Name": f"{RULE_METRIC_PREFIX}{rule}", "Regex": rf"\brule_{rule}=(-?[01])\b"} for rule in DEBUGGER_RULES
]


def epoch_line(epoch: int, train_loss: float, valid_loss: float, valid_accuracy: float) -> str:
    return (
        f"epoch={epoch} train_loss={train_loss:.6f} "
        f"valid_loss={valid_loss:.6f} valid_accuracy={valid_accuracy:.6f}"
    )


def test_line(test_loss: float, test_accuracy: float) -> str:
    return f"test_loss={test_loss:.6f} test_accuracy={test_accuracy:.6f}"


def live_test_line(accuracy: float) -> str:
    return f"live_test_accuracy={accuracy:.6f}"


def optimised_line(agreement: float, optimised_latency_ms: float, eager_latency_ms: float) -> str:
    return (f"optimised_agreement={agreement:.6f} optimised_latency_ms={optimised_latency_ms:.3f} "
            f"eager_latency_ms={eager_latency_ms:.3f}")


def rule_line(rule: str, verdict: str) -> str:
    return f"rule_{rule}={VERDICT_VALUES[verdict]}"


def format_rule_parameters(parameters: dict[str, dict[str, str]]) -> str:
    """Rule parameters as one hyperparameter, `Overfit.patience=3,LossNotDecreasing.mode=TRAIN`: a
    JSON object would not survive the training toolkit, which decodes JSON-looking hyperparameters
    and passes a mapping to the script as `key=value,...` of its top level only."""
    items = [f"{rule}.{key}={value}" for rule, values in sorted(parameters.items()) for key, value in sorted(values.items())]
    bad = [item for item in items if "," in item]
    if bad:
        raise ValueError(f"rule parameter values cannot hold commas: {bad}")
    return ",".join(items)


def parse_rule_parameters(items: str | list[str]) -> dict[str, dict[str, str]]:
    """`Rule.key=value` items (a list, or one comma-separated string) as {rule: {key: value}}."""
    if isinstance(items, str):
        items = [item for item in items.split(",") if item.strip()]
    parameters: dict[str, dict[str, str]] = {}
    for item in items:
        key, sep, value = item.strip().partition("=")
        rule, dot, parameter = key.partition(".")
        if not sep or not dot or not rule or not parameter:
            raise ValueError(f"a rule parameter is Rule.key=value, not {item!r}")
        parameters.setdefault(rule, {})[parameter] = value
    return parameters


def verdict_of(value: float) -> str:
    """A rule metric's value back as its verdict."""
    return {v: k for k, v in VERDICT_VALUES.items()}.get(int(value), ERROR)


def parse_metrics(text: str, definitions: list[dict[str, str]] = METRIC_DEFINITIONS) -> dict[str, list[float]]:
    """Every value each definition matches, in log order (as SageMaker collects them)."""
    found: dict[str, list[float]] = {}
    for line in text.splitlines():
        for definition in definitions:
            match = re.search(definition["Regex"], line)
            if match:
                found.setdefault(definition["Name"], []).append(float(match.group(1)))
    return found
