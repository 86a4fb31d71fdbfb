"""The SageMaker execution role allows what SageMaker and the job do with it, on the stage's requests.

The Lambda passes the role in every CreateHyperParameterTuningJob, CreateTrainingJob and
CreateModel; SageMaker then reads the channels, writes the output and checkpoints, and the job's
own code reads and writes the feature cache, all as that role. moto checks none of it. Here the
role's policy, as infra/template.json declares it and CloudFormation resolves it, is evaluated
by moto's IAM policy evaluator against every S3 access the built requests imply (AWS's
"SageMaker execution role" page lists which call needs what), so a request that names a new
S3 location fails here until the role may use it.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from moto.iam.access_control import IAMPolicy, PermissionResult

from chalice_app import sagemaker_requests as requests
from chalice_app.config import settings_from_env
from infra import policies

from .conftest import CONFIG, TEMPLATE
from .iam import enable_string_like

ACCOUNT, REGION, RUN = "123456789012", "eu-west-1", "r251130120000-abcdef"
Access = tuple[str, str, dict[str, str]]  # action, resource, condition keys


def _resolve(value: Any, names: dict[str, str]) -> Any:
    """What CloudFormation makes of the role's Fn::Sub, Fn::GetAtt and Ref in one account and region."""
    if isinstance(value, list):
        return [_resolve(v, names) for v in value]
    if not isinstance(value, dict):
        return value
    if "Fn::Sub" in value:
        return re.sub(r"\$\{([^}]+)\}", lambda m: names[m.group(1)], value["Fn::Sub"])
    if "Fn::GetAtt" in value:
        return names[".".join(value["Fn::GetAtt"])]
    if "Ref" in value:
        return names[value["Ref"]]
    return {key: _resolve(v, names) for key, v in value.items()}


def _stage(stage: str) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    env = {name: value.replace("${AWS::AccountId}", ACCOUNT)
           for name, value in policies.stage_env(CONFIG, stage).items()}
    settings = settings_from_env({**env, "AWS_DEFAULT_REGION": REGION})
    names = {"AWS::AccountId": ACCOUNT, "AWS::Region": REGION, "AWS::Partition": "aws", "Stage": stage,
             "DataBucket.Arn": f"arn:aws:s3:::{settings.bucket}", "DataBucket": settings.bucket}
    role = _resolve(TEMPLATE["Resources"]["SageMakerRole"]["Properties"], names)
    return settings, role, names


def _s3(uri: str) -> tuple[str, str]:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return bucket, key


def _read_prefix(uri: str) -> Iterator[Access]:
    bucket, key = _s3(uri)
    yield "s3:ListBucket", f"arn:aws:s3:::{bucket}", {"s3:prefix": key}
    yield "s3:GetObject", f"arn:aws:s3:::{bucket}/{key}some/object.jpg", {}


def _channel(channel: dict[str, Any], manifest_entry: str) -> Iterator[Access]:
    source = channel["DataSource"]["S3DataSource"]
    bucket, key = _s3(source["S3Uri"])
    if source["S3DataType"] == "ManifestFile":
        # SageMaker reads the manifest, then each object under the manifest's own prefix.
        yield "s3:GetObject", f"arn:aws:s3:::{bucket}/{key}", {}
        prefix_bucket, prefix = _s3(manifest_entry)
        yield "s3:GetObject", f"arn:aws:s3:::{prefix_bucket}/{prefix}cat/1.jpg", {}
    else:
        yield from _read_prefix(source["S3Uri"])


def _job(definition: dict[str, Any], hyperparameters: dict[str, str], manifest_prefix: str) -> Iterator[Access]:
    """What a training job does with its role: channels, code, output, checkpoints, feature cache,
    the managed Debugger's and profiler's output, the image, logs and metrics."""
    for channel in definition["InputDataConfig"]:
        yield from _channel(channel, manifest_prefix)
    bucket, key = _s3(json.loads(hyperparameters["sagemaker_submit_directory"]))
    yield "s3:GetObject", f"arn:aws:s3:::{bucket}/{key}", {}
    output_bucket, output = _s3(definition["OutputDataConfig"]["S3OutputPath"])
    yield "s3:PutObject", f"arn:aws:s3:::{output_bucket}/{output}job/output/model.tar.gz", {}
    writable = [definition.get("CheckpointConfig", {}).get("S3Uri"), hyperparameters.get("feature-cache"),
                definition.get("DebugHookConfig", {}).get("S3OutputPath"),
                definition.get("ProfilerConfig", {}).get("S3OutputPath")]
    for uri in filter(None, writable):
        yield from _read_prefix(uri)
        bucket, key = _s3(uri)
        yield "s3:PutObject", f"arn:aws:s3:::{bucket}/{key}some/object", {}
    image = definition["AlgorithmSpecification"]["TrainingImage"]
    repository = image.split("/", 1)[1].split(":")[0]
    image_account = image.split(".", 1)[0]
    yield "ecr:GetAuthorizationToken", "*", {}
    yield "ecr:BatchGetImage", f"arn:aws:ecr:{REGION}:{image_account}:repository/{repository}", {}
    yield "logs:PutLogEvents", f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:/aws/sagemaker/TrainingJobs:log-stream:x", {}
    yield "cloudwatch:PutMetricData", "*", {"cloudwatch:namespace": "/aws/sagemaker/TrainingJobs"}


def _denied(role: dict[str, Any], accesses: Iterator[Access]) -> list[str]:
    evaluators = [IAMPolicy(json.dumps(policy["PolicyDocument"])) for policy in role["Policies"]]
    return [f"{action} on {resource}" for action, resource, conditions in accesses
            if not any(e.is_action_permitted(action, resource, None, conditions) == PermissionResult.PERMITTED
                       for e in evaluators)]


@pytest.fixture(autouse=True)
def _string_like(monkeypatch):
    enable_string_like(monkeypatch)


@pytest.mark.parametrize("stage", ["dev", "prod"])
@pytest.mark.parametrize("debugger", ["in-job", "managed"])
def test_the_role_allows_what_the_stages_jobs_and_model_do_with_it(stage, debugger):
    settings, role, _ = _stage(stage)
    settings = dataclasses.replace(settings, debugger_service=debugger, spot_training=True)
    manifest_prefix = settings.s3_uri(settings.training_prefix)
    tuning = requests.tuning_job_request(settings, RUN, data_bytes=10_000_000)
    trial = tuning["TrainingJobDefinition"]
    final = requests.final_training_job_request(settings, RUN, {"lr": "0.01"}, data_bytes=10_000_000,
                                                live_artifact=settings.s3_uri("sagemaker/final/old/output/model.tar.gz"))
    model = requests.model_request(settings, RUN, settings.s3_uri(f"sagemaker/final/{RUN}/output/model.tar.gz"))
    accesses = [*_job(trial, trial["StaticHyperParameters"], manifest_prefix),
                *_job(final, final["HyperParameters"], manifest_prefix)]
    bucket, key = _s3(model["PrimaryContainer"]["ModelDataUrl"])
    accesses.append(("s3:GetObject", f"arn:aws:s3:::{bucket}/{key}", {}))

    assert _denied(role, iter(accesses)) == []


def test_the_role_refuses_what_no_job_needs():
    """The check can fail: other prefixes of the bucket, other buckets and writes to the data stay refused."""
    settings, role, _ = _stage("dev")
    bucket = settings.bucket
    refused = [("s3:GetObject", f"arn:aws:s3:::{bucket}/incoming/a.jpg", {}),
               ("s3:PutObject", f"arn:aws:s3:::{bucket}/training-data/cat/1.jpg", {}),
               ("s3:GetObject", "arn:aws:s3:::someone-elses-bucket/training-data/cat/1.jpg", {}),
               ("s3:ListBucket", f"arn:aws:s3:::{bucket}", {"s3:prefix": "incoming/"})]
    assert _denied(role, iter(refused)) == [f"{action} on {resource}" for action, resource, _ in refused]


def test_only_this_accounts_sagemaker_may_assume_the_role():
    _, role, _ = _stage("dev")
    [statement] = role["AssumeRolePolicyDocument"]["Statement"]
    assert statement["Principal"] == {"Service": "sagemaker.amazonaws.com"}
    assert statement["Condition"]["StringEquals"]["aws:SourceAccount"] == ACCOUNT
