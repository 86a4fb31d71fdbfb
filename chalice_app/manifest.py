"""The data set snapshot a run trains on: one JSON line per image (key, label, split, eTag, size),
and the same images as SageMaker's ManifestFile, so a job downloads exactly these objects.

Two layouts are accepted under the training prefix: `<label>/<file>` (split from a
stable hash of the key, so an image keeps its split as the data grows) and
`{train,valid,test}/<label>/<file>`. Anything else (markers, stray files) is skipped.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

from training.image_contract import MAX_IMAGE_BYTES, has_image_suffix
from training.splits import SPLITS, stable_split

COMMIT_MARKER = "_COMMIT"


@dataclass(frozen=True)
class Entry:
    key: str
    label: str
    split: str
    etag: str
    size: int = 0  # bytes, from the listing: the jobs' volume is sized from the total


def entry_for(key: str, etag: str, prefix: str, size: int = 0) -> Entry | None:
    # An image training would refuse (image_contract) is not counted as data.
    if not key.startswith(prefix) or not has_image_suffix(key) or size > MAX_IMAGE_BYTES:
        return None
    parts = key[len(prefix):].split("/")
    if len(parts) == 3 and parts[0] in SPLITS:
        return Entry(key=key, label=parts[1], split=parts[0], etag=etag, size=size)
    if len(parts) == 2:
        return Entry(key=key, label=parts[0], split=stable_split(key), etag=etag, size=size)
    return None


def build(objects: list[tuple[str, str, int]], prefix: str) -> list[Entry]:
    """Entries for listed (key, eTag, size) objects, sorted by key so the same data gives the same manifest."""
    entries = (entry_for(key, etag.strip('"'), prefix, size) for key, etag, size in sorted(objects))
    return [entry for entry in entries if entry is not None]


def refusal(entries: list[Entry], min_images: int) -> str | None:
    """Why this snapshot cannot train a classifier, or None when it can."""
    labels = sorted({entry.label for entry in entries})
    if len(entries) < min_images:
        return f"too few images: {len(entries)} found under the training prefix, at least {min_images} needed"
    if len(labels) < 2:
        return f"one class only ({labels[0]!r}): a classifier needs at least two labels"
    missing = [split for split in ("train", "valid") if not any(e.split == split for e in entries)]
    if missing:
        return f"no images in the {' and '.join(missing)} split"
    return None


def digest(entries: list[Entry]) -> str:
    """What the snapshot holds, as one value: equal for the same images with the same contents."""
    lines = sorted(f"{entry.key}\t{entry.etag.strip(chr(34))}" for entry in entries)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def to_jsonl(entries: list[Entry]) -> str:
    return "".join(json.dumps(asdict(entry), sort_keys=True) + "\n" for entry in entries)


def to_manifest_file(entries: list[Entry], bucket: str, prefix: str) -> str:
    """SageMaker's ManifestFile (S3DataSource): `[{"prefix": "s3://bucket/prefix/"}, "rel/key", ...]`.

    File mode puts each object in the channel at its key relative to the prefix, so
    `training-data/cat/1.png` arrives as `cat/1.png`: the layouts the training code reads."""
    relative = [entry.key[len(prefix):] for entry in entries]
    return json.dumps([{"prefix": f"s3://{bucket}/{prefix}"}, *relative])


def total_bytes(entries: list[Entry]) -> int:
    return sum(entry.size for entry in entries)


def is_commit_marker(key: str, prefix: str) -> bool:
    return key.startswith(prefix) and key.rsplit("/", 1)[-1] == COMMIT_MARKER
