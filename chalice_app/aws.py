"""boto3 clients, made once per Lambda container.

boto3 reads AWS_ENDPOINT_URL and AWS_ENDPOINT_URL_<SERVICE> by itself, so on one
machine the same calls reach moto and the local SageMaker; nothing here names an
endpoint. Tests replace a client with `use_client` (e.g. one under a Stubber).
"""

from __future__ import annotations

import threading
from functools import lru_cache
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

_overrides: dict[str, Any] = {}
# Handlers may run on several threads (the local dispatcher): without the lock, their first calls
# would each build the same client, about 0.6 s of CPU apiece.
_building = threading.Lock()
_CONFIG = Config(retries={"mode": "standard", "max_attempts": 5})


# Presigned upload URLs must be SigV4 (the only signature newer regions accept).
_S3_CONFIG = _CONFIG.merge(Config(signature_version="s3v4"))

# InvokeEndpoint must end inside the Lambda that makes it (`lambda_timeout` 120 s in
# .chalice/config.json; tests/app/test_aws_clients.py holds the sum below to it). SageMaker gives
# a model 60 s to answer, so the read timeout is 70 s; botocore's defaults (60 s connect, 60 s read)
# with _CONFIG's retries (max_attempts 5 is 5 retries: 6 attempts) could keep one call going for 720 s.
# Worst case here:
# (RUNTIME_CONNECT_TIMEOUT + RUNTIME_READ_TIMEOUT) x RUNTIME_MAX_ATTEMPTS = (5 + 70) x 1 = 75 s < 120 s.
# A second 70 s attempt cannot fit, so the call is not retried in the Lambda: a failed invocation is
# its records' failure in the batch response, and SQS delivers them again.
RUNTIME_CONNECT_TIMEOUT = 5
RUNTIME_READ_TIMEOUT = 70
RUNTIME_MAX_ATTEMPTS = 1
_RUNTIME_CONFIG = _CONFIG.merge(Config(connect_timeout=RUNTIME_CONNECT_TIMEOUT, read_timeout=RUNTIME_READ_TIMEOUT,
                                       retries={"mode": "standard",
                                                "total_max_attempts": RUNTIME_MAX_ATTEMPTS}))
_CONFIGS = {"s3": _S3_CONFIG, "sagemaker-runtime": _RUNTIME_CONFIG}


@lru_cache(maxsize=None)
def _make(service: str) -> Any:
    return boto3.session.Session().client(service, config=_CONFIGS.get(service, _CONFIG))


def client(service: str) -> Any:
    override = _overrides.get(service)
    if override is not None:
        return override
    with _building:
        return _make(service)


def use_client(service: str, replacement: Any | None) -> None:
    """Use `replacement` for `service` (None: back to the real one)."""
    if replacement is None:
        _overrides.pop(service, None)
    else:
        _overrides[service] = replacement


def reset() -> None:
    _overrides.clear()
    _make.cache_clear()
    _resource.cache_clear()


def error_code(error: ClientError) -> str:
    return error.response.get("Error", {}).get("Code", "")


def error_message(error: ClientError) -> str:
    return error.response.get("Error", {}).get("Message", str(error))


def is_conditional_failure(error: ClientError) -> bool:
    return error_code(error) in {"ConditionalCheckFailedException", "TransactionCanceledException"}


def is_first_condition_failure(error: ClientError) -> bool:
    """A transaction cancelled because its first item's condition failed (not a conflict or throttle)."""
    reasons = error.response.get("CancellationReasons", [])
    return error_code(error) == "TransactionCanceledException" and bool(reasons) and \
        reasons[0].get("Code") == "ConditionalCheckFailed"


@lru_cache(maxsize=None)
def _resource(service: str) -> Any:
    return boto3.session.Session().resource(service, config=_CONFIG)


def table(name: str) -> Any:
    """A DynamoDB Table (the resource layer converts numbers and maps for us)."""
    with _building:
        resource = _resource("dynamodb")
    return resource.Table(name)
