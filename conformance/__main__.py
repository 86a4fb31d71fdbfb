"""The conformance check: the product in the environments of the images it is deployed to.

    python -m conformance [--workdir DIR]

1. builds (or reuses, cached) one virtualenv with exactly the PyTorch training image's packages
   and one with the inference image's (infra/frameworks.py);
2. runs the final job's exact request through AWS's training toolkit in the first
   (conformance/training.py), and a job whose training code imports a package the image lacks,
   which must fail;
3. serves the model.tar.gz the first job produced with AWS's serving toolkit and TorchServe from
   the second, and checks its answers (conformance/serving.py).

Prints each step's JSON lines, then a summary; exits 1 if anything failed.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import time
from pathlib import Path

from conformance import serving, training
from conformance.environments import ensure_environment
from infra.frameworks import INFERENCE, TRAINING


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=None, help="scratch folder (default: a temporary one)")
    args = parser.parse_args(argv)
    # A cancelled CI job sends SIGTERM: unwind through each step's cleanup.
    signal.signal(signal.SIGTERM, lambda signo, frame: sys.exit(128 + signo))
    started = time.monotonic()
    timings: dict[str, float] = {}

    def timed(step: str, since: float) -> None:
        timings[step] = round(time.monotonic() - since, 1)

    with tempfile.TemporaryDirectory(prefix="conformance-") as scratch:
        workdir = args.workdir or Path(scratch)
        workdir.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        training_python = ensure_environment(TRAINING)
        serving_python = ensure_environment(INFERENCE)
        timed("environments", t0)
        t0 = time.monotonic()
        result, failures = training.run(training_python, workdir)
        timed("training", t0)
        served: dict = {"ok": False, "error": "no model to serve"}
        if result.model_tar.is_file():
            t0 = time.monotonic()
            served = serving.serve_and_check(result.model_tar, serving_python)
            timed("serving", t0)
        if not served["ok"]:
            failures.append("the model serves correctly in the inference image")
    timings["total"] = round(time.monotonic() - started, 1)
    print(json.dumps({"ok": not failures, "failures": failures, "seconds": timings,
                      "final_job_seconds": round(result.seconds, 1), "serving": served}, indent=2), flush=True)
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
