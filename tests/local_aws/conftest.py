"""Fixtures for the local SageMaker: moto in server mode as the stack serves it (S3, EventBridge,
SQS) and the service in-process, each on a free port, driven with boto3 only.

The AWS environment (endpoint URL, fake credentials) is set for this package's tests and
restored after them, so other packages' tests (moto's in-process mock) are not affected.
"""

from __future__ import annotations

import io
import tarfile
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import boto3
import pytest

from local_aws.moto_server import MotoProcess
from local_aws.ports import free_port
from local_aws.project.containers import with_project_containers
from local_aws.sagemaker.config import Settings
from local_aws.sagemaker.server import LocalSageMaker

REGION = "us-east-1"
ROLE = "arn:aws:iam::123456789012:role/SageMakerRole"
IMAGE = "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-training:2.5-cpu-py311"


@pytest.fixture(scope="package")
def aws_env() -> Iterator[str]:
    # The stack's moto, as the stack runs it: in a process of its own, so that no in-process moto of
    # another test in this worker (mock_aws, a reset) can touch the buckets these tests' jobs read.
    server = MotoProcess("127.0.0.1", free_port()).start()
    url = server.url
    patch = pytest.MonkeyPatch()
    for key, value in {"AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": REGION, "AWS_REGION": REGION}.items():
        patch.setenv(key, value)
    for key in ("AWS_PROFILE", "AWS_ENDPOINT_URL_SAGEMAKER", "AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME"):
        patch.delenv(key, raising=False)
    yield url
    patch.undo()
    server.stop()


@pytest.fixture(scope="package")
def service(aws_env: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSageMaker]:
    settings = with_project_containers(
        Settings(state_dir=tmp_path_factory.mktemp("sagemaker-state"), region=REGION, max_running_jobs=2))
    with LocalSageMaker(settings) as running:
        yield running


@pytest.fixture(scope="package")
def sm(service: LocalSageMaker):
    return boto3.client("sagemaker", region_name=REGION, endpoint_url=service.url)


@pytest.fixture(scope="package")
def s3(aws_env: str):
    return boto3.client("s3", region_name=REGION)


@pytest.fixture(scope="package")
def bucket(s3) -> str:
    name = f"local-sm-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=name)
    return name


# A stand-in training script: real script mode (argv, SM_* env, metric lines, model dir),
# in a fraction of a second. Accuracy peaks at lr=0.1, so the tuner's pick can be checked.
TINY_TRAIN = textwrap.dedent('''
    import argparse, json, math, os, sys, time
    from pathlib import Path

    parser = argparse.ArgumentParser()
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--optimizer", default="sgd")
    parser.add_argument("--fail", default="no")
    parser.add_argument("--sleep", type=float, default=0.0)
    args, _ = parser.parse_known_args()
    data = Path(os.environ["SM_CHANNEL_TRAIN"])
    files = sorted(p.name for p in data.rglob("*") if p.is_file())
    # One write per line: the training toolkit relays the script's output in the chunks it reads.
    print(f"files {files} hps {os.environ['SM_HPS']}", flush=True)
    if args.fail == "yes":
        raise ValueError("the training data has no images of class 7")
    quality = math.exp(-abs(math.log10(args.lr) + 1.0)) * (1.1 if args.optimizer == "adam" else 1.0)
    for epoch in range(1, args.epochs + 1):
        time.sleep(args.sleep)
        accuracy = min(0.99, quality * (1 - 0.5 ** epoch))
        print(f"epoch={epoch} train_loss={1 - accuracy:.6f} valid_loss={1.1 - accuracy:.6f} "
              f"valid_accuracy={accuracy:.6f}", flush=True)
    print(f"test_loss={1 - accuracy:.6f} test_accuracy={accuracy:.6f}", flush=True)
    Path(os.environ["SM_MODEL_DIR"], "model.json").write_text(json.dumps({"lr": args.lr}))
    Path(os.environ["SM_OUTPUT_DATA_DIR"], "notes.txt").write_text("done")
''')


def tarball(files: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.fixture(scope="package")
def tiny_data(s3, bucket: str) -> str:
    """The training channel `job_definition` names by default."""
    for name in ("a.txt", "sub/b.txt"):
        s3.put_object(Bucket=bucket, Key=f"data/tiny/{name}", Body=b"x")
    return f"s3://{bucket}/data/tiny/"


@pytest.fixture(scope="package")
def tiny_source(s3, bucket: str, tiny_data: str) -> str:
    key = "code/tiny/sourcedir.tar.gz"
    s3.put_object(Bucket=bucket, Key=key, Body=tarball({"train.py": TINY_TRAIN}))
    return f"s3://{bucket}/{key}"


METRICS = [
    {"Name": "valid:accuracy", "Regex": r"\bvalid_accuracy=([0-9.]+)"},
    {"Name": "test:accuracy", "Regex": r"\btest_accuracy=([0-9.]+)"},
]


def job_definition(bucket: str, source: str, program: str = "train.py", data_prefix: str = "data/tiny/",
                   channel: str = "train") -> dict:
    """The parts of a CreateTrainingJob request a tuning job's definition shares."""
    return {
        "AlgorithmSpecification": {"TrainingImage": IMAGE, "TrainingInputMode": "File", "MetricDefinitions": METRICS},
        "RoleArn": ROLE,
        "InputDataConfig": [{"ChannelName": channel, "DataSource": {"S3DataSource": {
            "S3DataType": "S3Prefix", "S3Uri": f"s3://{bucket}/{data_prefix}", "S3DataDistributionType": "FullyReplicated"}}}],
        "OutputDataConfig": {"S3OutputPath": f"s3://{bucket}/output"},
        "ResourceConfig": {"InstanceType": "ml.m5.large", "InstanceCount": 1, "VolumeSizeInGB": 5},
        "StoppingCondition": {"MaxRuntimeInSeconds": 600},
    }


def sdk_hyperparameters(program: str, source: str, **values: object) -> dict[str, str]:
    """JSON-encoded, as the SageMaker SDK sends them."""
    import json

    return {"sagemaker_program": json.dumps(program), "sagemaker_submit_directory": json.dumps(source),
            **{k: json.dumps(v) for k, v in values.items()}}


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def wait_for(describe: Callable[[], dict], key: str, done: tuple[str, ...], timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        answer = describe()
        if answer[key] in done:
            return answer
        if time.monotonic() > deadline:
            raise AssertionError(f"still {answer[key]} after {timeout} s: {answer}")
        time.sleep(0.3)


@pytest.fixture(scope="package")
def serving_model_tar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real model.tar.gz in the artefact's layout, with random-init weights: what the
    endpoint tests need is a model the host really loads and runs, not a good one, and
    this one costs seconds rather than a training run on a busy machine."""
    import torch

    from training.artifact import pack_model_dir, write_model_dir
    from training.embedding import EMBEDDING_FILE, Projection, split_penultimate
    from training.model import ModelSpec, build_model
    from training.presets import ClassificationPresetEval

    torch.manual_seed(0)
    spec = ModelSpec(arch="resnet18", num_classes=10)
    buffer = io.BytesIO()
    model = build_model(spec)
    torch.save(model.state_dict(), buffer)
    root = tmp_path_factory.mktemp("serving-model")
    write_model_dir(root / "model", state_dict_bytes=buffer.getvalue(), classes=[str(i) for i in range(10)],
                    spec=spec.to_dict(), preprocessing=ClassificationPresetEval.for_image_size(32).to_dict(),
                    metadata={"version": "random-init", "training_job": None})
    # The embedding summaries' projection, as a final job writes it (fitted on random images here).
    with torch.inference_mode():
        features = split_penultimate(model.eval())[0](torch.randn(16, 3, 32, 32))
    Projection.fit(features).save(root / "model" / EMBEDDING_FILE)
    return pack_model_dir(root / "model", root / "model.tar.gz")
