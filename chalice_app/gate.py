"""The quality gate: may the freshly trained model replace the live one?"""

from __future__ import annotations

from dataclasses import dataclass

from training.metrics import GATE_METRIC


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


def judge(description: dict, live_accuracy: float | None, margin: float) -> Verdict:
    accuracy = final_metric(description)
    if accuracy is None:
        return Verdict(False, f"the training job reported no {GATE_METRIC}", None)
    findings = rule_findings(description)
    if findings:
        return Verdict(False, f"Debugger rules found issues: {', '.join(findings)}", accuracy)
    if live_accuracy is None:
        return Verdict(True, f"{GATE_METRIC} {accuracy:.4f}; no live model yet", accuracy)
    if accuracy > live_accuracy + margin:
        return Verdict(True, f"{GATE_METRIC} {accuracy:.4f} beats the live {live_accuracy:.4f} + margin {margin}", accuracy)
    return Verdict(False, f"{GATE_METRIC} {accuracy:.4f} does not beat the live {live_accuracy:.4f} + margin {margin}",
                   accuracy)
