"""moto served from threads of the test process (`MotoServer`): once stopped, it answers no one."""

from __future__ import annotations

import urllib.request

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import EndpointConnectionError

from local_aws.moto_server import MotoServer

CREDENTIALS = {"region_name": "us-east-1", "aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


def test_a_stopped_server_answers_no_one():
    server = MotoServer().start()
    # In-process, it shares moto's backends with whatever this worker ran before: start from none.
    urllib.request.urlopen(urllib.request.Request(f"{server.url}/moto-api/reset", method="POST"))
    s3 = boto3.client("s3", endpoint_url=server.url, config=Config(retries={"max_attempts": 1}), **CREDENTIALS)
    s3.create_bucket(Bucket="kept")
    assert [b["Name"] for b in s3.list_buckets()["Buckets"]] == ["kept"]
    server.stop()
    with pytest.raises(EndpointConnectionError):
        s3.list_buckets()
