"""A gzipped tar in memory, as SageMaker writes model.tar.gz and output.tar.gz, for the tests that
put one in moto's S3."""

from __future__ import annotations

import io
import tarfile


def gzipped_tar(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()
