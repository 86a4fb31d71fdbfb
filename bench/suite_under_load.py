"""The whole test suite, several times in a row, with a CPU hog on every core: no test may
depend on how fast the machine is (issue #14), and this is how that is shown.

    python bench/suite_under_load.py [--runs 3] [--hogs 0 (one per core)] [-- extra pytest args]

Each hog is a process spinning in pure Python at normal priority, so the suite shares every
core with them as it would a busy CI runner. Prints one JSON line per run (passed, failed,
errors, the failing tests' ids, seconds) and a summary; exits 1 if any run had a failure. Each
run's whole output is kept in test-output/suite-under-load/run-<n>.log, failures' tracebacks with it.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COUNTS = re.compile(r"(\d+) (passed|failed|error|errors)\b")
FAILED = re.compile(r"^(?:FAILED|ERROR) (\S+)", re.MULTILINE)
LOGS = ROOT / "test-output" / "suite-under-load"


def _spin() -> None:
    while True:
        pass


def run_suite(number: int, extra: list[str]) -> dict:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *extra], cwd=ROOT,
                          capture_output=True, text=True, stdin=subprocess.DEVNULL)
    LOGS.mkdir(parents=True, exist_ok=True)
    (LOGS / f"run-{number}.log").write_text(done.stdout + done.stderr)
    tail = done.stdout.splitlines()[-1] if done.stdout else ""
    counts = {kind.rstrip("s"): int(n) for n, kind in COUNTS.findall(tail)}
    return {"returncode": done.returncode, "seconds": round(time.monotonic() - started, 1),
            "passed": counts.get("passed", 0), "failed": counts.get("failed", 0), "errors": counts.get("error", 0),
            "failing": FAILED.findall(done.stdout), "summary": tail}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--hogs", type=int, default=0, help="hog processes (0: one per core)")
    args, extra = parser.parse_known_args()
    extra = [a for a in extra if a != "--"]
    hogs = [multiprocessing.Process(target=_spin, daemon=True) for _ in range(args.hogs or os.cpu_count() or 1)]
    for hog in hogs:
        hog.start()
    results = []
    try:
        for number in range(1, args.runs + 1):
            result = {"run": number, "hogs": len(hogs), **run_suite(number, extra)}
            results.append(result)
            print(json.dumps(result), flush=True)
    finally:
        for hog in hogs:
            hog.terminate()
    clean = all(r["returncode"] == 0 for r in results)
    print(json.dumps({"runs": len(results), "all_passed": clean,
                      "failures": sum(r["failed"] + r["errors"] for r in results),
                      "seconds": [r["seconds"] for r in results]}), flush=True)
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())
