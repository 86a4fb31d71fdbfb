"""One file out of a gzipped tar in S3 (a model.tar.gz or an output.tar.gz a SageMaker job wrote).

The archive is streamed (tarfile's "r|gz" over the S3 body) and the read stops at the member: the
rest of the body is never downloaded and nothing but the member is held in memory.
"""

from __future__ import annotations

import posixpath
import tarfile
from typing import BinaryIO

from . import aws


class ArchiveError(ValueError):
    """The object is not a gzipped tar, or the member is larger than the caller takes."""


def read_member(bucket: str, key: str, name: str, max_bytes: int) -> bytes | None:
    """The regular file `name` (relative, "./" allowed) of the archive at s3://bucket/key; None when
    the archive has none. ClientError from S3 as it comes (a missing key is the caller's to judge)."""
    body = aws.client("s3").get_object(Bucket=bucket, Key=key)["Body"]
    try:
        return _member(body, name, max_bytes)
    except tarfile.TarError as error:
        raise ArchiveError(f"s3://{bucket}/{key} is not a gzipped tar: {error}") from None
    finally:
        body.close()  # stops the download where the read stopped


def _member(body: BinaryIO, name: str, max_bytes: int) -> bytes | None:
    with tarfile.open(fileobj=body, mode="r|gz") as archive:
        for member in archive:
            if not member.isfile() or posixpath.normpath(member.name) != name:
                continue
            if member.size > max_bytes:
                raise ArchiveError(f"{name} is {member.size} bytes, more than the {max_bytes} taken")
            data = archive.extractfile(member)
            assert data is not None  # a regular file's member
            return data.read()
    return None
