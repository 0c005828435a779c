"""Files written whole or not at all: the one way maskgen replaces a file.

A reader (a resumed build, a trainer, another process) either sees the old file or the new one,
never a truncated mix: data goes to a temporary file in the same folder, is flushed to disk,
and is renamed over the target (``os.replace`` is atomic on POSIX within one file system).

The temporary name is unique per call (``<name>.<pid>-<random>.tmp``), so two processes writing
the same file (a model cache shared by parallel runs) never write into each other's
temporary file; the last rename wins with a complete file. Every temporary name ends in
``.tmp``, so a clean-up after a killed run can find them with ``<name>.*.tmp``.

Use :func:`write_atomic` for bytes or text in memory, :func:`atomic_open` for a file object
(``json.dump``, ``yaml.safe_dump``), and :func:`atomic_path` for libraries that want a path to
write to (``pyarrow.parquet.write_table``, ``torch.save``, ``cv2.imwrite``).
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

TMP_SUFFIX = ".tmp"


def tmp_path(path: str | os.PathLike, *, keep_suffix: bool = False) -> Path:
    """A temporary name beside ``path``, unique to this process and call.

    ``keep_suffix``: end the name with the target's suffix too (``x.<tag>.tmp.jpg``), for
    writers that choose the format from the extension (``cv2.imwrite``)."""
    path = Path(path)
    tag = f"{os.getpid()}-{secrets.token_hex(4)}"
    if keep_suffix and path.suffix:
        return path.with_name(f"{path.stem}.{tag}{TMP_SUFFIX}{path.suffix}")
    return path.with_name(f"{path.name}.{tag}{TMP_SUFFIX}")


def tmp_glob(path: str | os.PathLike) -> str:
    """The glob pattern (relative to the folder) of the temporary files :func:`tmp_path`
    makes for ``path`` without ``keep_suffix``."""
    return f"{Path(path).name}.*{TMP_SUFFIX}"


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (a crash right after it keeps the new name)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some file systems do not open folders; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, keep_suffix: bool = False, fsync: bool = True,
                replace: bool = True) -> Iterator[Path]:
    """Yield a temporary path to write; on success it is renamed to ``path``, on an error it
    is removed and ``path`` is left as it was.

    The caller's writer must close the file before the block ends (libraries that take a path
    do). ``fsync``: flush the data and the rename to disk (off only for scratch files).
    ``replace=False``: never replace a file (a user's, or one made meanwhile by another
    process): the complete file is hard-linked to ``path``, which raises ``FileExistsError``
    when ``path`` exists by then."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path(path, keep_suffix=keep_suffix)
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"{tmp}: the writer did not create the temporary file")
        if fsync:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # atomic and exclusive: fails if path exists
            tmp.unlink()
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    if fsync:
        _fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", *, encoding: str | None = None,
                fsync: bool = True) -> Iterator[IO[Any]]:
    """Open a temporary file for writing (``"wb"`` or ``"w"``); it replaces ``path`` when the
    block ends without an error."""
    if mode not in ("w", "wb", "wt"):
        raise ValueError(f"atomic_open writes a whole new file: mode 'w' or 'wb', not {mode!r}")
    if "b" not in mode and encoding is None:
        encoding = "utf-8"
    with atomic_path(path, fsync=False) as tmp:
        # "x": the temporary name is new; never write through a file someone else made
        with open(tmp, mode.replace("w", "x"), encoding=encoding) as f:
            yield f
            if fsync:
                f.flush()
                os.fsync(f.fileno())
    if fsync:
        _fsync_dir(Path(path).parent)


def write_atomic(path: str | os.PathLike, data: bytes | str, *, encoding: str = "utf-8",
                 fsync: bool = True) -> Path:
    """Write ``data`` (bytes, or text as ``encoding``) to ``path`` atomically; returns the path."""
    raw = data.encode(encoding) if isinstance(data, str) else bytes(data)
    with atomic_open(path, "wb", fsync=fsync) as f:
        f.write(raw)
    return Path(path)
