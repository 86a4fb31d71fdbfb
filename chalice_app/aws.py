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


@lru_cache(maxsize=None)
def _make(service: str) -> Any:
    return boto3.session.Session().client(service, config=_S3_CONFIG if service == "s3" else _CONFIG)


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


@lru_cache(maxsize=None)
def _resource(service: str) -> Any:
    return boto3.session.Session().resource(service, config=_CONFIG)


def table(name: str) -> Any:
    """A DynamoDB Table (the resource layer converts numbers and maps for us)."""
    with _building:
        resource = _resource("dynamodb")
    return resource.Table(name)
