"""Debugger rules for a finished training job, run the way AWS runs a rule container:
apart from the job, over the tensors it wrote, with each DebugRuleConfiguration's
RuleParameters (`rule_to_invoke` names the rule). The rules are the training code's
own (`training.rules`, shipped in the job's source dir), run in a child process so the
service never imports torch or smdebug."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

STATUSES = ("NoIssuesFound", "IssuesFound", "Error")
_EVALUATE = (
    "import json, sys\n"
    "from training.rules import evaluate_rule_configurations\n"
    "verdicts = evaluate_rule_configurations(sys.argv[1], json.loads(sys.argv[2]))\n"
    "print(json.dumps(verdicts), flush=True)\n"
)


def run_debug_rules(configurations: list[dict[str, Any]], tensors: Path, code: Path,
                    timeout: float = 600) -> dict[str, dict[str, str]]:
    """{RuleConfigurationName: {"RuleEvaluationStatus": ..., "StatusDetails"?: ...}}."""
    names = [c["RuleConfigurationName"] for c in configurations]
    if not tensors.exists():
        return {name: {"RuleEvaluationStatus": "Error", "StatusDetails": "The training job wrote no tensors"}
                for name in names}
    command = [sys.executable, "-c", _EVALUATE, str(tensors), json.dumps(configurations)]
    try:
        done = subprocess.run(command, cwd=code, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {name: {"RuleEvaluationStatus": "Error", "StatusDetails": f"rule evaluation ran over {timeout} s"}
                for name in names}
    return parse_rule_output(names, done.returncode, done.stdout, done.stderr)


def parse_rule_output(names: list[str], returncode: int, stdout: str, stderr: str) -> dict[str, dict[str, str]]:
    lines = [line for line in stdout.splitlines() if line.strip()]
    failure = "the rule evaluation answered no verdicts"
    try:
        verdicts = json.loads(lines[-1])
    except (IndexError, ValueError):
        detail = (stderr.strip().splitlines() or ["no verdict"])[-1]
        verdicts = {}
        failure = f"rule evaluation exited {returncode}: {detail}"[:1024]
    results = {}
    for name in names:
        verdict = verdicts.get(name) if isinstance(verdicts, dict) else None
        if verdict in STATUSES:
            results[name] = {"RuleEvaluationStatus": verdict}
        else:
            results[name] = {"RuleEvaluationStatus": "Error",
                             "StatusDetails": failure if not verdicts else f"no verdict for {name}"}
    return results
