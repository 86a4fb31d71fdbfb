"""Unpack a `model.tar.gz` without trusting it.

An artefact is someone else's upload: a member named `../x` or `/etc/x`, or a link,
could write outside the target directory. Only regular files and directories with
relative, `..`-free names are accepted; anything else rejects the whole archive before
a single byte is written.
"""

from __future__ import annotations

import tarfile
from pathlib import Path, PurePosixPath


class UnsafeArchiveError(ValueError):
    """The archive holds a member that could escape the target directory."""


def _check_member(member: tarfile.TarInfo) -> None:
    name = member.name
    path = PurePosixPath(name)
    if path.is_absolute() or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise UnsafeArchiveError(f"absolute path in archive: {name!r}")
    if ".." in path.parts or "\\" in name:
        raise UnsafeArchiveError(f"path traversal in archive: {name!r}")
    if member.issym() or member.islnk():
        raise UnsafeArchiveError(f"link in archive: {name!r} -> {member.linkname!r}")
    if not (member.isfile() or member.isdir()):
        raise UnsafeArchiveError(f"special file (device, fifo) in archive: {name!r}")


def safe_extract(tarball: Path, target: Path) -> Path:
    """Extract `tarball` into `target` (created) after checking every member; returns target."""
    try:
        with tarfile.open(tarball, "r:*") as archive:
            members = archive.getmembers()
            for member in members:
                _check_member(member)
            target.mkdir(parents=True, exist_ok=True)
            # The "data" filter re-checks the same rules inside tarfile, and drops modes
            # and owners that a model directory has no use for.
            archive.extractall(target, members=members, filter="data")
    except tarfile.TarError as error:
        raise UnsafeArchiveError(f"not a readable tar archive: {tarball.name}: {error}") from error
    return target
