"""File mode's download cache: each object fetched once per ETag, linked into every job's
channel, and fetched again once a job has written into it."""

from __future__ import annotations

from pathlib import Path

import pytest

from local_aws.sagemaker import aws

from .conftest import unique


@pytest.fixture
def gets(s3):
    """The keys of the GetObject calls made with the (package-wide) client during one test."""
    calls: list[str] = []

    def count(params, **_):
        calls.append(params["Key"])

    s3.meta.events.register("before-parameter-build.s3.GetObject", count)
    yield calls
    s3.meta.events.unregister("before-parameter-build.s3.GetObject", count)


def test_a_cached_object_is_fetched_once_and_again_after_a_job_wrote_into_it(s3, bucket, tmp_path, gets):
    prefix = unique("channel")
    for name, body in (("a/1.txt", b"one"), ("b/2.txt", b"two")):
        s3.put_object(Bucket=bucket, Key=f"{prefix}/{name}", Body=body)
    uri, cache = f"s3://{bucket}/{prefix}/", tmp_path / "cache"

    assert aws.download_prefix(s3, uri, tmp_path / "job1", cache=cache) == 2
    assert aws.download_prefix(s3, uri, tmp_path / "job2", cache=cache) == 2
    assert len(gets) == 2  # the second job's channel came from the cache
    assert (tmp_path / "job2" / "a" / "1.txt").read_bytes() == b"one"

    with open(tmp_path / "job1" / "a" / "1.txt", "r+b") as edited:  # a script rewriting its input in place
        edited.write(b"ONE")
    aws.download_prefix(s3, uri, tmp_path / "job3", cache=cache)
    assert (tmp_path / "job3" / "a" / "1.txt").read_bytes() == b"one"
    assert len(gets) == 3 and gets[-1].endswith("a/1.txt")


def test_a_changed_object_is_fetched_again(s3, bucket, tmp_path):
    key = f"{unique('channel')}/x.txt"
    s3.put_object(Bucket=bucket, Key=key, Body=b"old")
    cache = tmp_path / "cache"
    aws.download_prefix(s3, f"s3://{bucket}/{key}", tmp_path / "job1", cache=cache)
    s3.put_object(Bucket=bucket, Key=key, Body=b"new")  # a new ETag
    aws.download_prefix(s3, f"s3://{bucket}/{key}", tmp_path / "job2", cache=cache)
    assert Path(tmp_path / "job2" / "x.txt").read_bytes() == b"new"
    assert Path(tmp_path / "job1" / "x.txt").read_bytes() == b"old"
