"""The quality gate: may the freshly trained model replace the live one?

Both accuracies should come from the same test images: a retraining run's final job
also scores the live model on its own test split (`live:test_accuracy`). Only when the
job has no such figure (no live model was passed in, or it could not be scored) does
the gate fall back to the live model's figure stored from its own, older split, and
its reason says so.
"""

from __future__ import annotations

from dataclasses import dataclass

from training.metrics import GATE_METRIC, LIVE_GATE_METRIC


@dataclass(frozen=True)
class Verdict:
    passed: bool
    reason: str
    accuracy: float | None


def final_metric(description: dict, name: str = GATE_METRIC) -> float | None:
    """A metric's final value from DescribeTrainingJob's FinalMetricDataList."""
    for metric in description.get("FinalMetricDataList", []):
        if metric.get("MetricName") == name:
            return float(metric["Value"])
    return None


def rule_findings(description: dict) -> list[str]:
    """Debugger rules that found issues (the gate's veto)."""
    return [status["RuleConfigurationName"] for status in description.get("DebugRuleEvaluationStatuses", [])
            if status.get("RuleEvaluationStatus") == "IssuesFound"]


def judge(description: dict, stored_live_accuracy: float | None, margin: float) -> Verdict:
    """Pass a model with no Debugger findings that beats the live one by more than `margin`."""
    accuracy = final_metric(description)
    if accuracy is None:
        return Verdict(False, f"the training job reported no {GATE_METRIC}", None)
    findings = rule_findings(description)
    if findings:
        return Verdict(False, f"Debugger rules found issues: {', '.join(findings)}", accuracy)
    if stored_live_accuracy is None:
        return Verdict(True, f"{GATE_METRIC} {accuracy:.4f}; no live model yet", accuracy)
    live_accuracy = final_metric(description, LIVE_GATE_METRIC)
    where = "on the same test split"
    if live_accuracy is None:
        live_accuracy, where = stored_live_accuracy, "as stored from its own run"
    comparison = f"the live {live_accuracy:.4f} ({where}) + margin {margin}"
    if accuracy > live_accuracy + margin:
        return Verdict(True, f"{GATE_METRIC} {accuracy:.4f} beats {comparison}", accuracy)
    return Verdict(False, f"{GATE_METRIC} {accuracy:.4f} does not beat {comparison}", accuracy)
