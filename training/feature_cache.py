"""A frozen trunk's features, shared between training jobs through a content-addressed cache.

Every trial of a tuning job runs the same frozen trunk (same architecture, same starting
weights, same eval preprocessing) over the same images, so its features are identical in
every trial: the first trial computes them, the others load them. An entry is named by a
hash of everything the features depend on (the bytes, labels and splits of the images; the
trunk's architecture, freeze mode and weights; the image size; the code that preprocesses
and builds the trunk; torch's and torchvision's versions; the device), so a change in any
of them is a miss, never a stale hit.

Where entries live (`--feature-cache URI`):
- `s3://bucket/prefix/`: what a tuning job needs on AWS. Its trials run on separate
  instances, and a managed warm pool's persistent cache cannot serve them: tuning jobs do
  not keep warm pools (AWS drops `KeepAlivePeriodInSeconds` from a tuning job's
  ResourceConfig), and parallel trials never share an instance anyway.
- a directory: local runs, or a training job's warm-pool cache
  (`SAGEMAKER_MANAGED_WARMPOOL_CACHE_DIRECTORY`, used when no URI is given).

A cache never fails a job: an unreachable store, a corrupt or foreign entry is a miss, and
the entry is computed and written again. Writers may race (two trials start together):
S3 replaces an object atomically, and a directory entry is written to a temporary file and
renamed into place, so a reader sees a whole entry or none.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Protocol

import torch

from training.data import Sample
from training.logs import get_logger

logger = get_logger(__name__)

FORMAT = 1  # bump when the entry's layout changes: older entries become misses
MAGIC = f"trunk-features/{FORMAT}\n".encode()
SPLITS = ("train", "valid", "test")
WARM_POOL_CACHE_ENV = "SAGEMAKER_MANAGED_WARMPOOL_CACHE_DIRECTORY"
# The code that decides the features: which images decode and how, and the trunk's structure.
CODE_FILES = ("image_contract.py", "presets.py", "model.py")


@dataclass(frozen=True)
class Trunk:
    """What a frozen trunk's output depends on, besides the images."""

    arch: str
    freeze: str
    weights: str  # pretrained.weights_identity: "random init, seed 0", "sha256:…", …
    image_size: int
    device: str  # "cpu", or "cuda-bf16": autocast features differ from fp32 ones


@dataclass
class Entry:
    """The features of every split, in the order of the run's accepted samples."""

    features: dict[str, torch.Tensor]  # split -> [n, d] float32
    targets: dict[str, torch.Tensor]  # split -> [n] int64
    rejected: dict[int, str]  # index among the discovered samples -> why it was set aside

    def partition(self, discovered: Sequence[Sample]) -> tuple[list[Sample], list[tuple[str, str]]] | None:
        """(accepted samples, rejected (path, reason)) as decoding found them; None when the
        entry does not fit these samples."""
        if any(not 0 <= index < len(discovered) for index in self.rejected):
            return None
        accepted = [s for i, s in enumerate(discovered) if i not in self.rejected]
        rejected = [(str(discovered[i].path), reason) for i, reason in sorted(self.rejected.items())]
        for split in SPLITS:
            if len(self.features[split]) != sum(s.split == split for s in accepted):
                return None
        return accepted, rejected


class Store(Protocol):
    def get(self, name: str) -> bytes | None: ...

    def put(self, name: str, data: bytes) -> None: ...


@dataclass(frozen=True)
class DirectoryStore:
    root: Path

    def get(self, name: str) -> bytes | None:
        try:
            return (self.root / name).read_bytes()
        except FileNotFoundError:
            return None

    def put(self, name: str, data: bytes) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        # A temporary file in the same directory, renamed into place: readers never see half an entry.
        with tempfile.NamedTemporaryFile(dir=self.root, prefix=f".{name}.", suffix=".part", delete=False) as part:
            part.write(data)
        try:
            os.chmod(part.name, 0o644)  # mkstemp's 0600 would keep the entry from jobs run as another user
            os.replace(part.name, self.root / name)
        except BaseException:
            Path(part.name).unlink(missing_ok=True)
            raise


class S3Store:
    def __init__(self, uri: str) -> None:
        bucket, _, prefix = uri.removeprefix("s3://").partition("/")
        if not bucket:
            raise ValueError(f"not an S3 URI: {uri!r}")
        self.bucket, self.prefix = bucket, prefix.strip("/")
        import boto3  # only here: a job without an S3 cache never pays for importing it

        self._s3 = boto3.client("s3")

    def _key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def get(self, name: str) -> bytes | None:
        try:
            return self._s3.get_object(Bucket=self.bucket, Key=self._key(name))["Body"].read()
        except self._s3.exceptions.NoSuchKey:
            return None

    def put(self, name: str, data: bytes) -> None:
        self._s3.put_object(Bucket=self.bucket, Key=self._key(name), Body=data)


def open_store(uri: str | None, environ: dict[str, str] | None = None) -> Store | None:
    """The store a URI names; without one, a warm pool's persistent cache when the job has it."""
    environ = os.environ if environ is None else environ
    if not uri:
        warm = environ.get(WARM_POOL_CACHE_ENV)
        return DirectoryStore(Path(warm) / "trunk-features") if warm else None
    if uri.startswith("s3://"):
        return S3Store(uri)
    return DirectoryStore(Path(uri.removeprefix("file://")))


def data_digest(samples: Sequence[Sample]) -> str:
    """The images' bytes, labels and splits, in order: the data the features come from."""
    digest = hashlib.sha256()
    for sample in samples:
        try:
            content = hashlib.sha256(sample.path.read_bytes()).hexdigest()
        except OSError as error:  # decoding sets it aside; whether it still fails is part of the data
            content = f"unreadable: {error.strerror}"
        digest.update(json.dumps([sample.label, sample.split, content]).encode() + b"\n")
    return digest.hexdigest()


def _code_digest() -> str:
    here = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for name in CODE_FILES:
        digest.update(name.encode() + b"\0" + (here / name).read_bytes())
    return digest.hexdigest()


def entry_name(trunk: Trunk, samples: Sequence[Sample]) -> str:
    identity = {
        "format": FORMAT,
        "trunk": asdict(trunk),
        "data": data_digest(samples),
        "code": _code_digest(),
        "torch": torch.__version__,
        "torchvision": metadata.version("torchvision"),  # without importing it
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest() + ".pt"


def encode(entry: Entry) -> bytes:
    buffer = io.BytesIO()
    torch.save({
        "features": entry.features, "targets": entry.targets,
        "rejected": [[index, reason] for index, reason in sorted(entry.rejected.items())],
    }, buffer)
    payload = buffer.getvalue()
    return MAGIC + hashlib.sha256(payload).digest() + payload


def decode(data: bytes) -> Entry:
    """The entry, or ValueError when the bytes are not a whole, well-formed entry."""
    head = len(MAGIC) + 32
    if not data.startswith(MAGIC) or len(data) < head:
        raise ValueError("not a trunk-features entry")
    payload = data[head:]
    if hashlib.sha256(payload).digest() != data[len(MAGIC):head]:
        raise ValueError("checksum mismatch (truncated or corrupt)")
    try:
        raw = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
        entry = Entry(
            features={split: raw["features"][split] for split in SPLITS},
            targets={split: raw["targets"][split] for split in SPLITS},
            rejected={int(index): str(reason) for index, reason in raw["rejected"]},
        )
    except Exception as error:  # torch.load and a foreign layout raise many kinds
        raise ValueError(f"unreadable entry: {error}") from error
    for split in SPLITS:
        features, targets = entry.features[split], entry.targets[split]
        if not (isinstance(features, torch.Tensor) and isinstance(targets, torch.Tensor)
                and features.dim() == 2 and targets.dim() == 1 and len(features) == len(targets)):
            raise ValueError(f"malformed {split} split")
    return entry


def load(store: Store, name: str) -> Entry | None:
    """The cached entry, or None on a miss; a broken entry or store is a miss (and says so)."""
    started = time.perf_counter()
    try:
        data = store.get(name)
    except Exception as error:  # noqa: BLE001 - the cache is an optimisation, never a failure
        logger.warning("feature cache unreadable, computing the features", extra={"entry": name, "error": str(error)})
        return None
    if data is None:
        logger.info("feature cache miss", extra={"entry": name})
        return None
    try:
        entry = decode(data)
    except ValueError as error:
        logger.warning("feature cache entry is corrupt, computing it again", extra={"entry": name, "error": str(error)})
        return None
    logger.info("feature cache hit", extra={"entry": name, "seconds": round(time.perf_counter() - started, 2)})
    return entry


def save(store: Store, name: str, entry: Entry) -> None:
    try:
        store.put(name, encode(entry))
    except Exception as error:  # noqa: BLE001 - a job whose features cannot be shared still trains
        logger.warning("feature cache not written", extra={"entry": name, "error": str(error)})
        return
    logger.info("feature cache written", extra={"entry": name})
