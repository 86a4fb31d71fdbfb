"""Tuning benchmark: hyperparameter tuning jobs on the digits through the local SageMaker.

    python bench/tuning.py [--trials 8] [--epochs 4] [--parallel 2] [--runs naive,random,bayesian,hyperband]
                           [--seeds 11,12,13]

Each run is a real CreateHyperParameterTuningJob (boto3 against the local SageMaker, S3
and EventBridge played by moto in server mode), tuning lr, optimizer and weight-decay of
a random-init ResNet-18 with a frozen trunk on scikit-learn's digits at 32 pixels:

- naive:      the seed projects' way: one trial at a time (with every core: a job alone
              gets them), the frozen trunk's features recomputed every epoch
              (`--cache-features off`), Random search;
- random, bayesian, hyperband: MaxParallelTrainingJobs trials at once, the trunk's
              features computed once and shared by the trials through a content-addressed
              cache in S3 (`--feature-cache`, a prefix of its own per run, so every run
              starts cold); Hyperband stops poor trials early from their per-epoch lines;
- random-recomputed (optional): like random, without the feature cache, to isolate it.

Every run, the naive one included, so that the runs differ only in how they search:
writes no HTML report (`--report off`) and leaves its model uncompressed
(OutputDataConfig.CompressionType NONE): nobody reads a trial's report, nobody deploys a
trial's model (the pipeline's final job trains the one it deploys). An unmeasured training
job runs first, to fill the service's download cache for every run alike.

For each run: wall time of the tuning job, best validation accuracy, time to best
(from the tuning job's creation to the end of the first trial that reached the run's
best accuracy), and the mean seconds a trial spent in each of SageMaker's secondary
statuses (Starting, Downloading, Training, Uploading). `speedup_to_best` compares each
run's time to reach the naive run's best with the naive run's time to best, and
`reached_naive_best` says whether the run got there (within 0.01). Goal: 10x. Where a
run's best falls depends on the seeds (which trial draws good hyperparameters), so
`wall_speedup` (the naive run's wall time over the run's, for the same number of trials)
says how much faster the run works, whatever its luck. With several `--seeds`, every run
runs once per seed, and `over_seeds` gives the mean times and the speedups as ratios of the
means (the expected time to the best, not one draw of it); `goal_met` is judged on those.
Figures are from one run per seed on a shared machine: noisy.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

RUNS = {
    "naive": {"strategy": "Random", "parallel": 1, "cache": "off"},
    "random": {"strategy": "Random", "parallel": None, "cache": "auto"},
    "random-recomputed": {"strategy": "Random", "parallel": None, "cache": "off"},
    "bayesian": {"strategy": "Bayesian", "parallel": None, "cache": "auto"},
    "hyperband": {"strategy": "Hyperband", "parallel": None, "cache": "auto"},
}


def tuning_request(name: str, run: dict, args: argparse.Namespace, bucket: str, seed: int) -> dict:
    from chalice_app.sagemaker_requests import SOURCE_ENVIRONMENT
    from infra.sourcedir import PROGRAM
    from training.metrics import METRIC_DEFINITIONS, OBJECTIVE_METRIC

    config: dict = {
        "Strategy": run["strategy"],
        "HyperParameterTuningJobObjective": OBJECTIVE_METRIC,
        "ResourceLimits": {"MaxNumberOfTrainingJobs": args.trials,
                           "MaxParallelTrainingJobs": run["parallel"] or args.parallel},
        "ParameterRanges": {
            "ContinuousParameterRanges": [
                {"Name": "lr", "MinValue": "0.0003", "MaxValue": "0.3", "ScalingType": "Logarithmic"},
                {"Name": "weight-decay", "MinValue": "0.00001", "MaxValue": "0.01", "ScalingType": "Logarithmic"}],
            "CategoricalParameterRanges": [{"Name": "optimizer", "Values": ["sgd", "adam", "adamw"]}],
        },
        "RandomSeed": seed,
    }
    if run["strategy"] == "Hyperband":
        config["StrategyConfig"] = {"HyperbandStrategyConfig": {"MinResource": 1, "MaxResource": args.epochs}}
    static = {
        "sagemaker_program": json.dumps(PROGRAM),
        "sagemaker_submit_directory": json.dumps(f"s3://{bucket}/code/sourcedir.tar.gz"),
        "arch": "resnet18", "pretrained": "none", "image-size": "32", "freeze": "backbone",
        "epochs": str(args.epochs), "batch-size": "64", "hflip-prob": "0", "workers": "0",
        "cache-features": run["cache"], "report": "off",
    }
    if run["cache"] == "auto":
        static["feature-cache"] = f"s3://{bucket}/cache/{name}/trunk-features/"
    return {
        "HyperParameterTuningJobName": name,
        "HyperParameterTuningJobConfig": config,
        "TrainingJobDefinition": {
            "Environment": dict(SOURCE_ENVIRONMENT),  # as the product's: the source's requirements without deps
            "StaticHyperParameters": static,
            "AlgorithmSpecification": {"TrainingImage": "local", "TrainingInputMode": "File",
                                       "MetricDefinitions": METRIC_DEFINITIONS},
            "RoleArn": "arn:aws:iam::123456789012:role/SageMakerRole",
            "InputDataConfig": [{"ChannelName": "training", "DataSource": {"S3DataSource": {
                "S3DataType": "S3Prefix", "S3Uri": f"s3://{bucket}/training-data/"}}}],
            "OutputDataConfig": {"S3OutputPath": f"s3://{bucket}/jobs", "CompressionType": "NONE"},
            "ResourceConfig": {"InstanceType": "ml.m5.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 5},
            "StoppingCondition": {"MaxRuntimeInSeconds": 1800},
        },
    }


def warm_up(sm, args: argparse.Namespace, bucket: str) -> None:
    """One unmeasured training job first: it fills the service's download cache, as any
    earlier job would, so that the first run measured (the naive one) does not pay for it alone."""
    definition = tuning_request("warm-up", RUNS["random"], args, bucket, 0)["TrainingJobDefinition"]
    static = {**definition.pop("StaticHyperParameters"), "epochs": "1", "lr": "0.01"}
    static.pop("feature-cache")
    sm.create_training_job(TrainingJobName="bench-warm-up", HyperParameters=static, **definition)
    while sm.describe_training_job(TrainingJobName="bench-warm-up")["TrainingJobStatus"] not in ("Completed", "Failed",
                                                                                                "Stopped"):
        time.sleep(1)


def measure(sm, name: str) -> dict:
    while True:
        tuning = sm.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=name)
        if tuning["HyperParameterTuningJobStatus"] in ("Completed", "Failed", "Stopped"):
            break
        time.sleep(1)
    children = sm.list_training_jobs_for_hyper_parameter_tuning_job(
        HyperParameterTuningJobName=name, MaxResults=100)["TrainingJobSummaries"]
    start = tuning["CreationTime"].timestamp()
    end = tuning["HyperParameterTuningEndTime"].timestamp()
    scored = [(c["FinalHyperParameterTuningJobObjectiveMetric"]["Value"], c["TrainingEndTime"].timestamp() - start)
              for c in children if c.get("FinalHyperParameterTuningJobObjectiveMetric")]
    phases: dict[str, list[float]] = {}
    for child in children:
        for step in sm.describe_training_job(TrainingJobName=child["TrainingJobName"])["SecondaryStatusTransitions"]:
            if "EndTime" in step:
                phases.setdefault(step["Status"], []).append((step["EndTime"] - step["StartTime"]).total_seconds())
    best = max((value for value, _ in scored), default=None)
    return {
        "status": tuning["HyperParameterTuningJobStatus"],
        "wall_s": round(end - start, 1),
        "best_valid_accuracy": best,
        "time_to_best_s": round(min(t for v, t in scored if v == best), 1) if scored else None,
        "scored": scored,
        "trial_phases_s": {status: round(sum(times) / len(times), 2) for status, times in phases.items()},
        "trials": tuning["TrainingJobStatusCounters"],
        "best_hyperparameters": tuning.get("BestTrainingJob", {}).get("TunedHyperParameters"),
    }


def time_to_reach(scored: list[tuple[float, float]], target: float) -> float | None:
    times = [t for v, t in scored if v >= target]
    return round(min(times), 1) if times else None


def compare(results: dict[str, dict]) -> dict[str, dict]:
    """One seed's runs, each against the naive run of the same seed."""
    naive = results.get("naive")
    compared = {}
    for run_name, result in results.items():
        result = {k: v for k, v in result.items() if k != "scored"}
        if naive and naive["best_valid_accuracy"] is not None and run_name != "naive":
            reached = time_to_reach(results[run_name]["scored"], naive["best_valid_accuracy"] - 0.01)
            result["reached_naive_best"] = reached is not None
            result["time_to_naive_best_s"] = reached
            result["speedup_to_best"] = round(naive["time_to_best_s"] / reached, 2) if reached else None
            result["wall_speedup"] = round(naive["wall_s"] / result["wall_s"], 2)
        compared[run_name] = result
    return compared


def over_seeds(by_seed: dict[int, dict[str, dict]]) -> dict[str, dict]:
    """Mean times over the seeds, and speedups as ratios of those means: where the naive run
    meets its best depends on the order its draws come in, and one seed is one draw of it."""
    def mean(values: list[float]) -> float:
        return round(sum(values) / len(values), 1)

    runs = {name for results in by_seed.values() for name in results}
    summary: dict[str, dict] = {}
    naive_best = [r["naive"]["time_to_best_s"] for r in by_seed.values() if "naive" in r]
    naive_wall = [r["naive"]["wall_s"] for r in by_seed.values() if "naive" in r]
    for name in sorted(runs):
        results = [r[name] for r in by_seed.values() if name in r]
        entry = {"seeds": len(results), "mean_wall_s": mean([r["wall_s"] for r in results]),
                 "mean_best_valid_accuracy": round(sum(r["best_valid_accuracy"] or 0 for r in results) / len(results), 4)}
        if name == "naive":
            entry["mean_time_to_best_s"] = mean([r["time_to_best_s"] for r in results])
        elif naive_best and len(naive_best) == len(results):
            reached = [r.get("time_to_naive_best_s") for r in results]
            entry["reached_naive_best"] = sum(t is not None for t in reached)
            if all(t is not None for t in reached):
                entry["mean_time_to_naive_best_s"] = mean(reached)
                entry["speedup_to_best"] = round(mean(naive_best) / mean(reached), 2)
            entry["wall_speedup"] = round(mean(naive_wall) / entry["mean_wall_s"], 2)
        summary[name] = entry
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--seeds", default="11", help="comma-separated; each seed runs every run once")
    parser.add_argument("--runs", default="naive,random,bayesian,hyperband")
    args = parser.parse_args()
    chosen = [r.strip() for r in args.runs.split(",") if r.strip()]
    seeds = [int(seed) for seed in args.seeds.split(",") if seed.strip()]
    unknown = sorted(set(chosen) - set(RUNS))
    if unknown:
        parser.error(f"unknown runs {unknown}; choose from {sorted(RUNS)}")

    from local_aws.moto_server import MotoProcess
    from local_aws.ports import free_port

    # moto in a process of its own, as the stack runs it: not sharing this process's GIL with the service.
    moto = MotoProcess("127.0.0.1", free_port()).start()
    os.environ.update(AWS_ENDPOINT_URL=moto.url, AWS_ACCESS_KEY_ID="bench",
                      AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
    import boto3

    from local_aws.sagemaker import s3_transfer
    from local_aws.sagemaker.config import Settings
    from local_aws.sagemaker.server import LocalSageMaker
    from infra.sourcedir import build_sourcedir
    from training.demo_data import write_digits

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no access-log line per request, as in the stack
    # The service's structured logs go to stderr: stdout is this benchmark's JSON alone.
    for handler in logging.getLogger("local-sagemaker").handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setStream(sys.stderr)
    by_seed: dict[int, dict[str, dict]] = {}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-tuning-") as tmp:
        s3 = boto3.client("s3")
        bucket = "bench-tuning"
        s3.create_bucket(Bucket=bucket)
        write_digits(Path(tmp) / "digits", "splits")
        s3_transfer.upload_tree(s3, Path(tmp) / "digits", f"s3://{bucket}/training-data/")
        s3.put_object(Bucket=bucket, Key="code/sourcedir.tar.gz", Body=build_sourcedir())
        settings = Settings(state_dir=Path(tmp) / "state", max_running_jobs=args.parallel)
        with LocalSageMaker(settings, publish=lambda event: None) as service:
            sm = boto3.client("sagemaker", endpoint_url=service.url)
            warm_up(sm, args, bucket)
            for seed in seeds:
                results: dict[str, dict] = {}
                for run_name in chosen:
                    name = f"bench-{run_name}-{seed}"[:32]
                    sm.create_hyper_parameter_tuning_job(**tuning_request(name, RUNS[run_name], args, bucket, seed))
                    results[run_name] = measure(sm, name)
                    print(json.dumps({"seed": seed, run_name: {k: v for k, v in results[run_name].items()
                                                               if k != "scored"}}), file=sys.stderr, flush=True)
                by_seed[seed] = compare(results)
    moto.stop()

    summary = over_seeds(by_seed)
    speedups = [r.get("speedup_to_best") or 0 for r in summary.values()]
    print(json.dumps({
        "benchmark": "tuning", "trials": args.trials, "epochs": args.epochs, "parallel": args.parallel,
        "cpus": os.cpu_count(), "note": "one run per seed on a shared machine: noisy",
        "load_average": {"before": [round(x, 2) for x in load_before], "after": [round(x, 2) for x in os.getloadavg()]},
        "by_seed": by_seed, "over_seeds": summary, "goal_speedup": 10, "best_speedup": max(speedups, default=0),
        "goal_met": max(speedups, default=0) >= 10,
    }, indent=2))


if __name__ == "__main__":
    main()
