"""The training half of the conformance check: the final job's exact request, run in the
training image's environment by AWS's own training toolkit.

The request is the one `chalice_app` builds for the local stage (hyperparameters, channels,
MetricDefinitions, Environment, in-job Debugger rules). The local SageMaker plays the
platform (the /opt/ml layout, S3 channels, the upload of model.tar.gz and output.tar.gz)
and launches the image's own entry point (`sagemaker_training.cli.train`) with the
conformance environment's interpreter: torch, torchvision, numpy, protobuf and the toolkit
are the image's versions, and whatever else the job imports must come from the source's
requirements.txt, which the toolkit installs as it does on AWS.

A second job whose training code imports a package the image lacks must fail: the check
shows each time that it would catch such an import.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import tarfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import boto3
from moto.server import ThreadedMotoServer

from chalice_app import manifest
from chalice_app import sagemaker_requests as requests
from chalice_app.config import Settings, settings_from_env
from infra.policies import stage_env
from infra.sourcedir import REPO_ROOT, REQUIREMENTS, build_sourcedir
from local_aws.ports import free_port
from local_aws.project.containers import with_project_containers
from local_aws.sagemaker.config import Settings as SageMakerSettings
from local_aws.sagemaker.server import LocalSageMaker
from training.demo_data import write_digits
from training.metrics import DEBUGGER_RULES, RULE_METRIC_PREFIX

REGION = "us-east-1"
RUN_ID = "20261130T000000-conform"
# The tuning job's pick, as the final job receives it (values are strings, as SageMaker sends them).
TUNED = {"lr": "0.05", "batch-size": "64", "_tuning_objective_metric": "valid:accuracy"}
# A package the Lambda has and the training image has not: importing it must fail the job.
MISSING_PACKAGE = "aws_lambda_powertools"
JOB_TIMEOUT_S = 1200


def log(event: str, **fields: object) -> None:
    print(json.dumps({"check": "training", "event": event, **fields}), flush=True)


@dataclass(frozen=True)
class TrainingResult:
    description: dict
    model_tar: Path
    output_files: list[str]
    seconds: float


@contextmanager
def local_aws(state_dir: Path, python: Path) -> Iterator[tuple[object, object]]:
    """moto (S3) and the local SageMaker, whose training image is `python`'s environment."""
    port = free_port()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    moto.start()
    saved = dict(os.environ)
    os.environ.update({"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
                       "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": REGION, "AWS_REGION": REGION})
    for key in ("AWS_PROFILE", "AWS_ENDPOINT_URL_SAGEMAKER", "PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", "PIP_NO_DEPS"):
        os.environ.pop(key, None)  # the job gets what the request's Environment says, nothing of ours
    settings = with_project_containers(SageMakerSettings(state_dir=state_dir, region=REGION, training_python=str(python),
                                                         framework_preload=()))
    try:
        with LocalSageMaker(settings) as service:
            yield boto3.client("s3", region_name=REGION), boto3.client("sagemaker", region_name=REGION,
                                                                        endpoint_url=service.url)
    finally:
        os.environ.clear()
        os.environ.update(saved)
        moto.stop()


def stage_settings() -> Settings:
    config = json.loads((REPO_ROOT / ".chalice" / "config.json").read_text())
    return settings_from_env(stage_env(config, "local") | {"AWS_DEFAULT_REGION": REGION})


def upload_run(s3, settings: Settings, scratch: Path, source: bytes) -> None:
    """The bucket as a run finds it: the source, the labelled digits and the run's manifest."""
    s3.create_bucket(Bucket=settings.bucket)
    bucket, key = settings.source_dir_uri.removeprefix("s3://").split("/", 1)
    s3.put_object(Bucket=bucket, Key=key, Body=source)
    write_digits(scratch / "digits", layout="labels", size=32)
    objects = []
    for path in sorted((scratch / "digits").rglob("*.png")):
        image_key = settings.training_prefix + path.relative_to(scratch / "digits").as_posix()
        body = path.read_bytes()
        etag = s3.put_object(Bucket=settings.bucket, Key=image_key, Body=body)["ETag"]
        objects.append((image_key, etag, len(body)))
    entries = manifest.build(objects, settings.training_prefix)
    for put in requests.manifest_puts(settings, RUN_ID, entries):
        s3.put_object(**put)
    log("uploaded", images=len(entries), source_bytes=len(source))


def run_job(s3, sm, request: dict, scratch: Path) -> TrainingResult:
    started = time.monotonic()
    sm.create_training_job(**request)
    name = request["TrainingJobName"]
    while True:
        description = sm.describe_training_job(TrainingJobName=name)
        if description["TrainingJobStatus"] in ("Completed", "Failed", "Stopped"):
            break
        if time.monotonic() - started > JOB_TIMEOUT_S:
            raise AssertionError(f"{name} still {description['TrainingJobStatus']} after {JOB_TIMEOUT_S} s")
        time.sleep(1)
    seconds = time.monotonic() - started
    model_tar, output_files = scratch / f"{name}-model.tar.gz", []
    if description["TrainingJobStatus"] == "Completed":
        bucket, key = description["ModelArtifacts"]["S3ModelArtifacts"].removeprefix("s3://").split("/", 1)
        s3.download_file(bucket, key, str(model_tar))
        output = s3.get_object(Bucket=bucket, Key=key.rsplit("/", 1)[0] + "/output.tar.gz")["Body"].read()
        output_files = tarfile.open(fileobj=io.BytesIO(output)).getnames()
    return TrainingResult(description, model_tar, output_files, seconds)


def source_importing(package: str) -> bytes:
    """The training source, its train.py importing `package` first: a dependency the image lacks."""
    archive = tarfile.open(fileobj=io.BytesIO(build_sourcedir()))
    patched = io.BytesIO()
    with tarfile.open(fileobj=patched, mode="w:gz") as out:
        for member in archive.getmembers():
            data = archive.extractfile(member).read()
            if member.name == "training/train.py":
                head, future, rest = data.partition(b"from __future__ import annotations\n")
                data = head + future + f"import {package}  # conformance: a package the image lacks\n".encode() + rest
                member.size = len(data)
            out.addfile(member, io.BytesIO(data))
    return patched.getvalue()


def reset_environment(python: Path) -> None:
    """Back to the image's packages: the toolkit pip-installs the source's requirements into the
    environment a job runs in, and the next check must find them missing again, as a new container does."""
    lines = (REPO_ROOT / REQUIREMENTS).read_text().splitlines()
    names = [line.split("==")[0].strip() for line in lines if line.strip() and not line.startswith("#")]
    subprocess.run([str(python), "-m", "pip", "uninstall", "--yes", "--quiet", *names], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log("environment reset", removed_if_present=names)


def check(condition: bool, what: str, failures: list[str]) -> None:
    log("check", what=what, ok=bool(condition))
    if not condition:
        failures.append(what)


def run(python: Path, scratch: Path) -> tuple[TrainingResult, list[str]]:
    """The final job, then the job that must fail; returns the good job's result and what failed."""
    settings = stage_settings()
    failures: list[str] = []
    reset_environment(python)
    with local_aws(scratch / "sagemaker", python) as (s3, sm):
        upload_run(s3, settings, scratch, build_sourcedir())
        request = requests.final_training_job_request(settings, RUN_ID, TUNED)
        result = run_job(s3, sm, request, scratch)
        description = result.description
        log("final job", status=description["TrainingJobStatus"], seconds=round(result.seconds, 1),
            failure=description.get("FailureReason"))
        check(description["TrainingJobStatus"] == "Completed", "the final job completes in the image", failures)
        metrics = {m["MetricName"]: m["Value"] for m in description.get("FinalMetricDataList", [])}
        log("metrics", **metrics)
        check("test:accuracy" in metrics, "it reports test:accuracy", failures)
        rules = [rule for rule in DEBUGGER_RULES if rule in settings.debugger_rules]
        check(all(f"{RULE_METRIC_PREFIX}{rule}" in metrics for rule in rules),
              f"it reports a verdict for each Debugger rule ({', '.join(rules)})", failures)
        check(any(name.endswith("report.html") for name in result.output_files) and
              any(name.endswith("debugger-rules.json") for name in result.output_files) and
              any(name.startswith("profiler/") for name in result.output_files),
              "output.tar.gz holds the report, the rule verdicts and the profiler summary", failures)

        broken = dict(request, TrainingJobName=f"{request['TrainingJobName'][:50]}-imports")
        s3.put_object(Bucket=settings.bucket, Key="code/imports/sourcedir.tar.gz", Body=source_importing(MISSING_PACKAGE))
        broken["HyperParameters"] = dict(request["HyperParameters"], sagemaker_submit_directory=json.dumps(
            f"s3://{settings.bucket}/code/imports/sourcedir.tar.gz"))
        failed = run_job(s3, sm, broken, scratch).description
        log("job importing a missing package", status=failed["TrainingJobStatus"], failure=failed.get("FailureReason"))
        check(failed["TrainingJobStatus"] == "Failed" and MISSING_PACKAGE in (failed.get("FailureReason") or ""),
              f"a training/ that imports {MISSING_PACKAGE} fails in the image, naming it", failures)
    reset_environment(python)
    return result, failures
