"""One local training job on the digits, through the script-mode contract, then its results.

    python -m training.demo [--out demo-output/training] [--epochs 12] [--image-size 32]

Writes the digits (the splits layout whose test split is BENCHMARKS.md's), runs
`training/train.py` as a process with SageMaker's SM_* environment and `--name value`
hyperparameters, writes Debugger tensors, evaluates the Debugger rules on them,
and prints where the model, the report and the plots are.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from training.demo_data import write_digits
from training.metrics import parse_metrics

REPO_ROOT = Path(__file__).resolve().parent.parent

# Reaches test accuracy >= 0.95 on the digits in a few minutes on 2 CPU cores, from random init.
DEMO_HYPERPARAMETERS = {
    "arch": "resnet18",
    "pretrained": "none",
    "image-size": "32",
    "epochs": "12",
    "batch-size": "64",
    "optimizer": "adamw",
    "lr": "0.002",
    "weight-decay": "0.0005",
    "hflip-prob": "0",  # a mirrored digit is another shape
    "min-scale": "0.6",
    "patience": "4",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("demo-output/training"))
    parser.add_argument("--epochs", default=DEMO_HYPERPARAMETERS["epochs"])
    parser.add_argument("--image-size", default=DEMO_HYPERPARAMETERS["image-size"])
    args = parser.parse_args(argv)
    out = args.out.resolve()
    data_dir, model_dir, output_dir, tensors = out / "data", out / "model", out / "output", out / "tensors"

    if not data_dir.exists():
        print(f"writing the digits to {data_dir}", flush=True)
        write_digits(data_dir, "splits")
    hyperparameters = {**DEMO_HYPERPARAMETERS, "epochs": str(args.epochs), "image-size": str(args.image_size),
                       "debug-out": str(tensors)}
    env = {**os.environ, "SM_CHANNEL_TRAINING": str(data_dir), "SM_MODEL_DIR": str(model_dir),
           "SM_OUTPUT_DATA_DIR": str(output_dir), "SM_NUM_GPUS": "0", "TRAINING_JOB_NAME": "demo-training"}
    command = [sys.executable, "training/train.py",
               *[item for name, value in hyperparameters.items() for item in (f"--{name}", value)]]
    print("running the training job:", " ".join(command[1:]), flush=True)
    started = time.perf_counter()
    log_lines = []
    with subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True) as process:
        for line in process.stdout:
            log_lines.append(line)
            if line.startswith(("epoch=", "test_loss=", "ERROR")):
                print("  " + line.rstrip(), flush=True)
    seconds = time.perf_counter() - started
    (out / "training.log").write_text("".join(log_lines))
    if process.returncode != 0:
        print(f"the training job failed (exit {process.returncode}); its log: {out / 'training.log'}")
        return process.returncode

    rules = subprocess.run([sys.executable, "-m", "training.rules", str(tensors)], cwd=REPO_ROOT,
                           capture_output=True, text=True)
    verdicts = json.loads(rules.stdout.strip().splitlines()[-1]) if rules.returncode == 0 and rules.stdout.strip() else {}
    (out / "debugger_verdicts.json").write_text(json.dumps(verdicts, indent=2))
    test_accuracy = parse_metrics("".join(log_lines))["test:accuracy"][-1]
    print(json.dumps({
        "test_accuracy": test_accuracy,
        "training_seconds": round(seconds, 1),
        "debugger_verdicts": verdicts or f"rules failed: {rules.stderr[-500:]}",
        "model_dir": str(model_dir),
        "report": str(output_dir / "report" / "report.html"),
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
