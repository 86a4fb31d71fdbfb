"""The whole stack as a person runs it: `python -m local_aws up` in a child process, on free
ports, with a small training budget set through the stage's own variables (`--set`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest


def wait_until(check: Callable[[], Any], timeout: float, what: str, every: float = 2.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(every)


def upload_all(s3: Any, bucket: str, files: dict[str, Path], threads: int = 8) -> None:
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda item: s3.upload_file(str(item[1]), bucket, item[0]), files.items()))


@pytest.fixture
def moto_url(monkeypatch):
    """moto in server mode on a free port, fresh, with boto3 pointed at it for this test."""
    import urllib.request

    from local_aws.moto_server import MotoServer

    server = MotoServer().start()
    url = server.url
    urllib.request.urlopen(urllib.request.Request(f"{url}/moto-api/reset", method="POST"))
    for name, value in {"AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_SQS", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    yield url
    server.stop()
