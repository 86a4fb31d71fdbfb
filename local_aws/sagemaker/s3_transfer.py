"""Thin edges to the AWS services the local SageMaker uses (S3, EventBridge).

boto3 honours AWS_ENDPOINT_URL and AWS_ENDPOINT_URL_<SERVICE>, so on one machine these
calls reach moto in server mode.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlparse

import boto3
import botocore.session
from boto3.s3.transfer import TransferConfig


def split_s3_uri(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ValueError(f"not an S3 URI: {uri!r}")
    return parsed.netloc, parsed.path.lstrip("/")


def join_s3(uri: str, *parts: str) -> str:
    return "/".join([uri.rstrip("/"), *(p.strip("/") for p in parts)])


_session_lock = threading.Lock()
_session: boto3.Session | None = None


def s3_client(region: str):
    """An S3 client that leaves timestamps as the wire's strings: nothing here reads them, and
    parsing every listed object's LastModified was a third of the time to list a channel of
    1,800 images, which every trial of a tuning job does. One session for all (a new one loads
    its service models again: 0.1 s); a client still reads the environment when it is made."""
    global _session
    with _session_lock:
        if _session is None:
            core = botocore.session.get_session()
            core.get_component("response_parser_factory").set_parser_defaults(timestamp_parser=str)
            _session = boto3.Session(botocore_session=core)
        return _session.client("s3", region_name=region)


def download_prefix(s3, uri: str, target: Path, cache: Path | None = None) -> int:
    """Download every object under an S3 prefix as File mode does; returns the count.

    Local paths are relative to the prefix's last '/', so both `s3://b/data/` and an
    exact object key `s3://b/manifests/run.jsonl` land where SageMaker puts them. With a
    cache directory, an object already fetched with the same ETag is linked from there
    instead of fetched again: a tuning job's trials all read the same channel.
    """
    bucket, prefix = split_s3_uri(uri)
    if not prefix or prefix.endswith("/"):
        base = prefix
    else:
        base = prefix.rsplit("/", 1)[0] + "/" if "/" in prefix else ""
    jobs: list[tuple[str, str, Path]] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            if not item["Key"].endswith("/"):
                jobs.append((item["Key"], item.get("ETag", ""), target / item["Key"][len(base):]))
    _fetch_all(s3, bucket, jobs, cache)
    return len(jobs)


class ManifestError(ValueError):
    """A ManifestFile channel's manifest is not one SageMaker can read: the job fails with this."""


def parse_manifest(text: str, uri: str) -> tuple[str, str, list[str]]:
    """(bucket, prefix, relative keys) of a ManifestFile: a JSON array, `{"prefix": "s3://b/p/"}` then
    one or more keys relative to it (the S3DataSource reference). Anything else is refused."""
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise ManifestError(f"the manifest file {uri} is not valid JSON: {error}") from None
    if not isinstance(document, list) or not document or not isinstance(document[0], dict) \
            or not isinstance(document[0].get("prefix"), str):
        raise ManifestError(f"the manifest file {uri} must be a JSON array whose first element is "
                            '{"prefix": "s3://bucket/prefix/"}')
    try:
        bucket, prefix = split_s3_uri(document[0]["prefix"])
    except ValueError as error:
        raise ManifestError(f"the manifest file {uri}: its prefix is {error}") from None
    suffixes = document[1:]
    if not suffixes:
        raise ManifestError(f"the manifest file {uri} names no objects after its prefix")
    bad = [suffix for suffix in suffixes if not isinstance(suffix, str) or not suffix or suffix.endswith("/")
           or suffix.startswith("/") or ".." in suffix.split("/")]
    if bad:
        raise ManifestError(f"the manifest file {uri}: entries after the prefix must be object keys relative "
                            f"to it, not {bad[0]!r}")
    return bucket, prefix, suffixes


def download_manifest(s3, uri: str, target: Path, cache: Path | None = None) -> int:
    """Download the objects a ManifestFile names, each at its key relative to the manifest's prefix
    (`training-data/` + `cat/1.png` lands as `cat/1.png`); returns the count. A malformed manifest or
    a missing object raises: the job fails, as on AWS.

    AWS fetches each object; here one listing of the prefix learns the ETags the cache needs
    (a listing page answers for 1,000 keys, a HEAD for one)."""
    bucket, key = split_s3_uri(uri)
    try:
        text = s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode("utf-8")
    except s3.exceptions.NoSuchKey:
        raise ManifestError(f"the manifest file {uri} does not exist") from None
    except UnicodeDecodeError:
        raise ManifestError(f"the manifest file {uri} is not UTF-8 text") from None
    data_bucket, prefix, suffixes = parse_manifest(text, uri)
    etags = {item["Key"]: item.get("ETag", "")
             for page in s3.get_paginator("list_objects_v2").paginate(Bucket=data_bucket, Prefix=prefix)
             for item in page.get("Contents", [])}
    missing = [suffix for suffix in suffixes if prefix + suffix not in etags]
    if missing:
        raise ManifestError(f"{len(missing)} object(s) named by the manifest file {uri} do not exist, "
                            f"e.g. s3://{data_bucket}/{prefix}{missing[0]}")
    jobs = [(prefix + suffix, etags[prefix + suffix], target / suffix) for suffix in dict.fromkeys(suffixes)]
    _fetch_all(s3, data_bucket, jobs, cache)
    return len(jobs)


def _fetch_all(s3, bucket: str, jobs: list[tuple[str, str, Path]], cache: Path | None) -> None:
    """Fetch (key, eTag, local path) jobs, linking what the cache holds with the same ETag."""
    for parent in {local.parent for _, _, local in jobs} | ({cache} if cache is not None else set()):
        parent.mkdir(parents=True, exist_ok=True)

    def cached(key: str, etag: str) -> Path | None:
        return cache / hashlib.sha256(f"{bucket}\0{key}\0{etag}".encode()).hexdigest() if cache and etag else None

    def fetch(job: tuple[str, str, Path]) -> None:
        key, etag, local = job
        copy = cached(key, etag)
        if copy is None:
            s3.download_file(bucket, key, str(local))
            return
        partial = copy.with_suffix(f".{threading.get_ident()}.part")
        s3.download_file(bucket, key, str(partial))
        os.utime(partial, ns=(PRISTINE_MTIME_NS, PRISTINE_MTIME_NS))
        os.replace(partial, copy)
        _place(copy, local)

    # What the cache holds is linked here and now (a thread pool's hand-offs cost more than the links);
    # the rest, many small objects (images), is fetched in parallel: the round trips, not the bytes, are the cost.
    missing = []
    for key, etag, local in jobs:
        copy = cached(key, etag)
        if copy is not None and _pristine(copy):
            _place(copy, local)
        else:
            missing.append((key, etag, local))
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(fetch, missing))


# Every cached object keeps this mtime until something writes to it (see `_place`).
PRISTINE_MTIME_NS = 0


def _pristine(cached: Path) -> bool:
    try:
        return cached.stat().st_mtime_ns == PRISTINE_MTIME_NS
    except FileNotFoundError:
        return False


def _place(cached: Path, local: Path) -> None:
    """Put a cached object into a job's channel: a hard link, where the file system has them.

    Linking 1,800 small images takes 0.06 s where copying them takes 1.3 s, and a tuning
    job's every trial does it. The price: a script that rewrites an input file in place
    rewrites the shared inode (seen by a trial running at that moment). The cache defends
    itself: the write moves the file's mtime off PRISTINE_MTIME_NS, and the next job
    downloads the object again.
    """
    try:
        os.link(cached, local)
    except OSError:  # another file system, or none with hard links
        shutil.copyfile(cached, local)


def download_object(s3, uri: str, target: Path) -> Path:
    bucket, key = split_s3_uri(uri)
    target.parent.mkdir(parents=True, exist_ok=True)
    s3.download_file(bucket, key, str(target))
    return target


# One PUT up to this size: the service writes to moto, which stores a multipart upload's parts and
# then joins them, taking 1.5x as long as one PUT for a 47 MB model.
SINGLE_PUT = TransferConfig(multipart_threshold=512 * 1024 * 1024)


def upload_file(s3, path: Path, uri: str) -> str:
    bucket, key = split_s3_uri(uri)
    s3.upload_file(str(path), bucket, key, Config=SINGLE_PUT)
    return uri


def upload_tree(s3, directory: Path, uri: str) -> int:
    files = [path for path in sorted(directory.rglob("*")) if path.is_file()]
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda path: upload_file(s3, path, join_s3(uri, path.relative_to(directory).as_posix())), files))
    return len(files)
