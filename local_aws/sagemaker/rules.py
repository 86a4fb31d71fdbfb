"""Debugger rules for a finished training job, run the way AWS runs a rule container:
apart from the job, over the tensors it wrote, with each DebugRuleConfiguration's
RuleParameters (`rule_to_invoke` names the rule). The rules are the training code's
own (a program shipped in the job's source dir, named by configuration), run as a process
of their own (forked from the framework image when there is one) so the service never
imports torch or smdebug."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from .framework_image import FrameworkImage, start_process, time_limit

STATUSES = ("NoIssuesFound", "IssuesFound", "Error")


def run_debug_rules(configurations: list[dict[str, Any]], tensors: Path, code: Path, program: str | None,
                    image: FrameworkImage | None = None, timeout: float = 600) -> dict[str, dict[str, str]]:
    """{RuleConfigurationName: {"RuleEvaluationStatus": ..., "StatusDetails"?: ...}}; `program` is a
    path inside the source dir `code`, run with the tensors' folder and the configurations."""
    names = [c["RuleConfigurationName"] for c in configurations]
    if program is None:
        return {name: {"RuleEvaluationStatus": "Error", "StatusDetails": "No rule evaluator is configured"}
                for name in names}
    if not tensors.exists():
        return {name: {"RuleEvaluationStatus": "Error", "StatusDetails": "The training job wrote no tensors"}
                for name in names}
    command = [sys.executable, program, str(tensors), "--configurations", json.dumps(configurations)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(code), os.environ.get("PYTHONPATH")]))}
    process = start_process(command, code, env, image)
    with time_limit(process, timeout) as timed_out:
        assert process.stdout is not None
        output = process.stdout.read()
        process.stdout.close()
        returncode = process.wait()
    if timed_out.is_set():
        return {name: {"RuleEvaluationStatus": "Error", "StatusDetails": f"rule evaluation ran over {timeout} s"}
                for name in names}
    return parse_rule_output(names, returncode, output)


def parse_rule_output(names: list[str], returncode: int, output: str) -> dict[str, dict[str, str]]:
    """The verdicts are the program's last JSON line; its log lines and errors come before."""
    lines = [line for line in output.splitlines() if line.strip()]
    verdicts: Any = {}
    for line in reversed(lines):
        try:
            verdicts = json.loads(line)
        except ValueError:
            continue
        if isinstance(verdicts, dict) and "level" not in verdicts:  # not one of its structured log lines
            break
        verdicts = {}
    failure = "the rule evaluation answered no verdicts"
    if not verdicts:
        detail = lines[-1] if lines else "no output"
        failure = f"rule evaluation exited {returncode}: {detail}"[:1024]
    results = {}
    for name in names:
        verdict = verdicts.get(name)
        if verdict in STATUSES:
            results[name] = {"RuleEvaluationStatus": verdict}
        else:
            results[name] = {"RuleEvaluationStatus": "Error",
                             "StatusDetails": failure if not verdicts else f"no verdict for {name}"}
    return results
