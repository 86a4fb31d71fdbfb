"""A model version's drift reference, read out of its model.tar.gz in S3.

The final training job writes training.drift.REFERENCE_FILE at the artefact's top level; the
archive is streamed and the read stops at that member (chalice_app/archives.py).
"""

from __future__ import annotations

import json
from urllib.parse import urlparse

from training.drift import REFERENCE_FILE, DriftInputError, Reference

from .archives import ArchiveError, read_member

# A reference is a few counts per confidence bin and class and two vectors of EMBEDDING_DIMS: far
# under this even for thousands of classes. A member larger than this is not one.
MAX_REFERENCE_BYTES = 1024 * 1024


def s3_location(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc or not parsed.path.lstrip("/"):
        raise ValueError(f"not an S3 object URI: {uri!r}")
    return parsed.netloc, parsed.path.lstrip("/")


def read_reference(artifact_uri: str) -> Reference | None:
    """The artefact's drift reference; None when it has none. DriftInputError when the member is
    there but is not a reference (too large, not JSON, counts that do not add up) or the artefact
    is not a gzipped tar."""
    bucket, key = s3_location(artifact_uri)
    try:
        data = read_member(bucket, key, REFERENCE_FILE, MAX_REFERENCE_BYTES)
    except ArchiveError as error:
        raise DriftInputError(str(error)) from None
    if data is None:
        return None
    try:
        document = json.loads(data)
    except ValueError as error:
        raise DriftInputError(f"{REFERENCE_FILE} is not JSON: {error}") from None
    return Reference.from_dict(document)
