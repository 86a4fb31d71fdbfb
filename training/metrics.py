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
]

# The tuning objective: validation accuracy. The test split stays for the quality gate.
OBJECTIVE_METRIC = {"Type": "Maximize", "MetricName": "valid:accuracy"}
GATE_METRIC = "test:accuracy"
# The live model's accuracy on the same test split (a retraining run's final job measures it).
LIVE_GATE_METRIC = "live:test_accuracy"

EPOCH_RE = re.compile(r"\bepoch=(\d+)\b")


def epoch_line(epoch: int, train_loss: float, valid_loss: float, valid_accuracy: float) -> str:
    return (
        f"epoch={epoch} train_loss={train_loss:.6f} "
        f"valid_loss={valid_loss:.6f} valid_accuracy={valid_accuracy:.6f}"
    )


def test_line(test_loss: float, test_accuracy: float) -> str:
    return f"test_loss={test_loss:.6f} test_accuracy={test_accuracy:.6f}"


def live_test_line(accuracy: float) -> str:
    return f"live_test_accuracy={accuracy:.6f}"


def parse_metrics(text: str, definitions: list[dict[str, str]] = METRIC_DEFINITIONS) -> dict[str, list[float]]:
    """Every value each definition matches, in log order (as SageMaker collects them)."""
    found: dict[str, list[float]] = {}
    for line in text.splitlines():
        for definition in definitions:
            match = re.search(definition["Regex"], line)
            if match:
                found.setdefault(definition["Name"], []).append(float(match.group(1)))
    return found
