"""``recordio:PATH`` (also ``rec:``, a path ending in ``.rec``, or a folder holding
``train.rec``): insightface RecordIO, scanned from record headers only.

With a ``.idx`` the scan reads each record's header at its offset (never the image) and the
units are byte ranges of the ``.idx``; without one, a single unit walks the file header to
header, seeking past payloads and resyncing after a broken record. Every record gets a row:
a broken one (see :mod:`maskgen.datasets.recordio` for the reasons) has no identity and its
reason, and never costs its neighbours. Identities are the integer labels zero-padded to the
digits of the largest label: from insightface's header record (number of identities) when
there is one, else from a first pass over the labels.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from maskgen.datasets import recordio as R
from maskgen.datasets.sources.base import (
    NO_IDENTITY,
    ReadError,
    RowBuffer,
    Source,
    SourceNotFound,
    fs_path,
    open_regular,
    register,
)

UNIT_IDX_BYTES = 1 << 20  # .idx bytes per scan unit (~65 k records)


@dataclass(frozen=True)
class RecUnit:
    """Scan work: the ``.idx`` lines starting in ``[start, end)`` (``start`` -1: walk the
    ``.rec`` itself); image records are ``first <= index < end_index`` (``end_index`` None:
    every record); identities are padded to ``width`` digits."""

    start: int
    end: int
    first: int
    end_index: int | None
    width: int


@register
@dataclass(eq=False)
class RecordIOSource(Source):
    kind = "recordio"
    prefixes = ("recordio", "rec")
    detect_order = 10

    rec: str = "train.rec"  # file name inside root
    idx: str | None = "train.idx"

    @classmethod
    def from_spec(cls, rest, *, identity_depth=1, data_home=None):
        p = Path(rest).expanduser()
        if p.is_dir():
            p = p / "train.rec"
        if not p.exists():  # a FIFO or device named .rec gets "not a regular file" at the scan
            raise SourceNotFound(f"RecordIO file {p} does not exist")
        p = p.resolve()
        idx = p.with_suffix(".idx")
        return cls(p.parent, rec=p.name, idx=idx.name if idx.is_file() else None)

    @classmethod
    def detect(cls, path: str) -> bool:
        p = os.path.expanduser(path)
        return path.endswith(".rec") or (os.path.isdir(p) and os.path.isfile(os.path.join(p, "train.rec")))

    def describe(self) -> str:
        return f"{self.kind}:{self.root.name}/{self.rec}"

    def relative_path(self, path, member=None, offset=None) -> str:
        return f"{path}@{offset}"

    # -- scan
    def _open(self) -> tuple[int, os.stat_result]:
        return open_regular(fs_path(self.root, self.rec), self.rec)

    def scan_units(self) -> list[RecUnit]:
        fd, st = self._open()
        try:
            first, end_index, n_ids = 0, None, None
            h0_off = 0
            if self.idx:
                line = next(((k, off) for k, off, _ in R.iter_idx(self.root / self.idx) if k is not None), None)
                h0_off = line[1] if line is not None and line[0] == 0 else None
            if h0_off is not None and st.st_size:
                try:
                    rng = R.insightface_range(R.read_head(fd, h0_off, st.st_size, self.max_bytes)[0])
                except R.RecordError:
                    rng = None
                if rng is not None:
                    first, end_index, n_ids = 1, rng[0], rng[1]
        finally:
            os.close(fd)
        if st.st_size == 0:
            self.note("empty .rec file: no records")
        if n_ids is not None:
            width = len(str(max(n_ids - 1, 0)))
        else:  # no insightface header: the widest label, from one pass over the headers
            width = 1
            for u in self._units(first, end_index, 1):
                for _, _, label, _, _ in self._records(u):
                    if label is not None:
                        width = max(width, len(str(label)))
        return self._units(first, end_index, width)

    def _units(self, first: int, end_index: int | None, width: int) -> list[RecUnit]:
        if not self.idx:
            return [RecUnit(-1, -1, first, end_index, width)]
        size = os.stat(self.root / self.idx).st_size
        return [RecUnit(a, min(a + UNIT_IDX_BYTES, size), first, end_index, width) for a in range(0, max(size, 1), UNIT_IDX_BYTES)]

    def _records(self, unit: RecUnit) -> Iterator[tuple[int | None, int | None, int | None, str | None, int | None]]:
        """``(offset, length, label, reason, idx line position)`` of the unit's records."""
        fd, st = self._open()
        try:
            size = st.st_size
            if unit.start < 0:
                index = -1
                for off, h, length, reason in R.walk_records(fd, size, self.max_bytes):
                    index += 1  # a broken stretch counts as one record: the common case
                    if reason is None and not _is_image(index, unit):
                        continue
                    yield from _record_row(off, h, length, reason, None)
                return
            for index, off, pos in R.iter_idx(self.root / self.idx, unit.start, unit.end):
                if index is None:
                    yield None, None, None, R.BAD_IDX_LINE, pos
                    continue
                if not _is_image(index, unit):
                    continue
                quick = R.quick_head(fd, off, size, self.max_bytes)
                if quick is not None:
                    yield off, quick[0], quick[1], None, pos
                    continue
                try:
                    h, length = R.read_head(fd, off, size, self.max_bytes)
                except R.RecordError as exc:
                    yield off, None, None, exc.reason, pos
                    continue
                yield from _record_row(off, h, length, None, pos)
        finally:
            os.close(fd)

    def scan_unit(self, unit: RecUnit) -> Iterator[pa.RecordBatch]:
        st = os.stat(fs_path(self.root, self.rec))
        full = self.root / self.rec
        buf = RowBuffer(self.kind)
        for off, length, label, reason, pos in self._records(unit):
            place = off if off is not None else f"idx-line@{pos}"
            b = buf.add(
                f"{label:0{unit.width}d}" if reason is None else NO_IDENTITY,
                self.rec,
                offset=off,
                nbytes=length,
                source_label=label,
                cache_key=f"{full}|{place}|{st.st_size}|{st.st_mtime_ns}",
                drop=reason,
            )
            if b is not None:
                yield b
        last = buf.flush()
        if last is not None:
            yield last

    # -- read
    def read_bytes(self, path, offset=None, nbytes=None, member=None) -> bytes:
        fd, size = self._reader(path)
        try:
            rec = R.read_record_fd(fd, int(offset), size, self.max_bytes)
            return R.unpack_image(rec, offset)
        except R.RecordError as exc:
            raise ReadError(exc.reason, f"{path}@{offset}") from exc

    def _reader(self, path: str) -> tuple[int, int]:
        """An open descriptor of ``path`` and its size, kept for the life of this object: a
        task reads thousands of records of one file (an open, fstat and close per record was
        a tenth of a pass-through sample's time). A read error is never kept: the next read
        tries again. The descriptor closes with the object and never travels with it."""
        fds = self.__dict__.setdefault("_fds", {})
        got = fds.get(path)
        if got is None:
            fd, st = open_regular(fs_path(self.root, path), path)
            got = fds[path] = (fd, st.st_size)
            weakref.finalize(self, os.close, fd)
        return got

    def __getstate__(self) -> dict:
        return {k: v for k, v in super().__getstate__().items() if k != "_fds"}


def _is_image(index: int, unit: RecUnit) -> bool:
    return unit.end_index is None or unit.first <= index < unit.end_index


def _record_row(off, h, length, reason, pos):
    if reason is not None:
        yield off, None, None, reason, pos
        return
    try:
        label = R.header_label(h)
    except R.RecordError:
        yield off, None, None, R.BAD_HEADER, pos
        return
    yield off, length, label, None, pos
