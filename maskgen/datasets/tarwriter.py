"""Reproducible tar shards: the same members give the same bytes, on any machine, any run.

webdataset's own ``TarWriter`` stamps the current time and user unless told otherwise, and Ray
Data's writer names files by uuid; a resumable, comparable build needs neither. Members are
written sorted by name (a sample's files stay adjacent because keys contain no dots), with a
fixed mtime, mode, uid/gid and empty user names. The file appears under its final name only
once complete (a temp name unique to the run, then ``os.replace``), so a killed build never leaves a truncated
shard that a reader would take for a finished one.
"""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Iterable
from pathlib import Path

from maskgen.outputs import replacing

FIXED_MTIME = 0  # 1970-01-01: no build time leaks into the bytes
FILE_MODE = 0o644


def tar_bytes(members: Iterable[tuple[str, bytes]]) -> bytes:
    """The tar archive of ``(name, data)`` pairs, sorted by name, with fixed metadata."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for name, data in sorted(members, key=lambda m: m[0]):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = FIXED_MTIME
            info.mode = FILE_MODE
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.type = tarfile.REGTYPE
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def write_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temp name unique to this run and a rename (atomic
    on POSIX). A failed write removes its temp file and raises
    :class:`~maskgen.errors.OutputError` naming ``path`` (``cannot write PATH: REASON``)."""
    path = Path(path)
    with replacing(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return path


def write_tar(path: str | os.PathLike, members: Iterable[tuple[str, bytes]]) -> int:
    """Write a reproducible tar atomically; returns its size in bytes."""
    data = tar_bytes(members)
    write_atomic(path, data)
    return len(data)
