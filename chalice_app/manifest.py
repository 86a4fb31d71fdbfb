"""The data set snapshot a run trains on: one JSON line per image (key, label, split, eTag).

Two layouts are accepted under the training prefix: `<label>/<file>` (split from a
stable hash of the key, so an image keeps its split as the data grows) and
`{train,valid,test}/<label>/<file>`. Anything else (markers, stray files) is skipped.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from training.splits import SPLITS, stable_split

COMMIT_MARKER = "_COMMIT"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp")


@dataclass(frozen=True)
class Entry:
    key: str
    label: str
    split: str
    etag: str


def entry_for(key: str, etag: str, prefix: str) -> Entry | None:
    if not key.startswith(prefix) or not key.lower().endswith(IMAGE_SUFFIXES):
        return None
    parts = key[len(prefix):].split("/")
    if len(parts) == 3 and parts[0] in SPLITS:
        return Entry(key=key, label=parts[1], split=parts[0], etag=etag)
    if len(parts) == 2:
        return Entry(key=key, label=parts[0], split=stable_split(key), etag=etag)
    return None


def build(objects: list[tuple[str, str]], prefix: str) -> list[Entry]:
    """Entries for (key, eTag) pairs, sorted by key so the same data gives the same manifest."""
    entries = (entry_for(key, etag.strip('"'), prefix) for key, etag in sorted(objects))
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


def to_jsonl(entries: list[Entry]) -> str:
    return "".join(json.dumps(asdict(entry), sort_keys=True) + "\n" for entry in entries)


def is_commit_marker(key: str, prefix: str) -> bool:
    return key.startswith(prefix) and key.rsplit("/", 1)[-1] == COMMIT_MARKER
