"""The clients' timeouts and retries fit inside the Lambda that uses them."""

from __future__ import annotations

from chalice_app import aws

from .conftest import CONFIG


def lambda_timeouts() -> list[int]:
    """Every lambda_timeout .chalice/config.json sets: top level, per stage, per function."""
    found = [CONFIG.get("lambda_timeout", 60)]
    for stage in CONFIG["stages"].values():
        found.append(stage.get("lambda_timeout", found[0]))
        found += [function["lambda_timeout"] for function in stage.get("lambda_functions", {}).values()
                  if "lambda_timeout" in function]
    return found


def test_one_invoke_endpoint_with_its_retries_ends_inside_the_lambda(monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    config = aws._make.__wrapped__("sagemaker-runtime").meta.config
    # SageMaker gives a model 60 s to answer: the read waits a little longer than that.
    assert config.read_timeout == 70
    worst = (config.connect_timeout + config.read_timeout) * config.retries["total_max_attempts"]
    assert worst < min(lambda_timeouts()), (worst, lambda_timeouts())


def test_other_clients_keep_their_retries(monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    assert aws._make.__wrapped__("sagemaker").meta.config.retries == {"mode": "standard", "total_max_attempts": 6}
    assert aws._make.__wrapped__("s3").meta.config.signature_version == "s3v4"
