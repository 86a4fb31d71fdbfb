"""File mode's download cache: each object fetched once per ETag, linked into every job's
channel, and fetched again once a job has written into it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from local_aws.sagemaker import s3_transfer

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

    assert s3_transfer.download_prefix(s3, uri, tmp_path / "job1", cache=cache) == 2
    assert s3_transfer.download_prefix(s3, uri, tmp_path / "job2", cache=cache) == 2
    assert len(gets) == 2  # the second job's channel came from the cache
    assert (tmp_path / "job2" / "a" / "1.txt").read_bytes() == b"one"

    with open(tmp_path / "job1" / "a" / "1.txt", "r+b") as edited:  # a script rewriting its input in place
        edited.write(b"ONE")
    s3_transfer.download_prefix(s3, uri, tmp_path / "job3", cache=cache)
    assert (tmp_path / "job3" / "a" / "1.txt").read_bytes() == b"one"
    assert len(gets) == 3 and gets[-1].endswith("a/1.txt")


def test_a_changed_object_is_fetched_again(s3, bucket, tmp_path):
    key = f"{unique('channel')}/x.txt"
    s3.put_object(Bucket=bucket, Key=key, Body=b"old")
    cache = tmp_path / "cache"
    s3_transfer.download_prefix(s3, f"s3://{bucket}/{key}", tmp_path / "job1", cache=cache)
    s3.put_object(Bucket=bucket, Key=key, Body=b"new")  # a new ETag
    s3_transfer.download_prefix(s3, f"s3://{bucket}/{key}", tmp_path / "job2", cache=cache)
    assert Path(tmp_path / "job2" / "x.txt").read_bytes() == b"new"
    assert Path(tmp_path / "job1" / "x.txt").read_bytes() == b"old"


def test_a_manifest_file_channel_holds_only_the_objects_it_names_at_their_relative_keys(s3, bucket, tmp_path, gets):
    prefix = unique("data")
    for name in ("cat/1.png", "dog/2.png", "cat/3.png"):
        s3.put_object(Bucket=bucket, Key=f"{prefix}/{name}", Body=name.encode())
    manifest = f"{unique('manifests')}/run.manifest"
    s3.put_object(Bucket=bucket, Key=manifest, Body=json.dumps([{"prefix": f"s3://{bucket}/{prefix}/"},
                                                                "cat/1.png", "dog/2.png"]).encode())
    uri, cache = f"s3://{bucket}/{manifest}", tmp_path / "cache"

    assert s3_transfer.download_manifest(s3, uri, tmp_path / "job1", cache=cache) == 2
    files = sorted(p.relative_to(tmp_path / "job1").as_posix() for p in (tmp_path / "job1").rglob("*") if p.is_file())
    assert files == ["cat/1.png", "dog/2.png"]  # the label folders, as File mode lays out a prefix
    assert (tmp_path / "job1" / "dog" / "2.png").read_bytes() == b"dog/2.png"
    s3_transfer.download_manifest(s3, uri, tmp_path / "job2", cache=cache)
    assert sorted(gets) == sorted([manifest, manifest, f"{prefix}/cat/1.png", f"{prefix}/dog/2.png"])  # cached


@pytest.mark.parametrize(("document", "reason"), [
    ("not json", "is not valid JSON"),
    (json.dumps({"prefix": "s3://b/p/"}), "must be a JSON array whose first element is"),
    (json.dumps(["cat/1.png", {"prefix": "s3://b/p/"}]), "must be a JSON array whose first element is"),
    (json.dumps([{"prefix": "b/p/"}, "cat/1.png"]), "its prefix is not an S3 URI"),
    (json.dumps([{"prefix": "s3://b/p/"}]), "names no objects"),
    (json.dumps([{"prefix": "s3://b/p/"}, "cat/1.png", 7]), "not 7"),
    (json.dumps([{"prefix": "s3://b/p/"}, "../../etc/passwd"]), "relative to it"),
])
def test_a_malformed_manifest_file_is_refused_with_what_is_wrong(document, reason):
    with pytest.raises(s3_transfer.ManifestError, match=reason):
        s3_transfer.parse_manifest(document, "s3://b/run.manifest")


def test_a_manifest_file_naming_a_missing_object_is_refused(s3, bucket, tmp_path):
    prefix = unique("data")
    s3.put_object(Bucket=bucket, Key=f"{prefix}/cat/1.png", Body=b"1")
    manifest = f"{unique('manifests')}/run.manifest"
    s3.put_object(Bucket=bucket, Key=manifest, Body=json.dumps([{"prefix": f"s3://{bucket}/{prefix}/"},
                                                                "cat/1.png", "cat/gone.png"]).encode())
    with pytest.raises(s3_transfer.ManifestError, match=f"do not exist, e.g. s3://{bucket}/{prefix}/cat/gone.png"):
        s3_transfer.download_manifest(s3, f"s3://{bucket}/{manifest}", tmp_path / "job")
    with pytest.raises(s3_transfer.ManifestError, match="does not exist"):
        s3_transfer.download_manifest(s3, f"s3://{bucket}/{manifest}-none", tmp_path / "job")
