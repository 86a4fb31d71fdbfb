"""The stage's generated policy, enforced on the handlers' calls (tests/app/iam.py), is no formality."""

from __future__ import annotations

import json

import pytest
from botocore.exceptions import ClientError
from moto.core import DEFAULT_ACCOUNT_ID

from chalice_app import aws
from infra import policies

from . import iam
from .conftest import BUCKET, ENV, REGION

ACCOUNT = DEFAULT_ACCOUNT_ID


def test_what_the_policy_does_not_grant_fails_as_access_denied(world):
    s3, dynamodb, sagemaker = aws.client("s3"), aws.client("dynamodb"), aws.client("sagemaker")
    s3.list_objects_v2(Bucket=BUCKET, Prefix="training-data/")  # granted: the run's snapshot
    with pytest.raises(ClientError, match="AccessDenied.*s3:ListBucket"):
        s3.list_objects_v2(Bucket=BUCKET, Prefix="")
    with pytest.raises(ClientError, match="AccessDeniedException.*dynamodb:Scan"):
        dynamodb.scan(TableName=ENV["PREDICTIONS_TABLE"])
    with pytest.raises(ClientError, match="AccessDeniedException.*sagemaker:CreateTrainingJob"):
        sagemaker.create_training_job(TrainingJobName="someone-elses-job", RoleArn=ENV["SAGEMAKER_ROLE_ARN"],
                                      AlgorithmSpecification={"TrainingImage": "x", "TrainingInputMode": "File"},
                                      OutputDataConfig={"S3OutputPath": f"s3://{BUCKET}/x"},
                                      ResourceConfig={"InstanceType": "ml.m5.large", "InstanceCount": 1,
                                                      "VolumeSizeInGB": 1},
                                      StoppingCondition={"MaxRuntimeInSeconds": 60})


def test_the_sagemaker_role_is_passed_only_to_sagemaker():
    policy = json.dumps(policies.resolve(policies.policy(ENV), REGION, ACCOUNT))
    request = {"ModelName": "ip-test-run", "ExecutionRoleArn": ENV["SAGEMAKER_ROLE_ARN"]}
    assert ("iam:PassRole", ENV["SAGEMAKER_ROLE_ARN"], {"iam:PassedToService": "sagemaker.amazonaws.com"}) in list(
        iam.checks("sagemaker", "CreateModel", request, REGION, ACCOUNT))
    assert iam.denial(policy, "sagemaker", "CreateModel", request, REGION, ACCOUNT) is None
    evaluator = iam.IAMPolicy(policy)
    for role, service in ((ENV["SAGEMAKER_ROLE_ARN"], "ec2.amazonaws.com"),
                          (f"arn:aws:iam::{ACCOUNT}:role/admin", "sagemaker.amazonaws.com")):
        assert evaluator.is_action_permitted("iam:PassRole", role, None, {"iam:PassedToService": service}) != \
            iam.PermissionResult.PERMITTED, (role, service)


def test_a_call_with_no_known_iam_actions_fails_the_test():
    with pytest.raises(iam.UnmappedCall, match="s3 PutBucketPolicy"):
        list(iam.checks("s3", "PutBucketPolicy", {"Bucket": BUCKET}, REGION, ACCOUNT))
    with pytest.raises(iam.UnmappedCall, match="lambda Invoke"):
        list(iam.checks("lambda", "Invoke", {}, REGION, ACCOUNT))


def test_delete_endpoint_is_granted_on_the_stages_endpoint_only():
    """A Failed endpoint takes only DeleteEndpoint: the deployment replaces it, and may delete nothing else."""
    policy = json.dumps(policies.resolve(policies.policy(ENV), REGION, ACCOUNT))
    assert iam.denial(policy, "sagemaker", "DeleteEndpoint", {"EndpointName": ENV["ENDPOINT_NAME"]},
                      REGION, ACCOUNT) is None
    for name in ("someone-elses-endpoint", f"{ENV['ENDPOINT_NAME']}-2", "ip-test-r270115080202-abcdef"):
        assert "sagemaker:DeleteEndpoint" in iam.denial(policy, "sagemaker", "DeleteEndpoint", {"EndpointName": name},
                                                        REGION, ACCOUNT)


def test_a_missing_object_is_told_apart_only_where_the_policy_lets_the_lambda_list(monkeypatch):
    """S3 answers 404 to a read of a missing key only with s3:ListBucket on it, else 403 AccessDenied."""
    iam.enable_string_like(monkeypatch)
    policy = json.dumps(policies.resolve(policies.policy(ENV), REGION, ACCOUNT))
    assert iam.may_know_missing(policy, BUCKET, "incoming/deleted.png")
    assert iam.may_know_missing(policy, BUCKET, "training-data/cat/deleted.png")
    # The final jobs' artefacts and reports too (the drift check and GET /runs/{id}/report read
    # them), nothing else SageMaker writes.
    assert iam.may_know_missing(policy, BUCKET, "sagemaker/final/ip-test-r1-final/output/model.tar.gz")
    assert not iam.may_know_missing(policy, BUCKET, "sagemaker/tuning/ip-test-r1-001/output/model.tar.gz")
    assert not iam.may_know_missing(policy, BUCKET, "manifests/r1.manifest")
    assert not iam.may_know_missing(policy, "someone-elses-bucket", "incoming/deleted.png")


def test_the_review_queues_calls_are_granted_exactly_where_they_go(monkeypatch):
    """Query only on the template's indexes; CopyObject only from incoming/ to training-data/; the
    review URL (a presigned GetObject) only under incoming/ and training-data/."""
    iam.enable_string_like(monkeypatch)
    policy = json.dumps(policies.resolve(policies.policy(ENV), REGION, ACCOUNT))
    table = ENV["PREDICTIONS_TABLE"]
    for index in ("review", "recent", "by_status"):
        request = {"TableName": table, "IndexName": index}
        assert iam.denial(policy, "dynamodb", "Query", request, REGION, ACCOUNT) is None
    for request in ({"TableName": table, "IndexName": "someone-elses"},
                    {"TableName": ENV["PIPELINE_TABLE"], "IndexName": "review"},
                    {"TableName": "other-table", "IndexName": "review"}):
        assert "dynamodb:Query" in iam.denial(policy, "dynamodb", "Query", request, REGION, ACCOUNT), request
    copy = {"Bucket": BUCKET, "Key": "training-data/cat/x-0123.png",
            "CopySource": {"Bucket": BUCKET, "Key": "incoming/x.png"}}
    assert [c[:2] for c in iam.checks("s3", "CopyObject", copy, REGION, ACCOUNT)] == [
        ("s3:GetObject", f"arn:aws:s3:::{BUCKET}/incoming/x.png"),
        ("s3:PutObject", f"arn:aws:s3:::{BUCKET}/training-data/cat/x-0123.png")]
    assert iam.denial(policy, "s3", "CopyObject", copy, REGION, ACCOUNT) is None
    assert "s3:PutObject" in iam.denial(policy, "s3", "CopyObject", {**copy, "Key": "sagemaker/x.png"}, REGION, ACCOUNT)
    assert "s3:GetObject" in iam.denial(policy, "s3", "CopyObject", {
        **copy, "CopySource": {"Bucket": BUCKET, "Key": "sagemaker/final/model.tar.gz"}}, REGION, ACCOUNT)
    assert "s3:GetObject" in iam.denial(policy, "s3", "CopyObject", {
        **copy, "CopySource": {"Bucket": "someone-elses-bucket", "Key": "incoming/x.png"}}, REGION, ACCOUNT)


def test_a_presigned_review_url_is_checked_as_the_getobject_it_signs(app_env):
    """generate_presigned_url builds the request's parameters: the enforced client checks it as the call."""
    s3 = aws.client("s3")
    assert "X-Amz-Signature" in s3.generate_presigned_url("get_object", Params={"Bucket": BUCKET,
                                                                                "Key": "incoming/x.png"})
    with pytest.raises(ClientError, match="AccessDenied.*s3:GetObject"):
        s3.generate_presigned_url("get_object", Params={"Bucket": BUCKET, "Key": "sagemaker/final/model.tar.gz"})


def test_the_drift_checks_calls_are_granted_exactly_where_they_go(monkeypatch):
    """The window's Query only on the predictions table's `drift` index; GetObject on the final jobs'
    model.tar.gz (the drift reference inside), and on nothing else the jobs write."""
    iam.enable_string_like(monkeypatch)
    policy = json.dumps(policies.resolve(policies.policy(ENV), REGION, ACCOUNT))
    window = {"TableName": ENV["PREDICTIONS_TABLE"], "IndexName": "drift"}
    assert iam.denial(policy, "dynamodb", "Query", window, REGION, ACCOUNT) is None
    assert "dynamodb:Query" in iam.denial(policy, "dynamodb", "Query", {**window, "TableName": ENV["PIPELINE_TABLE"]},
                                          REGION, ACCOUNT)
    artefact = {"Bucket": BUCKET, "Key": "sagemaker/final/ip-test-r270115080101-abcdef-final/output/model.tar.gz"}
    assert iam.denial(policy, "s3", "GetObject", artefact, REGION, ACCOUNT) is None
    # (the final job's output.tar.gz is granted for GET /runs/{id}/report: tests/app/test_console.py)
    for key in ("sagemaker/tuning/ip-test-r1-001/output/model.tar.gz",    # a tuning trial's model
                "sagemaker/debug/r1/tensors/x", "code/sourcedir.tar.gz"):
        assert "s3:GetObject" in iam.denial(policy, "s3", "GetObject", {"Bucket": BUCKET, "Key": key},
                                            REGION, ACCOUNT), key
    assert "s3:GetObject" in iam.denial(policy, "s3", "GetObject", {**artefact, "Bucket": "someone-elses-bucket"},
                                        REGION, ACCOUNT)
