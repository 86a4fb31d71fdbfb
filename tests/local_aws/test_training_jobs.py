"""Training jobs through boto3: script mode for real, statuses, metrics, artefacts, failures, stop."""

from __future__ import annotations

import io
import json
import tarfile
import time
from importlib.metadata import version

import boto3
import psutil
import pytest
import requests

from .conftest import job_definition, sdk_hyperparameters, tarball, unique, wait_for

DONE = ("Completed", "Failed", "Stopped")


def create_job(sm, bucket, source, name, **hyperparameters):
    sm.create_training_job(TrainingJobName=name, HyperParameters=sdk_hyperparameters("train.py", source, **hyperparameters),
                           Tags=[{"Key": "pipeline-role", "Value": "test"}], **job_definition(bucket, source))
    return wait_for(lambda: sm.describe_training_job(TrainingJobName=name), "TrainingJobStatus", DONE)


def test_a_job_runs_the_script_and_uploads_its_model(sm, s3, bucket, tiny_source, service):
    name = unique("tiny")
    job = create_job(sm, bucket, tiny_source, name, lr=0.1, epochs=2)

    assert job["TrainingJobStatus"] == "Completed", job.get("FailureReason")
    assert [t["Status"] for t in job["SecondaryStatusTransitions"]] == [
        "Starting", "Downloading", "Training", "Uploading", "Completed"]
    assert all("EndTime" in t for t in job["SecondaryStatusTransitions"])
    assert job["CreationTime"] <= job["TrainingStartTime"] <= job["TrainingEndTime"]
    metrics = {m["MetricName"]: m["Value"] for m in job["FinalMetricDataList"]}
    assert metrics["valid:accuracy"] == pytest.approx(0.75)  # the last epoch's value, not the first
    assert job["ModelArtifacts"]["S3ModelArtifacts"] == f"s3://{bucket}/output/{name}/output/model.tar.gz"
    model = s3.get_object(Bucket=bucket, Key=f"output/{name}/output/model.tar.gz")["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(model)) as tar:
        assert json.load(tar.extractfile("model.json")) == {"lr": 0.1}
    s3.head_object(Bucket=bucket, Key=f"output/{name}/output/output.tar.gz")

    log = requests.get(f"{service.url}/_local/training-jobs/{name}/log", timeout=5).text
    assert "files ['a.txt', 'b.txt']" in log  # both objects of the channel, File mode
    assert '"lr": 0.1' in log and "sagemaker_program" not in log.split("hps", 1)[1].splitlines()[0]


def test_compression_none_uploads_the_model_directory_as_it_is(sm, s3, bucket, tiny_source):
    name = unique("uncompressed")
    definition = job_definition(bucket, tiny_source)
    definition["OutputDataConfig"]["CompressionType"] = "NONE"
    sm.create_training_job(TrainingJobName=name, HyperParameters=sdk_hyperparameters("train.py", tiny_source, lr=0.1),
                           **definition)
    job = wait_for(lambda: sm.describe_training_job(TrainingJobName=name), "TrainingJobStatus", DONE)

    assert job["TrainingJobStatus"] == "Completed", job.get("FailureReason")
    assert job["ModelArtifacts"]["S3ModelArtifacts"] == f"s3://{bucket}/output/{name}/output/model/"
    model = s3.get_object(Bucket=bucket, Key=f"output/{name}/output/model/model.json")["Body"].read()
    assert json.loads(model) == {"lr": 0.1}
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=f"output/{name}/output/")["Contents"]
    assert "model.tar.gz" not in {item["Key"].rsplit("/", 1)[-1] for item in listed}


def test_a_failing_script_fails_the_job_with_its_error(sm, bucket, tiny_source):
    job = create_job(sm, bucket, tiny_source, unique("fails"), fail="yes")

    assert job["TrainingJobStatus"] == "Failed"
    assert job["SecondaryStatus"] == "Failed"
    assert "ExecuteUserScriptError" in job["FailureReason"]
    # The toolkit relays the script's stderr in the chunks it happens to read: words, not layout.
    assert "ValueError" in job["FailureReason"] and "the training data has no images of class 7" in job["FailureReason"]


def test_a_missing_channel_fails_the_job_with_a_clear_reason(sm, bucket, tiny_source):
    name = unique("nodata")
    definition = job_definition(bucket, tiny_source, data_prefix="nothing-here/")
    sm.create_training_job(TrainingJobName=name, HyperParameters=sdk_hyperparameters("train.py", tiny_source),
                           **definition)
    job = wait_for(lambda: sm.describe_training_job(TrainingJobName=name), "TrainingJobStatus", DONE)
    assert job["TrainingJobStatus"] == "Failed"
    assert "no objects under" in job["FailureReason"] and "nothing-here" in job["FailureReason"]


def manifest_channel(s3, bucket: str, document: bytes) -> dict:
    key = f"{unique('manifests')}/run.manifest"
    s3.put_object(Bucket=bucket, Key=key, Body=document)
    return {"ChannelName": "train", "DataSource": {"S3DataSource": {
        "S3DataType": "ManifestFile", "S3Uri": f"s3://{bucket}/{key}", "S3DataDistributionType": "FullyReplicated"}}}


def test_a_manifest_file_channel_downloads_only_the_objects_it_names(sm, s3, bucket, tiny_source, service):
    prefix = unique("pool")
    for name in ("cat/picked.txt", "dog/also.txt", "cat/left-out.txt"):
        s3.put_object(Bucket=bucket, Key=f"{prefix}/{name}", Body=b"x")
    definition = job_definition(bucket, tiny_source)
    definition["InputDataConfig"] = [manifest_channel(s3, bucket, json.dumps(
        [{"prefix": f"s3://{bucket}/{prefix}/"}, "cat/picked.txt", "dog/also.txt"]).encode())]
    name = unique("manifest")
    sm.create_training_job(TrainingJobName=name, HyperParameters=sdk_hyperparameters("train.py", tiny_source),
                           **definition)
    job = wait_for(lambda: sm.describe_training_job(TrainingJobName=name), "TrainingJobStatus", DONE)

    assert job["TrainingJobStatus"] == "Completed", job.get("FailureReason")
    log = requests.get(f"{service.url}/_local/training-jobs/{name}/log", timeout=5).text
    assert "files ['also.txt', 'picked.txt']" in log


def test_a_malformed_manifest_file_fails_the_job_with_a_clear_reason(sm, s3, bucket, tiny_source):
    definition = job_definition(bucket, tiny_source)
    definition["InputDataConfig"] = [manifest_channel(s3, bucket, b'{"prefix": "s3://b/p/"}')]
    name = unique("badmanifest")
    sm.create_training_job(TrainingJobName=name, HyperParameters=sdk_hyperparameters("train.py", tiny_source),
                           **definition)
    job = wait_for(lambda: sm.describe_training_job(TrainingJobName=name), "TrainingJobStatus", DONE)

    assert job["TrainingJobStatus"] == "Failed"
    assert job["FailureReason"].startswith("ClientError: Data download failed: channel train: the manifest file")
    assert "must be a JSON array" in job["FailureReason"]


def test_stop_ends_a_running_job_as_stopped(sm, bucket, tiny_source):
    name = unique("stop")
    sm.create_training_job(TrainingJobName=name,
                           HyperParameters=sdk_hyperparameters("train.py", tiny_source, epochs=100, sleep=0.2),
                           **job_definition(bucket, tiny_source))
    wait_for(lambda: sm.describe_training_job(TrainingJobName=name), "SecondaryStatus", ("Training",))
    sm.stop_training_job(TrainingJobName=name)
    job = wait_for(lambda: sm.describe_training_job(TrainingJobName=name), "TrainingJobStatus", DONE, timeout=30)
    assert job["TrainingJobStatus"] == "Stopped"
    assert job["SecondaryStatus"] == "Stopped"


def test_names_are_unique_and_unknown_jobs_are_not_found(sm, bucket, tiny_source):
    name = unique("dup")
    create_job(sm, bucket, tiny_source, name)
    with pytest.raises(sm.exceptions.ResourceInUse):
        sm.create_training_job(TrainingJobName=name, HyperParameters=sdk_hyperparameters("train.py", tiny_source),
                               **job_definition(bucket, tiny_source))
    with pytest.raises(sm.exceptions.ResourceNotFound):
        sm.describe_training_job(TrainingJobName="no-such-job")
    listed = sm.list_training_jobs(NameContains=name)["TrainingJobSummaries"]
    assert [j["TrainingJobName"] for j in listed] == [name]


def test_too_many_running_jobs_is_a_resource_limit(sm, bucket, tiny_source, service):
    names = [unique("busy") for _ in range(service.backend.settings.max_running_jobs)]
    for name in names:
        sm.create_training_job(TrainingJobName=name,
                               HyperParameters=sdk_hyperparameters("train.py", tiny_source, epochs=100, sleep=0.2),
                               **job_definition(bucket, tiny_source))
    try:
        with pytest.raises(sm.exceptions.ResourceLimitExceeded):
            sm.create_training_job(TrainingJobName=unique("one-more"),
                                   HyperParameters=sdk_hyperparameters("train.py", tiny_source),
                                   **job_definition(bucket, tiny_source))
    finally:
        for name in names:
            sm.stop_training_job(TrainingJobName=name)
        for name in names:
            wait_for(lambda: sm.describe_training_job(TrainingJobName=name), "TrainingJobStatus", DONE, timeout=30)


def test_boto3_finds_the_service_through_the_environment(service, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_SAGEMAKER", service.url)
    client = boto3.client("sagemaker", region_name="us-east-1")
    assert "TrainingJobSummaries" in client.list_training_jobs()


RESUMING_TRAIN = """
import os
from pathlib import Path

folder = Path(os.environ.get("SAGEMAKER_BASE_DIR", "/opt/ml"), "checkpoints")
count = int((folder / "count").read_text()) if (folder / "count").exists() else 0
(folder / "count").write_text(str(count + 1))
print(f"test_accuracy={count + 1}", flush=True)
"""


def test_a_job_with_checkpoint_config_finds_the_checkpoints_of_the_job_before(sm, s3, bucket, tiny_data):
    from .conftest import tarball

    s3.put_object(Bucket=bucket, Key="code/resume/sourcedir.tar.gz", Body=tarball({"train.py": RESUMING_TRAIN}))
    source = f"s3://{bucket}/code/resume/sourcedir.tar.gz"
    checkpoints = {"S3Uri": f"s3://{bucket}/checkpoints/{unique('run')}/"}
    counts = []
    for _ in range(2):  # a spot job restarted: SageMaker syncs the folder with S3 both ways
        name = unique("resume")
        sm.create_training_job(TrainingJobName=name, HyperParameters=sdk_hyperparameters("train.py", source),
                               CheckpointConfig=checkpoints, **job_definition(bucket, source))
        job = wait_for(lambda: sm.describe_training_job(TrainingJobName=name), "TrainingJobStatus", DONE)
        assert job["TrainingJobStatus"] == "Completed", job.get("FailureReason")
        counts.append({m["MetricName"]: m["Value"] for m in job["FinalMetricDataList"]}["test:accuracy"])
    assert counts == [1, 2]
    key = checkpoints["S3Uri"].removeprefix(f"s3://{bucket}/") + "count"
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == b"2"


def _job_process(job: str, program: str, timeout: float = 120) -> psutil.Process:
    """The job's process running `program` (its script, or the toolkit that runs it), once it runs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for process in psutil.Process().children(recursive=True):
            try:
                command, environ = " ".join(process.cmdline()), process.environ()
            except psutil.Error:
                continue
            if program in command and "owner_watch" not in command and environ.get("TRAINING_JOB_NAME") == job:
                return process
        time.sleep(0.2)
    raise AssertionError(f"no process running {program} for {job}")


@pytest.mark.parametrize("program", ["train.py", "sagemaker_training.cli.train"])
def test_a_job_whose_process_is_killed_ends_failed_with_its_reason_and_leaves_nothing(sm, bucket, tiny_source,
                                                                                      program):
    # As when a training instance dies: the job ends Failed with a FailureReason, not stuck InProgress.
    name = unique("killed")
    sm.create_training_job(TrainingJobName=name,
                           HyperParameters=sdk_hyperparameters("train.py", tiny_source, epochs=1000, sleep=0.2),
                           **job_definition(bucket, tiny_source))
    victim = _job_process(name, program)
    script = _job_process(name, "train.py")
    victim.kill()
    job = wait_for(lambda: sm.describe_training_job(TrainingJobName=name), "TrainingJobStatus", DONE, timeout=60)
    assert job["TrainingJobStatus"] == "Failed" and job["FailureReason"], job
    script.wait(30)  # the script does not outlive its toolkit: the container ended


def test_a_job_may_not_change_the_images_packages(sm, s3, bucket, tiny_data, service):
    """Every local job shares one environment where AWS gives each a fresh container: a requirement
    that would replace an installed version fails the job (pip's own conflict message) and changes
    nothing, where on AWS it would change only that job's container. `--no-index`: whatever this
    test finds, nothing could be downloaded and installed."""
    installed = version("six")
    key = "code/downgrade/sourcedir.tar.gz"
    s3.put_object(Bucket=bucket, Key=key, Body=tarball({"train.py": "print('never runs')\n",
                                                        "requirements.txt": "--no-index\nsix==0.0.1\n"}))
    source = f"s3://{bucket}/{key}"
    job = create_job(sm, bucket, source, unique("downgrade"))

    assert job["TrainingJobStatus"] == "Failed"
    assert "InstallRequirementsError" in job["FailureReason"] or "ResolutionImpossible" in job["FailureReason"]
    log = requests.get(f"{service.url}/_local/training-jobs/{job['TrainingJobName']}/log", timeout=5).text
    assert f"The user requested (constraint) six=={installed}" in log
    assert "never runs" not in log and version("six") == installed
