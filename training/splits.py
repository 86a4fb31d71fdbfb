"""Stable assignment of an image to train/valid/test from its key.

The same key always lands in the same split, so when the data set grows the old
images keep their split and test accuracy stays comparable between model versions.
Pure Python: the Lambda side imports it to write manifests.
"""

from __future__ import annotations

import hashlib

SPLITS = ("train", "valid", "test")
DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)


def stable_split(key: str, fractions: tuple[float, float, float] = DEFAULT_FRACTIONS) -> str:
    if abs(sum(fractions) - 1.0) > 1e-9 or any(f < 0 for f in fractions):
        raise ValueError(f"split fractions must be non-negative and sum to 1, not {fractions}")
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    position = int.from_bytes(digest[:8], "big") / 2**64
    if position < fractions[0]:
        return "train"
    if position < fractions[0] + fractions[1]:
        return "valid"
    return "test"
