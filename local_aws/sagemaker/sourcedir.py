"""The training source as SageMaker's script mode takes it: `sourcedir.tar.gz` holding
`training/` and `inference/` at its root, so `training/train.py` runs from the unpacked
directory and imports `training.*` as it does in the repository."""

from __future__ import annotations

import gzip
import io
import tarfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("training", "inference")
PROGRAM = "training/train.py"
_SKIP_PARTS = {"__pycache__", ".pytest_cache"}
_SUFFIXES = {".py", ".txt", ".json"}


def source_files(root: Path = REPO_ROOT, packages: tuple[str, ...] = PACKAGES) -> list[Path]:
    files = []
    for package in packages:
        for path in sorted((root / package).rglob("*")):
            if path.is_file() and path.suffix in _SUFFIXES and not _SKIP_PARTS & set(path.parts):
                files.append(path)
    return files


def build_sourcedir(root: Path = REPO_ROOT, packages: tuple[str, ...] = PACKAGES) -> bytes:
    """The archive's bytes; deterministic (sorted members, zero mtimes), so its hash names a version."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in source_files(root, packages):
            data = path.read_bytes()
            info = tarfile.TarInfo(path.relative_to(root).as_posix())
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(buffer.getvalue(), mtime=0)


def write_sourcedir(target: Path, root: Path = REPO_ROOT) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(build_sourcedir(root))
    return target
