"""Unpacking an artefact refuses anything that could write outside the target."""

from __future__ import annotations

import io
import tarfile

import pytest

from local_aws.endpoint_host import UnsafeArchiveError, safe_extract


def make_tar(path, *members: tarfile.TarInfo) -> None:
    with tarfile.open(path, "w:gz") as archive:
        for member in members:
            archive.addfile(member, io.BytesIO(b"x" * member.size) if member.isfile() else None)


def entry(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "", size: int = 1) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, linkname, size if kind == tarfile.REGTYPE else 0
    return info


def test_a_real_artefact_unpacks(model_tar, tmp_path):
    target = safe_extract(model_tar, tmp_path / "out")
    assert (target / "model.pth").is_file() and (target / "code" / "inference.py").is_file()


@pytest.mark.parametrize("bad, reason", [
    (entry("../escape.txt"), "path traversal"),
    (entry("code/../../escape.txt"), "path traversal"),
    (entry("/etc/escape.txt"), "absolute path"),
    (entry("link", tarfile.SYMTYPE, "/etc/passwd"), "link"),
    (entry("inner-link", tarfile.SYMTYPE, "model.pth"), "link"),
    (entry("hard", tarfile.LNKTYPE, "model.pth"), "link"),
    (entry("device", tarfile.CHRTYPE), "special file"),
    (entry("pipe", tarfile.FIFOTYPE), "special file"),
])
def test_unsafe_members_reject_the_whole_archive(tmp_path, bad, reason):
    make_tar(tmp_path / "model.tar.gz", entry("model.pth"), bad)
    with pytest.raises(UnsafeArchiveError, match=reason):
        safe_extract(tmp_path / "model.tar.gz", tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing written, not even the good member
    assert not (tmp_path / "escape.txt").exists()


def test_a_file_that_is_not_a_tar_archive(tmp_path):
    (tmp_path / "model.tar.gz").write_bytes(b"definitely not gzip")
    with pytest.raises(UnsafeArchiveError, match="not a readable tar archive"):
        safe_extract(tmp_path / "model.tar.gz", tmp_path / "out")
