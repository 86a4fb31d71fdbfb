"""The quality gate: may the freshly trained model replace the live one?

Both accuracies should come from the same test images: a retraining run's final job
also scores the live model on its own test split (`live:test_accuracy`). Only when the
job has no such figure (no live model was passed in, or it could not be scored) does
the gate fall back to the live model's figure stored from its own, older split, and
its reason says so.

The Debugger rules' verdicts come from the job's own metric lines (`rule:<Rule>` in
FinalMetricDataList, the default) or from the managed Debugger's statuses. The stage's
policy says per rule whether IssuesFound vetoes the model or is a finding to report.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from training.metrics import GATE_METRIC, ISSUES, LIVE_GATE_METRIC, NO_ISSUES, RULE_METRIC_PREFIX, verdict_of

from .config import VETO

# The managed Debugger may still be evaluating when the job reports Completed.
PENDING_STATUSES = ("InProgress",)


@dataclass(frozen=True)
class Verdict:
    passed: bool
    reason: str
    accuracy: float | None
    findings: list[str] = field(default_factory=list)
    pending: bool = False  # rules still running: judge again once they have finished


def final_metric(description: dict, name: str = GATE_METRIC) -> float | None:
    """A metric's final value from DescribeTrainingJob's FinalMetricDataList."""
    for metric in description.get("FinalMetricDataList", []):
        if metric.get("MetricName") == name:
            return float(metric["Value"])
    return None


def rule_verdicts(description: dict) -> dict[str, str]:
    """{rule: NoIssuesFound | IssuesFound | Error | InProgress ...}: the job's own verdict lines,
    then the managed Debugger's statuses (when it ran the rules)."""
    verdicts = {metric["MetricName"][len(RULE_METRIC_PREFIX):]: verdict_of(metric["Value"])
                for metric in description.get("FinalMetricDataList", [])
                if metric.get("MetricName", "").startswith(RULE_METRIC_PREFIX)}
    for status in description.get("DebugRuleEvaluationStatuses", []):
        verdicts[status["RuleConfigurationName"]] = status.get("RuleEvaluationStatus", "")
    return verdicts


def pending_rules(description: dict) -> list[str]:
    """Managed Debugger and Profiler rules that have not finished."""
    statuses = description.get("DebugRuleEvaluationStatuses", []) + description.get("ProfilerRuleEvaluationStatuses", [])
    return [s["RuleConfigurationName"] for s in statuses if s.get("RuleEvaluationStatus") in PENDING_STATUSES]


def judge(description: dict, stored_live_accuracy: float | None, margin: float,
          rule_policy: dict[str, str] | None = None) -> Verdict:
    """Pass a model whose veto rules found no issues and that beats the live one by more than `margin`."""
    accuracy = final_metric(description)
    pending = pending_rules(description)
    if pending:
        return Verdict(False, f"waiting for Debugger rules {', '.join(pending)}", accuracy, pending=True)
    if accuracy is None:
        return Verdict(False, f"the training job reported no {GATE_METRIC}", None)
    policy = rule_policy or {}
    verdicts = rule_verdicts(description)
    vetoes = [rule for rule, verdict in verdicts.items() if verdict == ISSUES and policy.get(rule, VETO) == VETO]
    findings = [f"{rule} {verdict}" for rule, verdict in sorted(verdicts.items())
                if verdict != NO_ISSUES and rule not in vetoes]
    if vetoes:
        return Verdict(False, f"Debugger rules found issues: {', '.join(vetoes)}", accuracy, findings)
    noted = f"; Debugger findings: {', '.join(findings)}" if findings else ""
    if stored_live_accuracy is None:
        return Verdict(True, f"{GATE_METRIC} {accuracy:.4f}; no live model yet{noted}", accuracy, findings)
    live_accuracy = final_metric(description, LIVE_GATE_METRIC)
    where = "on the same test split"
    if live_accuracy is None:
        live_accuracy, where = stored_live_accuracy, "as stored from its own run"
    comparison = f"the live {live_accuracy:.4f} ({where}) + margin {margin}"
    if accuracy > live_accuracy + margin:
        return Verdict(True, f"{GATE_METRIC} {accuracy:.4f} beats {comparison}{noted}", accuracy, findings)
    return Verdict(False, f"{GATE_METRIC} {accuracy:.4f} does not beat {comparison}{noted}", accuracy, findings)
