"""`make demo`: the whole product on this machine, start to finish, with nothing called by hand.

    python -m local_aws demo [--out demo-output] [--trials 4] [--parallel 2] [--epochs 2]

1. starts the stack (`python -m local_aws up`, fresh state) with a demo budget set
   through the local stage's own variables;
2. writes the digits into `training-data/`; the pipeline runs by itself: tuning ->
   final training -> quality gate -> endpoint, with progress printed as it goes;
3. drops held-out images into `incoming/`, reads their predictions through the HTTP
   API and prints their accuracy;
4. adds more labelled data and follows the automatic retraining to the next model
   version, while a steady stream of images keeps being classified: every one of
   them must get its prediction (no failed request during the endpoint update);
5. sends shifted (inverted) digits until the drift check sees them, lets a scripted reviewer
   label the review queue through the API, and follows the retraining that starts from those
   labels to a new version whose accuracy on shifted images recovers
   (local_aws/project/drift_demo.py; `--no-drift` leaves it out);
6. leaves in the output folder: the tuning table, the final job's report (loss
   curves, confusion matrix, profile, and the Debugger verdicts the gate read:
   `report/report.html`), the profiler report, the verdicts, the
   predictions' accuracy and a summary with timings.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import shutil
import tarfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from chalice_app.gate import rule_verdicts

from .drift_demo import DriftStep
from .launcher import StackProcess
from ..sagemaker.s3_transfer import download_prefix, split_s3_uri

TERMINAL = ("DEPLOYED", "REJECTED", "FAILED")


def demo_budget(trials: int, parallel: int, epochs: int, *, image_size: int = 32,
                freeze: str = "none") -> dict[str, str]:
    """The local stage's knobs for a demo that fits in minutes on 2 cores (bench/e2e.py's too)."""
    return {
        "MAX_TRAINING_JOBS": str(trials), "MAX_PARALLEL_JOBS": str(parallel), "TUNING_STRATEGY": "Random",
        # A burst ends with the _COMMIT marker the demo uploads last; the quiet window (longer
        # than the training queue's 20 s batching window) is only the fallback.
        "QUIET_WINDOW_SECONDS": "30", "MIN_IMAGES": "50",
        # The drift step (local_aws/project/drift_demo.py): enough sampled labels in a few hundred
        # images for a live accuracy with an interval a person can read; the hourly cap above all the
        # demo's images (at the default 100, the new version's were no longer sampled).
        "REVIEW_SAMPLE_RATE": "0.1", "DRIFT_REVIEW_SAMPLE_RATE": "0.5", "REVIEW_SAMPLES_PER_HOUR": "2000",
        "STATIC_HYPERPARAMETERS": json.dumps({
            "arch": "resnet18", "optimizer": "adam", "freeze": freeze, "pretrained": "none",
            "image-size": str(image_size), "epochs": str(epochs), "patience": "2", "hflip-prob": "0", "workers": "0"}),
        "TUNING_RANGES": json.dumps({
            "lr": {"type": "continuous", "min": 0.0005, "max": 0.004, "scaling": "Logarithmic"},
            "batch-size": {"type": "categorical", "values": ["16", "32"]}}),
    }


class Demo:
    def __init__(self, stack: StackProcess, out: Path, digits: Path, drift: bool = True) -> None:
        self.stack, self.out, self.digits, self.drift = stack, out, digits, drift
        self.s3, self.sm = stack.client("s3"), stack.client("sagemaker")
        self.started = time.monotonic()
        self.timings: dict[str, float] = {}

    def say(self, message: str) -> None:
        elapsed = time.monotonic() - self.started
        print(f"[{int(elapsed // 60):02d}:{int(elapsed % 60):02d}] {message}", flush=True)

    def mark(self, name: str) -> None:
        self.timings[name] = round(time.monotonic() - self.started, 1)

    # --- data -----------------------------------------------------------------------------

    def split(self) -> tuple[list[Path], list[Path], list[Path]]:
        """(first training set, more labelled data for later, held-out images to classify)."""
        files = sorted(self.digits.rglob("*.png"))
        held_out = files[::10]
        rest = [f for i, f in enumerate(files) if i % 10]
        # Interleaved, not cut: the files sort by label, and every set needs every label. A third first,
        # then the other two thirds: with 1.5x the data (its first split) the retrained model lost to the
        # live one on the same test split in one demo of three, and the gate rightly kept the live one;
        # with 3x, the next version wins and the demo shows the endpoint update it is there to show.
        return rest[::3], [f for i, f in enumerate(rest) if i % 3], held_out

    def upload(self, files: list[Path], key_of) -> None:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda f: self.s3.upload_file(str(f), self.stack.bucket, key_of(f)), files))

    def upload_training(self, files: list[Path]) -> None:
        """Labelled images, then the _COMMIT marker that tells the pipeline the upload is complete."""
        self.upload(files, self.training_key)
        self.s3.put_object(Bucket=self.stack.bucket, Key="training-data/_COMMIT", Body=b"")

    @staticmethod
    def training_key(path: Path) -> str:
        return f"training-data/{path.parent.name}/{path.name}"

    # --- following the pipeline -----------------------------------------------------------

    def runs(self) -> list[dict[str, Any]]:
        status, body = self.stack.api("/runs?limit=20")
        return body["items"] if status == 200 else []

    def follow_run(self, known: set[str], timeout: float) -> dict[str, Any]:
        """Print the progress of the next run (one not in `known`) until it ends."""
        deadline, last = time.monotonic() + timeout, ""
        while time.monotonic() < deadline:
            new = [r for r in self.runs() if r["run_id"] not in known]
            if new:
                run = new[0]
                line = self.describe_progress(run)
                if line != last:
                    self.say(line)
                    last = line
                if run["status"] in TERMINAL:
                    return run
            time.sleep(5)
        raise TimeoutError(f"no run ended within {timeout} s; see {self.stack.log_path}")

    @staticmethod
    def summarise_run(run: dict[str, Any]) -> dict[str, Any]:
        """What the summary keeps of an ended run."""
        return {k: run.get(k) for k in ("run_id", "status", "reason", "gate", "model_version", "test_accuracy")}

    def describe_progress(self, run: dict[str, Any]) -> str:
        status = run["status"]
        if status == "TUNING" and run.get("tuning_job"):
            tuning = self.sm.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=run["tuning_job"])
            counters = tuning["TrainingJobStatusCounters"]
            best = tuning.get("BestTrainingJob", {}).get("FinalHyperParameterTuningJobObjectiveMetric", {})
            total = tuning["HyperParameterTuningJobConfig"]["ResourceLimits"]["MaxNumberOfTrainingJobs"]
            best_text = f", best {best['MetricName']} {best['Value']:.3f}" if best else ""
            return (f"run {run['run_id']}: tuning {counters.get('Completed', 0)}/{total} trials done, "
                    f"{counters.get('InProgress', 0)} running{best_text}")
        if status == "TRAINING" and run.get("training_job"):
            job = self.sm.describe_training_job(TrainingJobName=run["training_job"])
            return f"run {run['run_id']}: final training {run['training_job']} ({job['SecondaryStatus']})"
        if status in TERMINAL or status == "DEPLOYING":
            return f"run {run['run_id']}: {status} {run.get('reason') or run.get('model_version') or ''}".rstrip()
        return f"run {run['run_id']}: {status} ({run.get('images', '?')} images)"

    # --- predictions ----------------------------------------------------------------------

    def classify(self, files: list[Path], prefix: str, timeout: float = 300) -> dict[str, dict[str, Any]]:
        """Upload images to incoming/ and read every prediction back through the API."""
        names = {f"{prefix}{f.parent.name}-{f.name}": f for f in files}
        self.upload(files, lambda f: f"incoming/{prefix}{f.parent.name}-{f.name}")
        answers: dict[str, dict[str, Any]] = {}
        deadline = time.monotonic() + timeout
        while len(answers) < len(names) and time.monotonic() < deadline:
            for name in names.keys() - answers.keys():
                status, item = self.stack.api(f"/predictions/{name}")
                if status == 200 and item.get("status") in ("OK", "FAILED"):
                    answers[name] = item
            time.sleep(1)
        return answers

    @staticmethod
    def accuracy(answers: dict[str, dict[str, Any]]) -> tuple[float, int]:
        right = sum(1 for name, item in answers.items()
                    if item.get("status") == "OK" and item["labels"][0]["label"] == name.split("-")[1])  # heldout-<label>-<file>
        return (right / len(answers) if answers else 0.0), len(answers)

    # --- outputs --------------------------------------------------------------------------

    def collect(self, run: dict[str, Any]) -> dict[str, Any]:
        collected: dict[str, Any] = {}
        trials = self.sm.list_training_jobs_for_hyper_parameter_tuning_job(
            HyperParameterTuningJobName=run["tuning_job"], MaxResults=100)["TrainingJobSummaries"]
        names = sorted({k for t in trials for k in t.get("TunedHyperParameters", {})})
        rows = [{"training_job": t["TrainingJobName"], "status": t["TrainingJobStatus"],
                 **{n: t.get("TunedHyperParameters", {}).get(n, "") for n in names},
                 "objective": t.get("FinalHyperParameterTuningJobObjectiveMetric", {}).get("Value", ""),
                 "seconds": round(t["TrainingEndTime"].timestamp() - t["TrainingStartTime"].timestamp())
                 if t.get("TrainingEndTime") and t.get("TrainingStartTime") else ""}
                for t in sorted(trials, key=lambda t: t["TrainingJobName"])]
        if rows:
            with open(self.out / "tuning.csv", "w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
                writer.writeheader()
                writer.writerows(rows)
            header = "| " + " | ".join(rows[0]) + " |\n|" + "---|" * len(rows[0]) + "\n"
            (self.out / "tuning.md").write_text(header + "".join(
                "| " + " | ".join(str(v) for v in row.values()) + " |\n" for row in rows))
        collected["trials"] = len(rows)
        job = self.sm.describe_training_job(TrainingJobName=run["training_job"])
        # The job's own verdict lines (in-job Debugger), or the managed service's statuses.
        verdicts = rule_verdicts(job)
        (self.out / "debugger-verdicts.json").write_text(json.dumps(verdicts, indent=2))
        collected["final_metrics"] = {m["MetricName"]: m["Value"] for m in job.get("FinalMetricDataList", [])}
        output = job["ModelArtifacts"]["S3ModelArtifacts"].rsplit("/", 1)[0] + "/output.tar.gz"
        bucket, key = split_s3_uri(output)
        try:
            body = self.s3.get_object(Bucket=bucket, Key=key)["Body"].read()
            with tarfile.open(fileobj=io.BytesIO(body)) as archive:
                archive.extractall(self.out / "final-job", filter="data")
            collected["final_job_files"] = sorted(str(p.relative_to(self.out)) for p in
                                                  (self.out / "final-job").rglob("*") if p.is_file())
            # Drawn again here, with the verdicts as the gate read them (a managed service's come after the job).
            from training.report import report_from_output  # matplotlib: only where a report is drawn

            collected["report"] = str(report_from_output(self.out / "final-job", self.out / "report",
                                                         verdicts).relative_to(self.out))
        except Exception as error:  # noqa: BLE001 - report what is missing, keep the rest
            collected["final_job_output_error"] = str(error)
        profiler = job.get("ProfilerConfig", {}).get("S3OutputPath")
        if profiler:
            uri = f"{profiler.rstrip('/')}/{job['TrainingJobName']}/rule-output/ProfilerReport/profiler-output/"
            collected["profiler_files"] = download_prefix(self.s3, uri, self.out / "profiler")
        return collected

    # --- the scenario ---------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        first, more, held_out = self.split()
        summary: dict[str, Any] = {"images": {"training": len(first), "more_training": len(more),
                                              "held_out": len(held_out)}}
        self.say(f"uploading {len(first)} labelled digits to s3://{self.stack.bucket}/training-data/")
        self.upload_training(first)
        self.mark("uploaded")
        run = self.follow_run(set(), timeout=3600)
        self.mark("first_run_ended")
        summary["first_run"] = self.summarise_run(run)
        if run["status"] != "DEPLOYED":
            self.say(f"the first run ended {run['status']}: {run.get('reason')}")
            return summary
        summary["outputs"] = self.collect(run)

        self.say(f"dropping {len(held_out)} held-out images into incoming/")
        answers = self.classify(held_out, "heldout-")
        accuracy, count = self.accuracy(answers)
        self.mark("predictions_read")
        self.say(f"{count}/{len(held_out)} predictions read through the API: accuracy {accuracy:.3f}")
        summary["held_out"] = {"answered": count, "accuracy": round(accuracy, 4)}
        (self.out / "predictions.json").write_text(json.dumps(answers, indent=2, default=str))

        self.say(f"adding {len(more)} more labelled images: retraining starts by itself")
        known = {r["run_id"] for r in self.runs()}
        stream = Stream(self, held_out)
        stream.start()
        self.upload_training(more)
        second = self.follow_run(known, timeout=3600)
        stream.stop()
        self.mark("second_run_ended")
        status, live = self.stack.api("/models/live")
        summary["second_run"] = self.summarise_run(second)
        summary["live_model"] = live if status == 200 else None
        summary["during_update"] = stream.report()
        self.say(f"second run {second['status']}: {second.get('gate') or second.get('reason')}")
        self.say(f"live model {live.get('model_version') if status == 200 else None}; "
                 f"during the update {stream.report()}")
        if self.drift:
            summary["drift"] = DriftStep(self).run(first + more, held_out)
        return summary


class Stream:
    """A steady trickle of images while the pipeline retrains and updates the endpoint."""

    def __init__(self, demo: Demo, files: list[Path]) -> None:
        self.demo, self.files = demo, files
        self._stop = threading.Event()
        self.sent: list[str] = []
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        index = 0
        while not self._stop.wait(1.0):
            path = self.files[index % len(self.files)]
            name = f"stream-{index:05d}-{path.parent.name}-{path.name}"
            self.demo.s3.upload_file(str(path), self.demo.stack.bucket, f"incoming/{name}")
            self.sent.append(name)
            index += 1

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        time.sleep(5)  # the last uploads' predictions

    def report(self) -> dict[str, Any]:
        statuses: dict[str, int] = {}
        versions: set[str] = set()
        for name in self.sent:
            status, item = self.demo.stack.api(f"/predictions/{name}")
            key = item.get("status", str(status)) if isinstance(item, dict) else str(status)
            statuses[key] = statuses.get(key, 0) + 1
            if isinstance(item, dict) and item.get("model_version"):
                versions.add(item["model_version"])
        return {"sent": len(self.sent), "statuses": statuses, "model_versions": sorted(versions)}


def _wait_for_ctrl_c() -> None:
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        print("stopping the stack", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m local_aws demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("demo-output"))
    parser.add_argument("--state-dir", type=Path, default=Path(".local-aws/demo"),
                        help="the demo's own stack state (emptied first)")
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--no-drift", action="store_true",
                        help="end after the endpoint update, without the drift step (shifted images, review, retraining)")
    parser.add_argument("--keep-up", action="store_true",
                        help="leave the stack up after the demo, until Ctrl-C, to look around in the console")
    args = parser.parse_args(argv)
    from training.demo_data import write_digits

    shutil.rmtree(args.out, ignore_errors=True)
    shutil.rmtree(args.state_dir, ignore_errors=True)
    args.out.mkdir(parents=True)
    digits = args.out / "digits"
    write_digits(digits, "labels")
    started = time.monotonic()
    stack = StackProcess(args.state_dir, overrides=demo_budget(args.trials, args.parallel, args.epochs),
                         schedule_seconds=5, log_path=args.out.resolve() / "stack.log")
    print(f"starting the stack (log: {stack.log_path})", flush=True)
    with stack:
        demo = Demo(stack, args.out, digits, drift=not args.no_drift)
        demo.say(f"stack up: API {stack.urls['api']}, moto {stack.urls['moto']}, "
                 f"local SageMaker {stack.urls['sagemaker']}")
        demo.say(f"web console: {stack.urls['api']}/console")
        summary = demo.run()
        summary["timings_s"] = demo.timings
        if args.keep_up:
            (args.out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
            demo.say(f"the stack stays up: open {stack.urls['api']}/console (Ctrl-C stops it)")
            _wait_for_ctrl_c()
    shutil.rmtree(digits, ignore_errors=True)
    summary["wall_seconds"] = round(time.monotonic() - started, 1)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print(json.dumps(summary, indent=2, default=str))
    print(f"outputs in {args.out}/ (report/report.html, tuning.md, final-job/, profiler/, debugger-verdicts.json, "
          "predictions.json)")
    return 0 if summary.get("first_run", {}).get("status") == "DEPLOYED" else 1


if __name__ == "__main__":
    raise SystemExit(main())
