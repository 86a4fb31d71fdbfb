"""The project's own training job on the digits, through the local SageMaker: a real tuning
job whose best job really is the best, and a final job with Debugger rules and the profiler."""

from __future__ import annotations

import json
from importlib.metadata import distributions

import pytest
import requests

from chalice_app.sagemaker_requests import SOURCE_ENVIRONMENT
from infra.sourcedir import PROGRAM, build_sourcedir
from local_aws.sagemaker import s3_transfer
from training.metrics import METRIC_DEFINITIONS, OBJECTIVE_METRIC

from .conftest import IMAGE, ROLE, unique, wait_for

pytestmark = pytest.mark.slow
DONE = ("Completed", "Failed", "Stopped")
# Tiny but real: a random-init ResNet-18 on 32-pixel digits, frozen trunk (features cached once).
# No optimised model: these tests are about the jobs (tests/training/test_optimised.py is about that step).
STATIC = {"arch": "resnet18", "pretrained": "none", "image-size": "32", "epochs": "3", "batch-size": "64",
          "freeze": "backbone", "hflip-prob": "0", "workers": "0", "optimise": "off"}


def installed() -> dict[str, str]:
    return {dist.metadata["Name"].lower(): dist.version for dist in distributions()}


@pytest.fixture(scope="module", autouse=True)
def _venv_untouched():
    """The local SageMaker runs jobs in this venv: installing their source's requirements must change
    nothing in it (local_aws/sagemaker/image_packages.py)."""
    before = installed()
    yield
    assert installed() == before


@pytest.fixture(scope="module")
def digits_uri(s3, bucket, digits_splits) -> str:
    s3_transfer.upload_tree(s3, digits_splits, f"s3://{bucket}/training-data/")
    return f"s3://{bucket}/training-data/"


@pytest.fixture(scope="module")
def sourcedir_uri(s3, bucket) -> str:
    s3.put_object(Bucket=bucket, Key="code/sourcedir.tar.gz", Body=build_sourcedir())
    return f"s3://{bucket}/code/sourcedir.tar.gz"


def definition(bucket: str, digits_uri: str) -> dict:
    """The product's own training request shape: its source's requirements installed without their
    dependencies (SOURCE_ENVIRONMENT). With them, pip would downgrade protobuf to smdebug's stale pin,
    and here the job's "container" is this venv."""
    return {
        "Environment": dict(SOURCE_ENVIRONMENT),
        "AlgorithmSpecification": {"TrainingImage": IMAGE, "TrainingInputMode": "File",
                                   "MetricDefinitions": METRIC_DEFINITIONS},
        "RoleArn": ROLE,
        "InputDataConfig": [{"ChannelName": "training", "DataSource": {"S3DataSource": {
            "S3DataType": "S3Prefix", "S3Uri": digits_uri}}}],
        "OutputDataConfig": {"S3OutputPath": f"s3://{bucket}/jobs"},
        "ResourceConfig": {"InstanceType": "ml.m5.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 5},
        "StoppingCondition": {"MaxRuntimeInSeconds": 900},
    }


def _log(service, job: str) -> str:
    return requests.get(f"{service.url}/_local/training-jobs/{job}/log", timeout=10).text


def source_hyperparameters(sourcedir_uri: str) -> dict[str, str]:
    return {"sagemaker_program": json.dumps(PROGRAM), "sagemaker_submit_directory": json.dumps(sourcedir_uri)}


def test_a_real_tuning_job_on_the_digits_picks_its_best_trial(sm, s3, bucket, digits_uri, sourcedir_uri, service):
    name = unique("digits-hpo")
    # The trials share the frozen trunk's features through S3: the first computes them, the later
    # ones load them. Three trials, one at a time: the tuner's parallel starts are tested on tiny
    # sources (test_tuning_jobs.py); here each trial is a real training job, and the suite's time counts.
    shared = {"feature-cache": f"s3://{bucket}/cache/{name}/", "report": "off"}
    sm.create_hyper_parameter_tuning_job(
        HyperParameterTuningJobName=name,
        HyperParameterTuningJobConfig={
            "Strategy": "Bayesian", "HyperParameterTuningJobObjective": OBJECTIVE_METRIC,
            "ResourceLimits": {"MaxNumberOfTrainingJobs": 3, "MaxParallelTrainingJobs": 1},
            "ParameterRanges": {"ContinuousParameterRanges": [
                {"Name": "lr", "MinValue": "0.0001", "MaxValue": "0.1", "ScalingType": "Logarithmic"}]},
            "RandomSeed": 7,
        },
        TrainingJobDefinition={"StaticHyperParameters": {**source_hyperparameters(sourcedir_uri), **STATIC, **shared},
                               **definition(bucket, digits_uri)},
    )
    tuning = wait_for(lambda: sm.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=name),
                      "HyperParameterTuningJobStatus", DONE, timeout=900)
    children = sm.list_training_jobs_for_hyper_parameter_tuning_job(
        HyperParameterTuningJobName=name, SortBy="FinalObjectiveMetricValue", SortOrder="Descending",
    )["TrainingJobSummaries"]

    assert tuning["HyperParameterTuningJobStatus"] == "Completed", tuning.get("FailureReason")
    failed = {c["TrainingJobName"]: (sm.describe_training_job(TrainingJobName=c["TrainingJobName"]).get("FailureReason"),
                                     _log(service, c["TrainingJobName"])[-3000:])
              for c in children if c["TrainingJobStatus"] != "Completed"}
    assert len(children) == 3 and not failed, failed
    values = [c["FinalHyperParameterTuningJobObjectiveMetric"]["Value"] for c in children]
    assert values == sorted(values, reverse=True)
    best = tuning["BestTrainingJob"]
    assert best["TrainingJobName"] == children[0]["TrainingJobName"]
    assert best["FinalHyperParameterTuningJobObjectiveMetric"] == {
        "Type": "Maximize", "MetricName": "valid:accuracy", "Value": max(values)}
    assert max(values) > 0.2  # learnt something: ten classes, chance is 0.1
    described = sm.describe_training_job(TrainingJobName=best["TrainingJobName"])
    final = {m["MetricName"]: m["Value"] for m in described["FinalMetricDataList"]}
    assert final["valid:accuracy"] == max(values) and "test:accuracy" in final
    bucket_name, key = s3_transfer.split_s3_uri(described["ModelArtifacts"]["S3ModelArtifacts"])
    assert s3.head_object(Bucket=bucket_name, Key=key)["ContentLength"] > 1000

    logs = {c["TrainingJobName"]: _log(service, c["TrainingJobName"]) for c in children}
    hits = [job for job, log in logs.items() if "feature cache hit" in log]
    assert len(hits) >= 2, {job: log[-1500:] for job, log in logs.items()}
    assert len(s3.list_objects_v2(Bucket=bucket, Prefix=f"cache/{name}/")["Contents"]) == 1


def test_a_final_job_runs_its_debugger_rules_and_writes_the_profiler_report(sm, s3, bucket, digits_uri,
                                                                              sourcedir_uri):
    name = unique("digits-final")
    rule_image = "503895931360.dkr.ecr.us-east-1.amazonaws.com/sagemaker-debugger-rules:latest"
    sm.create_training_job(
        TrainingJobName=name,
        HyperParameters={**source_hyperparameters(sourcedir_uri), **STATIC, "epochs": "2", "lr": "0.01"},
        DebugHookConfig={"S3OutputPath": f"s3://{bucket}/debug/{name}/debug-output",
                         "CollectionConfigurations": [{"CollectionName": "losses",
                                                       "CollectionParameters": {"save_interval": "5"}}]},
        DebugRuleConfigurations=[
            {"RuleConfigurationName": "LossNotDecreasing", "RuleEvaluatorImage": rule_image,
             "RuleParameters": {"rule_to_invoke": "LossNotDecreasing"}},
            {"RuleConfigurationName": "Overfit", "RuleEvaluatorImage": rule_image,
             "RuleParameters": {"rule_to_invoke": "Overfit", "patience": "1"}},
        ],
        ProfilerConfig={"S3OutputPath": f"s3://{bucket}/profiler", "ProfilingIntervalInMilliseconds": 500},
        ProfilerRuleConfigurations=[{"RuleConfigurationName": "ProfilerReport", "RuleEvaluatorImage": rule_image,
                                     "RuleParameters": {"rule_to_invoke": "ProfilerReport"}}],
        Tags=[{"Key": "pipeline-role", "Value": "final"}],
        **definition(bucket, digits_uri),
    )
    job = wait_for(lambda: sm.describe_training_job(TrainingJobName=name), "TrainingJobStatus", DONE, timeout=600)

    assert job["TrainingJobStatus"] == "Completed", job.get("FailureReason")
    rules = {r["RuleConfigurationName"]: r["RuleEvaluationStatus"] for r in job["DebugRuleEvaluationStatuses"]}
    assert rules.keys() == {"LossNotDecreasing", "Overfit"}
    assert set(rules.values()) <= {"NoIssuesFound", "IssuesFound"}, job["DebugRuleEvaluationStatuses"]
    tensors = s3.list_objects_v2(Bucket=bucket, Prefix=f"debug/{name}/debug-output/")
    assert tensors["KeyCount"] > 0
    report_key = f"profiler/{name}/rule-output/ProfilerReport/profiler-output/profiler-report.html"
    assert b"<html" in s3.get_object(Bucket=bucket, Key=report_key)["Body"].read()[:2000].lower()
    assert job["ProfilerRuleEvaluationStatuses"][0]["RuleEvaluationStatus"] == "NoIssuesFound"
