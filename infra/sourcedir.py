"""The training source as SageMaker's script mode takes it: `sourcedir.tar.gz` holding
`training/` and `inference/` at its root, so `training/train.py` runs from the unpacked
directory and imports `training.*` as it does in the repository, and a root
`requirements.txt` (training/requirements.txt) that the training toolkit pip-installs
before it runs the script: what the job needs beyond SageMaker's training image.

The deploy step uploads it to the stage's SOURCE_DIR_URI; so does the local stack.
"""

from __future__ import annotations

import gzip
import io
import tarfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("training", "inference")
PROGRAM = "training/train.py"
REQUIREMENTS = "training/requirements.txt"  # the archive's root requirements.txt
_SKIP_PARTS = {"__pycache__", ".pytest_cache"}
_SUFFIXES = {".py", ".txt", ".json"}


def source_files(root: Path = REPO_ROOT, packages: tuple[str, ...] = PACKAGES) -> dict[str, Path]:
    """{name in the archive: file}."""
    files = {}
    for package in packages:
        for path in sorted((root / package).rglob("*")):
            if path.is_file() and path.suffix in _SUFFIXES and not _SKIP_PARTS & set(path.parts):
                files[path.relative_to(root).as_posix()] = path
    files["requirements.txt"] = root / REQUIREMENTS
    return files


def build_sourcedir(root: Path = REPO_ROOT, packages: tuple[str, ...] = PACKAGES) -> bytes:
    """The archive's bytes; deterministic (sorted members, zero mtimes), so its hash names a version."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, path in sorted(source_files(root, packages).items()):
            data = path.read_bytes()
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(buffer.getvalue(), mtime=0)
