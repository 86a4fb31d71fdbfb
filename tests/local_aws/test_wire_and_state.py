"""The wire (validation against botocore's model, AWS's error codes) and state across restarts."""

from __future__ import annotations

import json

import boto3
import pytest
import requests
from botocore.config import Config

from local_aws.sagemaker.config import Settings
from local_aws.sagemaker.records import RESTART_REASON
from local_aws.sagemaker.server import LocalSageMaker

from .conftest import REGION, job_definition, sdk_hyperparameters, unique, wait_for


@pytest.fixture(scope="module")
def unchecked(service):
    """A client that skips botocore's own checks, so the server's validation is what answers."""
    return boto3.client("sagemaker", region_name=REGION, endpoint_url=service.url,
                        config=Config(parameter_validation=False))


def test_requests_are_validated_against_botocores_model(unchecked, bucket, tiny_source):
    with pytest.raises(unchecked.exceptions.ClientError, match=r"ValidationException.*RoleArn"):
        definition = job_definition(bucket, tiny_source)
        del definition["RoleArn"]
        unchecked.create_training_job(TrainingJobName=unique("bad"), **definition)
    with pytest.raises(unchecked.exceptions.ClientError, match=r"ValidationException.*pattern"):
        unchecked.create_training_job(TrainingJobName="not_a_valid_name!", **job_definition(bucket, tiny_source))
    with pytest.raises(unchecked.exceptions.ClientError, match=r"ValidationException.*maxResults.*less than or equal to 100"):
        unchecked.list_training_jobs(MaxResults=1000)


def test_script_mode_needs_its_program(sm, bucket, tiny_source):
    with pytest.raises(sm.exceptions.ClientError, match="sagemaker_program"):
        sm.create_training_job(TrainingJobName=unique("noprog"), HyperParameters={"lr": "0.1"},
                               **job_definition(bucket, tiny_source))


def test_unknown_and_unimplemented_operations(service):
    for target in ("SageMaker.NoSuchThing", "SageMaker.CreateNotebookInstance"):
        answer = requests.post(service.url, data="{}", timeout=5, headers={
            "X-Amz-Target": target, "Content-Type": "application/x-amz-json-1.1"})
        assert answer.status_code == 400
        assert answer.json()["__type"] == "UnknownOperationException"


def test_lists_page_and_filter(sm, bucket, tiny_source):
    prefix = unique("page")
    for index in range(3):
        sm.create_training_job(TrainingJobName=f"{prefix}-{index}", HyperParameters=sdk_hyperparameters(
            "train.py", tiny_source), **job_definition(bucket, tiny_source))
        wait_for(lambda: sm.describe_training_job(TrainingJobName=f"{prefix}-{index}"), "TrainingJobStatus",
                 ("Completed", "Failed"))
    first = sm.list_training_jobs(NameContains=prefix, MaxResults=2, SortBy="Name", SortOrder="Ascending")
    second = sm.list_training_jobs(NameContains=prefix, MaxResults=2, SortBy="Name", SortOrder="Ascending",
                                   NextToken=first["NextToken"])
    names = [j["TrainingJobName"] for j in first["TrainingJobSummaries"] + second["TrainingJobSummaries"]]
    assert names == [f"{prefix}-0", f"{prefix}-1", f"{prefix}-2"] and "NextToken" not in second
    paginated = sm.get_paginator("list_training_jobs").paginate(NameContains=prefix, PaginationConfig={"PageSize": 1})
    assert sum(len(page["TrainingJobSummaries"]) for page in paginated) == 3


def test_state_survives_a_restart_and_running_jobs_come_back_failed(aws_env, tmp_path, s3, bucket, tiny_source):
    settings = Settings(state_dir=tmp_path / "state", region=REGION)
    published: list = []
    with LocalSageMaker(settings, publish=published.append) as first:
        client = boto3.client("sagemaker", region_name=REGION, endpoint_url=first.url)
        client.create_training_job(TrainingJobName="done", HyperParameters=sdk_hyperparameters("train.py", tiny_source),
                                   **job_definition(bucket, tiny_source))
        wait_for(lambda: client.describe_training_job(TrainingJobName="done"), "TrainingJobStatus", ("Completed",))
        client.create_model(ModelName="kept", ExecutionRoleArn="arn:aws:iam::123456789012:role/r", PrimaryContainer={
            "Image": "img", "ModelDataUrl": f"s3://{bucket}/whatever/model.tar.gz"})
        client.create_training_job(TrainingJobName="running", HyperParameters=sdk_hyperparameters(
            "train.py", tiny_source, epochs=1000, sleep=0.2), **job_definition(bucket, tiny_source))
        wait_for(lambda: client.describe_training_job(TrainingJobName="running"), "SecondaryStatus", ("Training",))
        # The service dies without stopping its work: only its state file is left.
        first._server.shutdown()
        first._server.server_close()
        # Its state file as it died, read before the job's process is reaped (which records an end).
        state = json.loads((settings.state_dir / "state.json").read_text())
        first.backend.runner.stop("running")
        first.stop = lambda: None  # type: ignore[method-assign]
        first.backend.runner.wait("running", timeout=30)
        (settings.state_dir / "state.json").write_text(json.dumps(state))

    published.clear()
    with LocalSageMaker(settings, publish=published.append) as second:
        # Whoever waits on the cut-off job (the pipeline's run) hears that it failed.
        assert [(e.detail["TrainingJobName"], e.detail["TrainingJobStatus"]) for e in published
                if e.detail_type == "SageMaker Training Job State Change"] == [("running", "Failed")]
        client = boto3.client("sagemaker", region_name=REGION, endpoint_url=second.url)
        done = client.describe_training_job(TrainingJobName="done")
        assert done["TrainingJobStatus"] == "Completed" and done["FinalMetricDataList"]
        running = client.describe_training_job(TrainingJobName="running")
        assert running["TrainingJobStatus"] == "Failed" and running["FailureReason"] == RESTART_REASON
        assert client.describe_model(ModelName="kept")["PrimaryContainer"]["Image"] == "img"


def test_a_start_removes_what_a_killed_service_left_in_its_work_folders(aws_env, tmp_path):
    # A SIGKILL leaves the hosts' model copies and the jobs' /opt/ml folders; nothing of them runs any more.
    settings = Settings(state_dir=tmp_path / "state", region=REGION)
    left = [settings.state_dir / "hosts" / "ep" / "config-1a2b3c4d", settings.state_dir / "jobs" / "job-1" / "model"]
    for folder in left:
        folder.mkdir(parents=True)
        (folder / "model.tar.gz").write_bytes(b"tens of MB")
    kept = settings.state_dir / "logs" / "job-1.log"
    kept.parent.mkdir(parents=True)
    kept.write_text("what CloudWatch would hold")
    with LocalSageMaker(settings):
        assert [path for name in ("hosts", "jobs") for path in (settings.state_dir / name).iterdir()] == []
        assert kept.exists()
