"""moto in its own process, as the stack runs it: serves, outlives a Ctrl-C, stops when told."""

from __future__ import annotations

import signal
import time

import boto3

from local_aws.moto_server import MotoProcess
from local_aws.ports import free_port


def test_serves_ignores_ctrl_c_and_stops():
    moto = MotoProcess("127.0.0.1", free_port()).start()
    try:
        s3 = boto3.client("s3", endpoint_url=moto.url, region_name="us-east-1", aws_access_key_id="testing",
                          aws_secret_access_key="testing")
        s3.create_bucket(Bucket="kept")
        # A terminal's Ctrl-C reaches the whole process group; only the stack may stop moto,
        # after what calls it.
        moto._process.send_signal(signal.SIGINT)
        time.sleep(0.5)
        assert moto._process.poll() is None
        assert [b["Name"] for b in s3.list_buckets()["Buckets"]] == ["kept"]
        process = moto._process
    finally:
        moto.stop()
    assert process.poll() is not None
