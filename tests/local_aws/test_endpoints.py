"""Endpoints through boto3: hosted for real by the endpoint host, blue/green updates, rollback."""

from __future__ import annotations

import io
import json
import tarfile
import threading
import time
from pathlib import Path

import boto3
import psutil
import pytest
from PIL import Image

from .conftest import REGION, unique, wait_for
from .sagemaker_requests import deployable

ENDPOINT_DONE = ("InService", "Failed")


def digit_png() -> bytes:
    from sklearn.datasets import load_digits

    pixels = (load_digits().images[0] * 15).astype("uint8")
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert("RGB").resize((32, 32)).save(buffer, format="PNG")
    return buffer.getvalue()


def broken_copy(model_tar: Path) -> bytes:
    """The same artefact with its weights corrupted: the host cannot load it."""
    source = tarfile.open(model_tar)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as target:
        for member in source.getmembers():
            data = source.extractfile(member).read() if member.isfile() else b""
            if member.name.endswith("model.pth"):
                data = b"these are not weights"
            member.size = len(data)
            target.addfile(member, io.BytesIO(data))
    return buffer.getvalue()


@pytest.fixture(scope="module")
def runtime(service):
    return boto3.client("sagemaker-runtime", region_name=REGION, endpoint_url=service.url)


@pytest.fixture(scope="module")
def live_endpoint(sm, s3, bucket, serving_model_tar):
    config = deployable(sm, s3, bucket, serving_model_tar.read_bytes())
    name = unique("ep")
    sm.create_endpoint(EndpointName=name, EndpointConfigName=config, Tags=[{"Key": "pipeline-role", "Value": "serving"}])
    assert sm.describe_endpoint(EndpointName=name)["EndpointStatus"] == "Creating"
    endpoint = wait_for(lambda: sm.describe_endpoint(EndpointName=name), "EndpointStatus", ENDPOINT_DONE)
    assert endpoint["EndpointStatus"] == "InService", endpoint.get("FailureReason")
    yield name
    sm.delete_endpoint(EndpointName=name)


def invoke(runtime, name):
    answer = runtime.invoke_endpoint(EndpointName=name, ContentType="image/png", Accept="application/json",
                                     Body=digit_png())
    return json.loads(answer["Body"].read()), answer


def test_an_endpoint_serves_its_model(runtime, live_endpoint):
    prediction, answer = invoke(runtime, live_endpoint)
    assert answer["InvokedProductionVariant"] == "AllTraffic"
    assert "0" in json.dumps(prediction)  # the class names come back with the probabilities


def test_custom_attributes_reach_the_model(runtime, live_endpoint):
    """InvokeEndpoint's CustomAttributes arrive as the container's X-Amzn-SageMaker-Custom-Attributes header."""
    from training.drift import EMBEDDING_DIMS

    answer = runtime.invoke_endpoint(EndpointName=live_endpoint, ContentType="image/png", Body=digit_png(),
                                     CustomAttributes="top_k=2,embeddings=1")
    prediction = json.loads(answer["Body"].read())
    assert len(prediction["predictions"][0]) == 2 and [len(row) for row in prediction["embeddings"]] == [EMBEDDING_DIMS]
    assert "embeddings" not in invoke(runtime, live_endpoint)[0]


def test_what_the_model_refuses_is_a_model_error_carrying_the_endpoints_own_message(runtime, live_endpoint):
    from chalice_app.invocations import endpoint_message
    from training.image_contract import NOT_AN_IMAGE

    with pytest.raises(runtime.exceptions.ModelError) as raised:
        runtime.invoke_endpoint(EndpointName=live_endpoint, ContentType="application/x-image", Body=b"%PDF-1.7")
    response = raised.value.response
    assert response["OriginalStatusCode"] == 400 and "Received client error (400)" in response["Error"]["Message"]
    assert endpoint_message(response["OriginalMessage"]) == NOT_AN_IMAGE


def test_a_gif_is_served(runtime, live_endpoint):
    buffer = io.BytesIO()
    Image.open(io.BytesIO(digit_png())).save(buffer, format="GIF")
    answer = runtime.invoke_endpoint(EndpointName=live_endpoint, ContentType="image/gif", Body=buffer.getvalue())
    assert len(json.loads(answer["Body"].read())["predictions"]) == 1


class Hammer:
    """Invokes the endpoint in a loop while an update runs; every failure is kept."""

    def __init__(self, runtime, name):
        self.runtime, self.name = runtime, name
        self.ok, self.failures = 0, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        while not self._stop.is_set():
            try:
                invoke(self.runtime, self.name)
                self.ok += 1
            except Exception as error:  # noqa: BLE001 - counted, then asserted on
                self.failures.append(repr(error))

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *_):
        self._stop.set()
        self._thread.join(30)


def test_an_update_to_a_broken_model_rolls_back_and_the_old_model_keeps_answering(
        sm, s3, bucket, runtime, live_endpoint, serving_model_tar):
    before = sm.describe_endpoint(EndpointName=live_endpoint)
    broken = deployable(sm, s3, bucket, broken_copy(serving_model_tar))
    with Hammer(runtime, live_endpoint) as hammer:
        sm.update_endpoint(EndpointName=live_endpoint, EndpointConfigName=broken)
        assert sm.describe_endpoint(EndpointName=live_endpoint)["EndpointStatus"] == "Updating"
        after = wait_for(lambda: sm.describe_endpoint(EndpointName=live_endpoint), "EndpointStatus", ENDPOINT_DONE)
    assert after["EndpointStatus"] == "InService"
    assert after["EndpointConfigName"] == before["EndpointConfigName"]
    assert broken in after["FailureReason"] and "rolled back" in after["FailureReason"]
    assert hammer.failures == [] and hammer.ok > 0
    invoke(runtime, live_endpoint)


def test_a_good_update_moves_traffic_without_failing_a_request(sm, s3, bucket, runtime, live_endpoint,
                                                               serving_model_tar, service):
    hosts = service.backend.settings.state_dir / "hosts" / live_endpoint
    config = deployable(sm, s3, bucket, serving_model_tar.read_bytes())
    with Hammer(runtime, live_endpoint) as hammer:
        sm.update_endpoint(EndpointName=live_endpoint, EndpointConfigName=config)
        after = wait_for(lambda: sm.describe_endpoint(EndpointName=live_endpoint), "EndpointStatus", ENDPOINT_DONE)
    assert after["EndpointStatus"] == "InService"
    assert after["EndpointConfigName"] == config
    assert "FailureReason" not in after
    assert hammer.failures == [] and hammer.ok > 0
    # The old host's copy of its model goes with it (once its requests have drained): only the serving config's stays.
    deadline = time.monotonic() + 60
    while len(list(hosts.iterdir())) > 1 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert [path.name.rsplit("-", 1)[0] for path in hosts.iterdir()] == [config]


def test_creating_from_a_broken_model_fails_with_the_reason(sm, s3, bucket, serving_model_tar):
    config = deployable(sm, s3, bucket, broken_copy(serving_model_tar))
    name = unique("ep-broken")
    sm.create_endpoint(EndpointName=name, EndpointConfigName=config)
    endpoint = wait_for(lambda: sm.describe_endpoint(EndpointName=name), "EndpointStatus", ENDPOINT_DONE)
    assert endpoint["EndpointStatus"] == "Failed"
    assert endpoint["FailureReason"]
    sm.delete_endpoint(EndpointName=name)


def test_unknown_endpoints_and_models_answer_aws_errors(sm, runtime):
    with pytest.raises(runtime.exceptions.ValidationError, match="not found"):
        runtime.invoke_endpoint(EndpointName="nope", ContentType="image/png", Body=b"x")
    with pytest.raises(sm.exceptions.ClientError, match="ValidationException.*Could not find model"):
        sm.describe_model(ModelName="nope")
    with pytest.raises(sm.exceptions.ClientError, match="Could not find endpoint"):
        sm.describe_endpoint(EndpointName="nope")


def _host_master(endpoint: str) -> psutil.Process | None:
    """The endpoint host's gunicorn master: the process serving a model copied under hosts/<endpoint>/."""
    for process in psutil.Process().children(recursive=True):
        try:
            command = process.cmdline()
        except psutil.NoSuchProcess:
            continue
        if "local_aws.endpoint_host" in command and f"/hosts/{endpoint}/" in " ".join(command):
            return process
    return None


def test_a_killed_host_is_replaced_and_the_endpoint_stays_in_service(sm, runtime, live_endpoint, service):
    hosts = service.backend.settings.state_dir / "hosts" / live_endpoint
    dead = _host_master(live_endpoint)
    dead_copy = list(hosts.iterdir())
    dead.kill()
    dead.wait(15)
    errors = set()
    deadline = time.monotonic() + 120
    while True:  # as on AWS, the instance is replaced; meanwhile a request may fail, retryably
        assert sm.describe_endpoint(EndpointName=live_endpoint)["EndpointStatus"] == "InService"
        try:
            invoke(runtime, live_endpoint)
            replacement = _host_master(live_endpoint)
            if replacement is not None and replacement.pid != dead.pid:
                break
        except runtime.exceptions.ClientError as error:
            errors.add(error.response["Error"]["Code"])
        assert time.monotonic() < deadline, f"no replacement answered within 120 s: {errors}"
        time.sleep(0.2)
    assert errors <= {"ServiceUnavailable"}, errors
    assert not any(path.exists() for path in dead_copy)  # the dead host's model copy went with it
