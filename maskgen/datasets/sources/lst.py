"""``lst:PATH`` (or a path ending in ``.lst``): an MXNet / insightface image list, the input of
``im2rec``: one ``index<TAB>label[<TAB>label...]<TAB>path`` line per image, ``path`` relative
to the folder of the list. The identity is the first label as an integer, zero-padded to the
digits of the largest one (as for RecordIO). Units are 1 MiB byte ranges of the list.

This kind is one file plus its test (``tests/test_source_lst.py``): the worked example of
adding a source (see docs/sources.md).
"""

from __future__ import annotations

import math
import os
import stat as stat_mod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from maskgen.datasets.sources.base import (
    NO_IDENTITY,
    NOT_REGULAR,
    TOO_LARGE,
    ReadError,
    RowBuffer,
    Source,
    SourceNotFound,
    decode_name,
    fs_path,
    iter_lines,
    read_file_range,
    register,
)

UNIT_BYTES = 1 << 20
BAD_LINE = "malformed lst line"


@dataclass(frozen=True)
class LstUnit:
    """The list lines starting in ``[start, end)``; identities padded to ``width`` digits."""

    start: int
    end: int
    width: int


def parse_line(line: bytes) -> tuple[int, str] | None:
    """``(label, path)`` of one list line, or None when it is malformed."""
    fields = line.rstrip(b"\r\n").split(b"\t")
    if len(fields) < 3 or not fields[-1]:
        return None
    try:
        int(fields[0])
        label = float(fields[1])
    except ValueError:
        return None
    if not math.isfinite(label) or abs(label) >= 2**63:
        return None
    return int(label), decode_name(fields[-1])[0]


@register
@dataclass(eq=False)
class LstSource(Source):
    kind = "lst"
    prefixes = ("lst",)
    detect_order = 25

    lst: str = "train.lst"  # file name inside root

    @classmethod
    def from_spec(cls, rest, *, identity_depth=1, data_home=None):
        p = Path(rest).expanduser()
        if not p.is_file():
            raise SourceNotFound(f"image list {p} does not exist")
        p = p.resolve()
        return cls(p.parent, lst=p.name)

    @classmethod
    def detect(cls, path: str) -> bool:
        return path.endswith(".lst")

    def describe(self) -> str:
        return f"{self.kind}:{self.root.name}/{self.lst}"

    def scan_units(self) -> list[LstUnit]:
        width = 1
        for _, line in iter_lines(self.root / self.lst):  # the widest label: one cheap text pass
            parsed = parse_line(line)
            if parsed is not None:
                width = max(width, len(str(parsed[0])))
        size = os.stat(self.root / self.lst).st_size
        return [LstUnit(a, min(a + UNIT_BYTES, size), width) for a in range(0, size, UNIT_BYTES)]

    def scan_unit(self, unit: LstUnit) -> Iterator[pa.RecordBatch]:
        buf = RowBuffer(self.kind)
        for pos, line in iter_lines(self.root / self.lst, unit.start, unit.end):
            if not line.strip():
                continue
            b = buf.add(**self._row(pos, parse_line(line), unit.width))
            if b is not None:
                yield b
        last = buf.flush()
        if last is not None:
            yield last

    def _row(self, pos: int, parsed: tuple[int, str] | None, width: int) -> dict:
        if parsed is None:
            return {"identity": NO_IDENTITY, "path": self.lst, "offset": pos,
                    "cache_key": f"{self.root}/{self.lst}|@{pos}", "drop": BAD_LINE}
        label, path = parsed
        row = {"identity": f"{label:0{width}d}", "path": path, "source_label": label}
        try:
            st = os.stat(fs_path(self.root, path))
        except ReadError as exc:  # a path that leaves the root
            return {**row, "cache_key": f"{self.root}/{path}|None|0", "drop": exc.reason}
        except OSError as exc:
            return {**row, "cache_key": f"{self.root}/{path}|None|0", "drop": f"unreadable: {exc.strerror or exc}"}
        drop = None
        if not stat_mod.S_ISREG(st.st_mode):
            drop = NOT_REGULAR
        elif st.st_size > self.max_bytes:
            drop = TOO_LARGE
        return {**row, "nbytes": st.st_size, "cache_key": f"{self.root}/{path}|{st.st_size}|{st.st_mtime_ns}", "drop": drop}

    def read_bytes(self, path, offset=None, nbytes=None, member=None) -> bytes:
        return read_file_range(fs_path(self.root, path), None, None, self.max_bytes, path)
