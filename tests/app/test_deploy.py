"""`make deploy`: offline. moto answers S3 and STS; CloudFormation, whose SAM transform moto cannot
run, is botocore's Stubber. Both check every request against botocore's model."""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import subprocess
import sys
import tarfile
from datetime import datetime, timezone
from typing import Any

import boto3
import botocore.session
import pytest
from botocore.stub import Stubber
from botocore.validate import validate_parameters
from moto import mock_aws
from moto.core import DEFAULT_ACCOUNT_ID

from infra import deploy
from infra.deploy import AwsRunner, Build, DeployError, Step, Target

from .conftest import CONFIG, ROOT

# Its tests share what one packaging run builds: on one xdist worker, it is built once.
pytestmark = pytest.mark.xdist_group("deploy")

REGION = "eu-west-1"
NOW = datetime(2026, 11, 30, 7, 0, tzinfo=timezone.utc)
CHANGE_SET = "deploy-20261130T070000Z"
STACK_ARN = f"arn:aws:cloudformation:{REGION}:{DEFAULT_ACCOUNT_ID}:stack/image-pipeline-dev/1"
CHANGE_SET_ARN = f"arn:aws:cloudformation:{REGION}:{DEFAULT_ACCOUNT_ID}:changeSet/{CHANGE_SET}/1"
OUTPUTS = [{"OutputKey": "EndpointURL", "OutputValue": f"https://abc123.execute-api.{REGION}.amazonaws.com/api/"},
           {"OutputKey": "DataBucketName", "OutputValue": f"image-pipeline-dev-{DEFAULT_ACCOUNT_ID}"}]
US_EAST_1_RULES_IMAGE = "503895931360.dkr.ecr.us-east-1.amazonaws.com/sagemaker-debugger-rules:latest"


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Target, Build]:
    """dev packaged once for eu-west-1 (chalice package takes seconds), shared by the tests here."""
    return deploy.prepare("dev", REGION, DEFAULT_ACCOUNT_ID, tmp_path_factory.mktemp("deploy") / "dev",
                          log=lambda _: None)


class Recorder(AwsRunner):
    """The real runner, keeping every step it ran."""

    def __init__(self, clients) -> None:
        super().__init__(clients, log=lambda _: None)
        self.steps: list[Step] = []

    def call(self, step: Step, missing: tuple[str, ...] = (), quiet: bool = False) -> dict[str, Any] | None:
        self.steps.append(step)
        return super().call(step, missing, quiet)

    def ran(self, operation: str) -> list[dict[str, Any]]:
        return [s.params for s in self.steps if s.operation == operation]


@pytest.fixture
def moto(monkeypatch):
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": REGION}.items():
        monkeypatch.setenv(name, value)
    with mock_aws():
        yield


@pytest.fixture
def aws(moto):
    """moto's S3 and STS in eu-west-1, a stubbed CloudFormation, and a runner over them."""
    cloudformation = boto3.client("cloudformation", region_name=REGION)
    clients = {"cloudformation": cloudformation, "s3": boto3.client("s3", region_name=REGION),
               "sts": boto3.client("sts", region_name=REGION), "dynamodb": boto3.client("dynamodb", region_name=REGION)}
    with Stubber(cloudformation) as stub:
        yield stub, clients, Recorder(clients.__getitem__)
        stub.assert_no_pending_responses()


def _stack(status: str, outputs: list[dict[str, str]] | None = None) -> dict[str, Any]:
    stack = {"StackName": "image-pipeline-dev", "StackId": STACK_ARN, "CreationTime": NOW, "StackStatus": status}
    return {"Stacks": [{**stack, "Outputs": outputs} if outputs else stack]}


def _data_bucket(s3) -> str:
    """The stack's bucket, which the stubbed stack does not create."""
    bucket = f"image-pipeline-dev-{DEFAULT_ACCOUNT_ID}"
    s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})
    return bucket


def _sourcedir_names(s3, bucket: str, key: str) -> dict[str, bytes]:
    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(body))) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def _deployed_template(s3, create: dict[str, Any]) -> dict[str, Any]:
    if "TemplateBody" in create:
        return json.loads(create["TemplateBody"])
    bucket, key = re.fullmatch(r"https://([^.]+)\.s3\.[^/]+\.amazonaws\.com/(.+)", create["TemplateURL"]).groups()
    return json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())


def _without_aws_credentials() -> dict[str, str]:
    """No credentials, no config, and any endpoint refused: a single AWS call would fail."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_CONFIG_FILE="/dev/null", AWS_SHARED_CREDENTIALS_FILE="/dev/null", AWS_EC2_METADATA_DISABLED="true",
               AWS_ENDPOINT_URL="http://127.0.0.1:9")
    return env


def test_make_deploy_dry_run_calls_no_aws_and_prints_a_valid_plan():
    """The command the README gives, make's own --dry-run included, runs the deployer's dry run: every
    request it prints is valid for botocore's model, and no credentials are needed. (One packaging run:
    the deployer's CLI is what make runs.)"""
    result = subprocess.run(["make", "deploy", "STAGE=dev", f"REGION={REGION}", "--dry-run"], cwd=ROOT,
                            env=_without_aws_credentials(), capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert f"-m infra.deploy --stage dev --region {REGION} --dry-run" in out
    assert "placeholder, 123456789012" in out
    assert f"929884845733.dkr.ecr.{REGION}.amazonaws.com/sagemaker-debugger-rules" in out
    model = botocore.session.get_session()
    requests = [(m[1], m[2], json.loads(m[3])) for m in re.finditer(r"\[dry run\] (\S+) (\w+) (\{.*\})$", out, re.M)]
    for service, operation, params in requests:
        report = validate_parameters(params, model.get_service_model(service).operation_model(operation).input_shape)
        assert not report, f"{service} {operation}: {report}"
    by_operation = {operation: params for _, operation, params in requests}
    assert {"GetCallerIdentity", "CreateBucket", "CreateChangeSet", "ExecuteChangeSet", "PutObject"} <= set(by_operation)
    assert by_operation["CreateBucket"]["CreateBucketConfiguration"] == {"LocationConstraint": REGION}
    assert {"CAPABILITY_NAMED_IAM", "CAPABILITY_AUTO_EXPAND"} <= set(by_operation["CreateChangeSet"]["Capabilities"])
    assert [p["Key"] for _, o, p in requests if o == "PutObject"][-1] == "code/sourcedir.tar.gz"
    assert [o for _, o, _ in requests][-1] == "PutObject"
    assert "API: https://" in out and "data bucket: image-pipeline-dev-123456789012" in out


def test_the_package_names_the_regions_images(built):
    _, build = built
    functions = [r for r in build.template["Resources"].values() if r["Type"] == "AWS::Serverless::Function"]
    variables = [f["Properties"]["Environment"]["Variables"] for f in functions]
    assert variables and all(f".dkr.ecr.{REGION}." in v[name] for v in variables
                             for name in ("TRAINING_IMAGE", "INFERENCE_IMAGE", "DEBUGGER_RULES_IMAGE"))
    # The rules image lives in another account per region: not a host rewrite of us-east-1's.
    assert all(v["DEBUGGER_RULES_IMAGE"].startswith("929884845733.") for v in variables)
    assert CONFIG["stages"]["dev"]["environment_variables"]["DEBUGGER_RULES_IMAGE"] == US_EAST_1_RULES_IMAGE


@pytest.mark.parametrize("region", ["us-east-1", REGION])
def test_the_artifacts_bucket_is_created_private_and_encrypted_in_its_region(moto, region):
    target = Target("dev", region, DEFAULT_ACCOUNT_ID)
    s3 = boto3.client("s3", region_name=region)
    runner = AwsRunner(lambda service: s3, log=lambda _: None)
    assert runner.call(deploy.head_bucket(target), missing=("404",)) is None
    for step in deploy.create_bucket(target):
        runner.call(step)
    bucket = target.artifacts_bucket
    assert runner.call(deploy.head_bucket(target), missing=("404",)) is not None
    assert s3.get_bucket_location(Bucket=bucket)["LocationConstraint"] == (None if region == "us-east-1" else region)
    assert all(s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"].values())
    [rule] = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"]
    assert rule["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"


def test_a_first_deploy_creates_the_stack_and_uploads_code_template_and_source(aws, built):
    stub, clients, runner = aws
    target, build = built
    stub.add_client_error("describe_stacks", "ValidationError", "Stack with id image-pipeline-dev does not exist")
    stub.add_response("create_change_set", {"Id": CHANGE_SET_ARN, "StackId": STACK_ARN})
    stub.add_response("describe_change_set", {"Status": "CREATE_IN_PROGRESS", "ChangeSetName": CHANGE_SET})
    stub.add_response("describe_change_set", {"Status": "CREATE_COMPLETE", "ExecutionStatus": "AVAILABLE"})
    stub.add_response("execute_change_set", {}, {"ChangeSetName": CHANGE_SET_ARN, "ClientRequestToken": CHANGE_SET})
    stub.add_response("describe_stacks", _stack("CREATE_IN_PROGRESS"), {"StackName": STACK_ARN})
    stub.add_response("describe_stacks", _stack("CREATE_COMPLETE", OUTPUTS), {"StackName": STACK_ARN})
    sleeps: list[float] = []

    def wait(seconds: float) -> None:  # while we wait, the (stubbed) stack creates its bucket
        sleeps.append(seconds)
        if len(sleeps) == 2:
            _data_bucket(clients["s3"])

    deployed = deploy.deploy(target, build, runner, log=lambda _: None, now=NOW, sleep=wait)
    data_bucket = f"image-pipeline-dev-{DEFAULT_ACCOUNT_ID}"

    assert deployed == deploy.Deployed(OUTPUTS[0]["OutputValue"], data_bucket, changed=True)
    assert len(sleeps) == 2  # once for the change set, once for the stack
    s3 = clients["s3"]
    assert s3.get_bucket_location(Bucket=target.artifacts_bucket)["LocationConstraint"] == REGION
    [create] = runner.ran("CreateChangeSet")
    assert create["ChangeSetType"] == "CREATE" and create["ChangeSetName"] == CHANGE_SET
    assert {"CAPABILITY_NAMED_IAM", "CAPABILITY_AUTO_EXPAND"} <= set(create["Capabilities"])
    assert create["Parameters"] == [{"ParameterKey": "Stage", "ParameterValue": "dev"}]
    template = _deployed_template(s3, create)
    uris = {r["Properties"]["CodeUri"] for r in template["Resources"].values()
            if r["Type"] == "AWS::Serverless::Function"}
    [uri] = uris
    bucket, key = deploy.split_s3_uri(uri)
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == build.code
    files = _sourcedir_names(s3, data_bucket, "code/sourcedir.tar.gz")
    assert files["requirements.txt"] == (ROOT / "training" / "requirements.txt").read_bytes()
    assert "training/train.py" in files


@pytest.mark.parametrize("kept", ["bucket", "table"])
def test_a_new_stack_over_data_kept_from_a_deleted_one_is_refused_before_any_change(aws, built, kept):
    """The bucket and tables outlive their stack (Retain): a new stack could not create them."""
    stub, clients, runner = aws
    target, build = built
    if kept == "bucket":
        _data_bucket(clients["s3"])
    else:
        clients["dynamodb"].create_table(TableName=build.tables[1], BillingMode="PAY_PER_REQUEST",
                                         AttributeDefinitions=[{"AttributeName": "k", "AttributeType": "S"}],
                                         KeySchema=[{"AttributeName": "k", "KeyType": "HASH"}])
    stub.add_client_error("describe_stacks", "ValidationError", "Stack with id image-pipeline-dev does not exist")

    with pytest.raises(DeployError, match="kept from an earlier image-pipeline-dev stack") as refused:
        deploy.deploy(target, build, runner, log=lambda _: None, now=NOW, sleep=pytest.fail)

    assert (build.data_bucket if kept == "bucket" else build.tables[1]) in str(refused.value)
    assert not runner.ran("CreateChangeSet")


def test_a_template_over_the_body_limit_goes_by_url():
    target = Target("dev", REGION, DEFAULT_ACCOUNT_ID)
    assert deploy.template_source("{}", target, "templates/a.json") == {"TemplateBody": "{}"}
    big = "x" * (deploy.TEMPLATE_BODY_LIMIT + 1)
    assert deploy.template_source(big, target, "templates/a.json") == {
        "TemplateURL": f"https://{target.artifacts_bucket}.s3.{REGION}.amazonaws.com/templates/a.json"}


def test_an_update_with_no_changes_succeeds(aws, built):
    stub, clients, runner = aws
    target, build = built
    _data_bucket(clients["s3"])
    for step in deploy.create_bucket(target):  # a second deploy: the artifacts bucket is there
        runner.call(step)
    runner.steps.clear()
    stub.add_response("describe_stacks", _stack("UPDATE_COMPLETE", OUTPUTS), {"StackName": "image-pipeline-dev"})
    stub.add_response("create_change_set", {"Id": CHANGE_SET_ARN, "StackId": STACK_ARN})
    stub.add_response("describe_change_set", {
        "Status": "FAILED", "ExecutionStatus": "UNAVAILABLE",
        "StatusReason": "The submitted information didn't contain changes. Submit different information to create "
                        "a change set."})
    stub.add_response("delete_change_set", {}, {"ChangeSetName": CHANGE_SET_ARN})
    stub.add_response("describe_stacks", _stack("UPDATE_COMPLETE", OUTPUTS), {"StackName": STACK_ARN})

    deployed = deploy.deploy(target, build, runner, log=lambda _: None, now=NOW, sleep=pytest.fail)

    assert deployed.api_url == OUTPUTS[0]["OutputValue"] and not deployed.changed
    assert [p["ChangeSetType"] for p in runner.ran("CreateChangeSet")] == ["UPDATE"]
    assert "OnStackFailure" not in runner.ran("CreateChangeSet")[0]  # CREATE only, as AWS wants
    assert not runner.ran("CreateBucket") and not runner.ran("ExecuteChangeSet")
    assert runner.ran("PutObject")[-1]["Key"] == "code/sourcedir.tar.gz"


def test_a_failed_stack_stops_the_deploy_with_the_failing_resources_reasons(aws, built):
    stub, clients, runner = aws
    target, build = built
    stub.add_response("describe_stacks", _stack("UPDATE_COMPLETE"), {"StackName": "image-pipeline-dev"})
    stub.add_response("create_change_set", {"Id": CHANGE_SET_ARN, "StackId": STACK_ARN})
    stub.add_response("describe_change_set", {"Status": "CREATE_COMPLETE", "ExecutionStatus": "AVAILABLE"})
    stub.add_response("execute_change_set", {})
    stub.add_response("describe_stacks", _stack("UPDATE_ROLLBACK_COMPLETE"), {"StackName": STACK_ARN})

    def event(n: int, logical: str, status: str, reason: str, token: str = CHANGE_SET) -> dict[str, Any]:
        return {"StackId": STACK_ARN, "EventId": str(n), "StackName": "image-pipeline-dev", "Timestamp": NOW,
                "LogicalResourceId": logical, "ResourceType": "AWS::SQS::Queue", "ResourceStatus": status,
                "ResourceStatusReason": reason, "ClientRequestToken": token}

    stub.add_response("describe_stack_events", {"StackEvents": [  # newest first, as AWS lists them
        event(4, "IncomingQueue", "UPDATE_COMPLETE", ""),
        event(3, "IncomingQueue", "UPDATE_FAILED", "Resource update cancelled"),
        event(2, "TrainingDataQueue", "UPDATE_FAILED", "Invalid value for the parameter VisibilityTimeout"),
        event(1, "TrainingDataQueue", "UPDATE_FAILED", "an older deploy's failure", token="deploy-older"),
    ]}, {"StackName": STACK_ARN})

    with pytest.raises(DeployError) as failed:
        deploy.deploy(target, build, runner, log=lambda _: None, now=NOW, sleep=pytest.fail)

    message = str(failed.value)
    assert "UPDATE_ROLLBACK_COMPLETE" in message and "older deploy" not in message
    assert message.index("VisibilityTimeout") < message.index("Resource update cancelled")
    assert not [p for p in runner.ran("PutObject") if p["Key"] == "code/sourcedir.tar.gz"]


def test_a_failing_deploy_exits_non_zero_with_aws_s_message(capsys, monkeypatch):
    sts = boto3.client("sts", region_name=REGION, aws_access_key_id="x", aws_secret_access_key="x")
    with Stubber(sts) as stub:
        stub.add_client_error("get_caller_identity", "ExpiredToken", "The security token included in the request "
                              "is expired")
        assert deploy.main(["--stage", "dev", "--region", REGION], clients=lambda service: sts) == 1
    assert "ExpiredToken" in capsys.readouterr().err


def test_the_region_comes_from_the_flag_the_environment_the_stage_or_us_east_1():
    assert deploy.resolve_region("ap-south-1", {"AWS_REGION": "eu-west-1"}, {}) == "ap-south-1"
    assert deploy.resolve_region(None, {"AWS_REGION": "eu-west-1", "AWS_DEFAULT_REGION": "eu-west-2"}, {}) == REGION
    assert deploy.resolve_region(None, {"AWS_DEFAULT_REGION": "eu-west-2"}, {}) == "eu-west-2"
    assert deploy.resolve_region(None, {}, {"AWS_DEFAULT_REGION": "us-west-2"}) == "us-west-2"
    assert deploy.resolve_region(None, {}, {}) == "us-east-1"
