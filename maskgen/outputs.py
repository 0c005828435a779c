"""Output folders maskgen owns: a marker written first, one run at a time, deletes by name only.

A command that writes into a folder (``build``, ``mask -o``, ``audit -o``, ``card``) claims it:

```python
from maskgen.outputs import claim
with claim(out, "build", mode="resume") as c:   # OutputError if not ours, or in use
    c.remove(["shards/train-000007.tar"])        # only named paths, never through a link
    tmp = c.tmp(out / "shards" / "train-000003.tar")  # a temp name no other run uses
```

- The marker ``.maskgen-output.json`` (tool, kind, created) is written before anything else,
  so a folder holding it was made by maskgen; a non-empty folder without it belongs to the
  user and is refused (resume and overwrite alike): maskgen never deletes or overwrites in it.
- The claim holds an exclusive, non-blocking ``fcntl.flock`` on ``.maskgen-output.lock`` for
  the whole run; a second run on the same folder stops at once with the first one's pid. The
  lock is released by the kernel when the process dies (``kill -9`` included), so a killed
  run never blocks the next. (``flock`` is local to one machine on some network file
  systems; a cluster build takes it on the driver's machine.)
- :func:`remove_owned` deletes only the paths it is given, relative to the folder, walking
  every component with ``O_NOFOLLOW``: a symlinked ``shards/`` is never entered, a link is
  never followed, nothing outside the folder is touched.
- Scans skip any folder holding the marker (:func:`is_owned`), so an output inside a source
  folder is never read back as input.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import stat
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

from maskgen.errors import MaskgenError, OutputError
from maskgen.fsio import atomic_open, atomic_path, tmp_path, write_atomic

MARKER = ".maskgen-output.json"
LOCK = ".maskgen-output.lock"
MODES = ("resume", "overwrite")
_MAX_MARKER = 64 * 1024  # a marker is a few hundred bytes; refuse to read anything big
_TMP_RE = re.compile(r"\.\d+-[0-9a-f]{8}\.tmp$")


def _read_marker(folder: Path) -> dict | None:
    """The marker's content when ``folder`` holds a regular-file marker written by maskgen."""
    p = folder / MARKER
    try:
        st = os.lstat(p)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode) or st.st_size > _MAX_MARKER:
        return None
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb") as f:
            data = json.loads(f.read(_MAX_MARKER))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("tool") == "maskgen" else None


def is_owned(path: str | os.PathLike) -> bool:
    """True when ``path`` is a folder maskgen made (it holds a valid marker)."""
    p = Path(path)
    try:
        if not stat.S_ISDIR(os.lstat(p).st_mode) and not p.is_dir():
            return False
    except OSError:
        return False
    return _read_marker(p) is not None


def unique_tmp(path: str | os.PathLike) -> Path:
    """A temp sibling of ``path`` whose name no other run, process or call uses:
    ``<name>.<pid>-<random>.tmp`` (:func:`maskgen.fsio.tmp_path`)."""
    return tmp_path(path)


def is_tmp_of(name: str, final: str) -> bool:
    """True when the file name ``name`` is a :func:`unique_tmp` name of ``final`` (of any run)."""
    return name.startswith(final + ".") and _TMP_RE.fullmatch(name[len(final) :]) is not None


def _safe_parts(relpath: str | os.PathLike) -> list[str]:
    s = os.fspath(relpath)
    if not s or os.path.isabs(s) or "\0" in s:
        raise ValueError(f"not a relative path inside the output folder: {s!r}")
    parts = [x for x in PurePosixPath(s.replace(os.sep, "/")).parts if x not in ("", ".")]
    if not parts or any(x == ".." for x in parts):
        raise ValueError(f"not a relative path inside the output folder: {s!r}")
    return parts


def remove_owned(out: str | os.PathLike, relpaths: Iterable[str | os.PathLike]) -> list[str]:
    """Delete the named paths inside the owned folder ``out``; returns those removed.

    Each path is relative to ``out`` (no ``..``). Every folder on the way is opened with
    ``O_NOFOLLOW``, so a symlinked folder is never entered (its targets survive); a named
    symlink is removed as a link, its target untouched; a named folder is removed only when
    empty; missing paths are skipped. Refuses (``OutputError``) a folder maskgen does not own.
    """
    out = Path(out)
    if _read_marker(out) is None:
        raise OutputError(f"{out} was not made by maskgen (no {MARKER}); nothing in it is deleted")
    removed: list[str] = []
    root = os.open(out, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for rel in relpaths:
            parts = _safe_parts(rel)
            if parts == [MARKER] or parts == [LOCK]:
                continue
            if _remove_at(root, parts):
                removed.append("/".join(parts))
    finally:
        os.close(root)
    return removed


def _remove_at(root: int, parts: list[str]) -> bool:
    fds: list[int] = []
    try:
        d = root
        for name in parts[:-1]:
            try:
                d = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=d)
            except OSError as exc:
                if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                    return False  # missing, a file, or a symlink: never walked through
                raise
            fds.append(d)
        last = parts[-1]
        try:
            st = os.stat(last, dir_fd=d, follow_symlinks=False)
        except FileNotFoundError:
            return False
        if stat.S_ISDIR(st.st_mode):
            try:
                os.rmdir(last, dir_fd=d)
            except OSError as exc:
                if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                    return False
                raise
        else:
            os.unlink(last, dir_fd=d)  # unlink never follows a link
        return True
    finally:
        for fd in reversed(fds):
            os.close(fd)


def _is_empty_dir(p: Path) -> bool:
    with os.scandir(p) as it:
        return next(it, None) is None


class OutputClaim:
    """A claimed output folder, locked until :meth:`release` (or the end of a ``with``)."""

    def __init__(self, out: Path, kind: str, mode: str, fd: int, marker: dict):
        self.out = out
        self.kind = kind
        self.mode = mode
        self.marker = marker
        self._fd: int | None = fd

    def remove(self, relpaths: Iterable[str | os.PathLike]) -> list[str]:
        """:func:`remove_owned` inside this folder."""
        return remove_owned(self.out, relpaths)

    @staticmethod
    def tmp(path: str | os.PathLike) -> Path:
        return unique_tmp(path)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            finally:
                os.close(self._fd)
                self._fd = None

    def __enter__(self) -> OutputClaim:
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self) -> None:  # a forgotten claim still lets go of its lock
        try:
            self.release()
        except Exception:
            pass


def claim(
    out: str | os.PathLike,
    kind: str,
    *,
    mode: str = "resume",
    accept: Iterable[str] = (),
) -> OutputClaim:
    """Claim ``out`` for a run of ``kind`` (``build``, ``mask``, ``audit``, ...).

    Creates the folder, writes the marker first, takes the exclusive lock. Refuses with an
    :class:`~maskgen.errors.OutputError`: a path that is not a folder; a non-empty folder
    without the marker (in either mode); a folder of another kind of output (unless listed
    in ``accept``); a folder another maskgen run holds. ``mode`` is the caller's: what it
    removes in ``overwrite`` mode it must still name (:meth:`OutputClaim.remove`).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    out = Path(out).expanduser()
    try:
        if out.exists() and not out.is_dir():
            raise OutputError(f"{out} exists and is not a folder; choose a new or empty folder")
        out.mkdir(parents=True, exist_ok=True)
        out = out.resolve()
        marker = _read_marker(out)
        if marker is None:
            if not _is_empty_dir(out):
                raise OutputError(
                    f"{out} is not empty and was not made by maskgen (no {MARKER}); "
                    "choose a new or empty folder (nothing in it was changed)"
                )
            marker = {"tool": "maskgen", "kind": kind, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            _write_marker(out, marker)
        elif marker.get("kind") != kind and marker.get("kind") not in set(accept):
            raise OutputError(f"{out} holds maskgen {marker.get('kind')} output; a {kind} needs its own folder")
        fd = os.open(out / LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OutputError:
        raise
    except OSError as exc:
        raise OutputError(f"cannot write {out}: {exc.strerror or exc}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = _read_pid(fd)
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise OutputError(f"{out} is in use by another maskgen run (pid {holder})") from None
        raise OutputError(f"cannot lock {out / LOCK}: {exc.strerror or exc}") from exc
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return OutputClaim(out, kind, mode, fd, marker)


def _read_pid(fd: int) -> str:
    try:
        txt = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        txt = ""
    return txt if txt.isdigit() else "unknown"


def _write_marker(out: Path, marker: dict) -> None:
    # a new temp name opened exclusively (never through a file or link someone else made)
    with atomic_open(out / MARKER, "w", fsync=False) as f:
        json.dump(marker, f, indent=1)
        f.write("\n")


@contextmanager
def replacing(path: str | os.PathLike, hint: str = "rerun to resume") -> Iterator[Path]:
    """Write a file under a temp name, then rename it onto ``path`` (atomic on POSIX)::

        with replacing(out / "manifest.parquet") as tmp:
            pq.write_table(table, tmp)

    The temp name is unique to this run (:func:`unique_tmp`). Any ``OSError`` (disk full,
    read-only, permission) removes the temp file and becomes one :class:`OutputError` line
    naming ``path``; readers never see a half-written file under the final name.
    """
    path = Path(path)
    try:
        with atomic_path(path, fsync=False) as tmp:
            yield tmp
    except OSError as exc:
        if isinstance(exc, MaskgenError):
            raise
        raise write_error(path, exc, hint) from exc


def write_file(path: str | os.PathLike, data: bytes | Iterable[bytes], hint: str = "rerun to resume") -> Path:
    """Write ``data`` (bytes, or blocks of bytes written as they come) to ``path`` whole or
    not at all, flushed to disk (:func:`maskgen.fsio.write_atomic`); a failed write removes its
    temp file and becomes one :class:`~maskgen.errors.OutputError` line naming ``path``
    (``cannot write PATH: REASON``)."""
    try:
        if isinstance(data, (bytes, bytearray, memoryview)):
            return write_atomic(path, data)
        with atomic_open(path, "wb", fsync=True) as f:
            for block in data:
                f.write(block)
        return Path(path)
    except OSError as exc:
        if isinstance(exc, MaskgenError):
            raise
        raise write_error(path, exc, hint) from exc


def write_error(path: str | os.PathLike, exc: OSError, hint: str = "rerun to resume") -> OutputError:
    """The one-line error of a failed write: ``cannot write PATH: REASON (hint)``."""
    reason = exc.strerror or str(exc)
    return OutputError(f"cannot write {path}: {reason}" + (f" ({hint})" if hint else ""))
