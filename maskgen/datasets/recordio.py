"""insightface RecordIO (``train.rec`` + ``train.idx``) in pure Python, no MXNet.

The MS1M / Glint360K / WebFace releases ship their images in MXNet's RecordIO container:
each record is ``uint32 magic 0xced7230a``, ``uint32 lrecord`` (upper 3 bits: continuation
flag, lower 29 bits: length), the payload, then zero padding to 4 bytes. A payload starts with
an ``IRHeader`` (``struct 'IfQQ'``: flag, label, id, id2); when ``flag > 0`` the label is an
array of ``flag`` float32 values that follows the header; the encoded image comes after.
The ``.idx`` text file maps record index to byte offset (``idx\\toffset`` per line).
insightface's record 0 is a header whose label holds ``(first identity record, end)``: records
``1 .. label[0]-1`` are images, ``label[0] .. label[1]-1`` one record per identity with the
image index range ``(start, end)`` as its label.
"""

from __future__ import annotations

import math
import os
import stat
import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from maskgen.fsio import atomic_path

MAGIC = 0xCED7230A
_IR_FORMAT = "IfQQ"
_IR_SIZE = struct.calcsize(_IR_FORMAT)  # 24
_LEN_MASK = (1 << 29) - 1


@dataclass(frozen=True)
class IRHeader:
    flag: int
    label: float | tuple[float, ...]
    id: int
    id2: int


def pack(header: IRHeader, payload: bytes) -> bytes:
    """An MXNet ``recordio.pack``: IRHeader (+ label array when ``flag > 0``) then payload."""
    if isinstance(header.label, (tuple, list)):
        labels = tuple(float(x) for x in header.label)
        head = struct.pack(_IR_FORMAT, len(labels), 0.0, header.id, header.id2)
        return head + struct.pack(f"<{len(labels)}f", *labels) + payload
    return struct.pack(_IR_FORMAT, 0, float(header.label), header.id, header.id2) + payload


def unpack(record: bytes) -> tuple[IRHeader, bytes]:
    """Split a record payload into its IRHeader and the bytes after it (an encoded image)."""
    if len(record) < _IR_SIZE:
        raise ValueError(f"record of {len(record)} bytes is shorter than an IRHeader")
    flag, label, id_, id2 = struct.unpack(_IR_FORMAT, record[:_IR_SIZE])
    body = record[_IR_SIZE:]
    if flag > 0:
        if len(body) < 4 * flag:
            raise ValueError("record label array runs past the record")
        labels = struct.unpack(f"<{flag}f", body[: 4 * flag])
        return IRHeader(flag, labels, id_, id2), body[4 * flag :]
    return IRHeader(flag, label, id_, id2), body


MAX_RECORD_BYTES = 64 * 1024 * 1024  # a record larger than this is refused before any read

# Per-record reasons (stable strings; the scan puts them in a row's reason).
BAD_MAGIC = "bad magic"
BAD_FLAG = "bad record flag"
BAD_LENGTH = "bad length"
TRUNCATED = "truncated record"
BAD_HEADER = "bad header"
BAD_IDX_LINE = "malformed idx line"
IDX_OUT_OF_RANGE = "idx offset out of range"

_MAGIC_B = struct.pack("<I", MAGIC)
_HEAD_READ = 8 + _IR_SIZE + 4 * 8  # one read covers the IRHeader and a short label array


class RecordError(ValueError):
    """A record that cannot be read; ``reason`` is one of the reason strings above."""

    def __init__(self, reason: str, offset: int | None):
        self.reason = reason
        self.offset = offset
        super().__init__(f"{reason} at offset {offset}" if offset is not None else reason)


def _pad(length: int) -> int:
    return (4 - length % 4) % 4


def _read_parts(pread, offset: int, file_size: int, max_bytes: int) -> bytes:
    """The payload of the (possibly multi-part) record at ``offset``; every length is checked
    against the file size and ``max_bytes`` before it is read."""
    if offset < 0 or offset >= file_size:
        raise RecordError(IDX_OUT_OF_RANGE, offset)
    parts: list[bytes] = []
    total = 0
    pos = offset
    first = True
    while True:
        head = pread(8, pos)
        if len(head) < 8:
            raise RecordError(TRUNCATED, offset)
        magic, lrec = struct.unpack("<II", head)
        if magic != MAGIC:
            raise RecordError(BAD_MAGIC, offset)
        cflag, length = lrec >> 29, lrec & _LEN_MASK
        if (cflag in (0, 1)) != first:
            raise RecordError(BAD_FLAG, offset)
        total += length
        if total > max_bytes:
            raise RecordError(BAD_LENGTH, offset)
        if pos + 8 + length > file_size:
            raise RecordError(TRUNCATED, offset)
        data = pread(length, pos + 8)
        if len(data) < length:
            raise RecordError(TRUNCATED, offset)
        parts.append(data)
        pos += 8 + length + _pad(length)
        if cflag in (0, 3):  # whole record, or last part of a split one
            break
        # MXNet drops the magic word between parts of a split record; restore it.
        parts.append(_MAGIC_B)
        first = False
    return b"".join(parts)


def _file_pread(f):
    def pread(n: int, off: int) -> bytes:
        f.seek(off)
        return f.read(n)

    return pread


def _fd_pread(fd: int):
    return lambda n, off: os.pread(fd, n, off)


def read_record_at(f, offset: int, max_bytes: int = MAX_RECORD_BYTES) -> bytes:
    """The payload of the (possibly multi-part) record starting at byte ``offset`` of the
    open binary file ``f`` (raises :class:`RecordError`)."""
    size = f.seek(0, os.SEEK_END)
    return _read_parts(_file_pread(f), offset, size, max_bytes)


def read_record_fd(fd: int, offset: int, file_size: int, max_bytes: int = MAX_RECORD_BYTES) -> bytes:
    """:func:`read_record_at` on a file descriptor (``os.pread``: no shared file position)."""
    return _read_parts(_fd_pread(fd), offset, file_size, max_bytes)


def read_head(fd: int, offset: int, file_size: int, max_bytes: int = MAX_RECORD_BYTES) -> tuple[IRHeader, int]:
    """The IRHeader of the record at ``offset`` and its (first part's) payload length, reading
    only the header: a scan of a multi-GB ``.rec`` must not read every image. Lengths and
    the label array are checked against the file before anything is read."""
    h, length, _ = _head(fd, offset, file_size, max_bytes)
    return h, length


def _head(fd: int, offset: int, file_size: int, max_bytes: int) -> tuple[IRHeader, int, int]:
    """:func:`read_head` plus the record's continuation flag (0: in one part, 1: split)."""
    if offset < 0 or offset >= file_size:
        raise RecordError(IDX_OUT_OF_RANGE, offset)
    head = os.pread(fd, _HEAD_READ, offset)
    if len(head) < 8:
        raise RecordError(TRUNCATED, offset)
    magic, lrec = struct.unpack_from("<II", head)
    if magic != MAGIC:
        raise RecordError(BAD_MAGIC, offset)
    cflag, length = lrec >> 29, lrec & _LEN_MASK
    if cflag not in (0, 1):
        raise RecordError(BAD_FLAG, offset)
    if length > max_bytes:
        raise RecordError(BAD_LENGTH, offset)
    if offset + 8 + length > file_size:
        raise RecordError(TRUNCATED, offset)
    if cflag == 1:  # a split record (rare): read it whole, the split may cut the header
        return unpack_header(read_record_fd(fd, offset, file_size, max_bytes), offset), length, cflag
    if length < _IR_SIZE:
        raise RecordError(BAD_HEADER, offset)
    flag = struct.unpack_from("<I", head, 8)[0]
    if flag > 0:
        if 4 * flag > length - _IR_SIZE:
            raise RecordError(BAD_HEADER, offset)
        need = 8 + _IR_SIZE + 4 * flag
        if need > len(head):
            head = os.pread(fd, need, offset)
    return unpack_header(head[8:], offset), length, cflag


_PLAIN = struct.Struct("<IIIfQQ")  # magic, lrecord, then an IRHeader without a label array


def quick_head(fd: int, offset: int, file_size: int, max_bytes: int = MAX_RECORD_BYTES) -> tuple[int, int] | None:
    """``(length, label)`` of the common image record (one part, ``flag`` 0, a finite label)
    from one 32-byte read; None for anything else, which :func:`read_head` then examines."""
    if offset < 0 or offset + _PLAIN.size > file_size:
        return None
    b = os.pread(fd, _PLAIN.size, offset)
    if len(b) < _PLAIN.size:
        return None
    magic, lrec, flag, label, _, _ = _PLAIN.unpack(b)
    length = lrec & _LEN_MASK
    if (magic != MAGIC or lrec >> 29 or flag or not _IR_SIZE <= length <= max_bytes
            or offset + 8 + length > file_size or not math.isfinite(label) or abs(label) >= 2**63):
        return None
    return length, int(label)


def unpack_header(record: bytes, offset: int | None = None) -> IRHeader:
    """The IRHeader at the start of a record payload (raises :class:`RecordError`)."""
    try:
        return unpack(record)[0]
    except (ValueError, struct.error) as exc:
        raise RecordError(BAD_HEADER, offset) from exc


def read_header_at(f, offset: int) -> tuple[IRHeader, int]:
    """:func:`read_head` for an open binary file."""
    return read_head(f.fileno(), offset, os.fstat(f.fileno()).st_size)


def header_label(h: IRHeader) -> int:
    """The integer class label of an image record (first value of a label array)."""
    v = h.label[0] if isinstance(h.label, tuple) else h.label
    if not math.isfinite(v) or abs(v) >= 2**63:
        raise RecordError(BAD_HEADER, None)
    return int(v)


def insightface_range(h0: IRHeader) -> tuple[int, int] | None:
    """``(end of the image records, number of identities)`` from insightface's header record
    0 (label ``(first identity record, end)``), else None."""
    if h0.flag > 0 and isinstance(h0.label, tuple) and len(h0.label) >= 2:
        a, b = h0.label[0], h0.label[1]
        if math.isfinite(a) and math.isfinite(b) and 0 < a < 2**53 and a <= b < 2**53:
            return int(a), int(b) - int(a)
    return None


def iter_idx(idx_path: str | os.PathLike, start: int = 0, end: int | None = None) -> Iterator[tuple[int | None, int | None, int]]:
    """``(record index, byte offset, line position)`` of the ``.idx`` lines that start in the
    byte range ``[start, end)``; a malformed line gives ``(None, None, pos)``, blank lines
    nothing. Ranges that tile the file give every line exactly once (scan units)."""
    from maskgen.datasets.sources.base import iter_lines

    for pos, line in iter_lines(idx_path, start, end):
        parts = line.split() if line is not None else [b"", b"", b""]
        if len(parts) == 2:
            try:
                yield int(parts[0]), int(parts[1]), pos
            except ValueError:
                yield None, None, pos
        elif parts:
            yield None, None, pos


def read_idx(idx_path: str | os.PathLike) -> dict[int, int]:
    """``.idx`` file -> {record index: byte offset} (malformed lines left out)."""
    return {k: v for k, v, _ in iter_idx(idx_path) if k is not None}


def _resync(fd: int, pos: int, file_size: int) -> int | None:
    """The next 4-byte-aligned record start (magic + a first-part flag) at or after ``pos``.
    dmlc's writer escapes the magic word inside payloads, so an aligned magic is a header."""
    pos += _pad(pos)
    chunk = 1 << 20
    while pos + 8 <= file_size:
        buf = os.pread(fd, chunk + 8, pos)
        i = buf.find(_MAGIC_B)
        while i >= 0:
            if i % 4 == 0 and i + 8 <= len(buf):
                if (struct.unpack_from("<I", buf, i + 4)[0] >> 29) in (0, 1):
                    return pos + i
            i = buf.find(_MAGIC_B, i + 1)
        pos += chunk
    return None


def walk_records(fd: int, file_size: int, max_bytes: int = MAX_RECORD_BYTES) -> Iterator[tuple[int, IRHeader | None, int | None, str | None]]:
    """Every record of a ``.rec`` without its ``.idx``, by one sequential pass over headers
    (payloads are skipped, not read): ``(offset, header, length, None)`` for a record,
    ``(offset, None, None, reason)`` for a broken one. After a broken header the walk resyncs
    to the next record start, so one bad record never hides the ones after it."""
    off = 0
    while off < file_size:
        try:
            h, length, cflag = _head(fd, off, file_size, max_bytes)
        except RecordError as exc:
            if exc.reason == BAD_HEADER:  # framing is fine: skip just this record
                nxt = _record_end(fd, off, file_size)
                yield off, None, None, BAD_HEADER
                if nxt is None:
                    return
                off = nxt
                continue
            nxt = _resync(fd, off + 4, file_size)
            reason = BAD_LENGTH if exc.reason == TRUNCATED and nxt is not None else exc.reason
            yield off, None, None, reason
            if nxt is None:
                return
            off = nxt
            continue
        # a whole record ends after its padded payload; a split one is followed part by part
        nxt = off + 8 + length + _pad(length) if cflag == 0 else _record_end(fd, off, file_size)
        if nxt is None:  # a split record whose later parts are broken
            yield off, None, None, TRUNCATED
            nxt = _resync(fd, off + 4, file_size)
            if nxt is None:
                return
            off = nxt
            continue
        yield off, h, length, None
        off = nxt


def _record_end(fd: int, off: int, file_size: int) -> int | None:
    """The offset after the record (all its parts) at ``off``; None when a part is broken."""
    while True:
        head = os.pread(fd, 8, off)
        if len(head) < 8:
            return None
        magic, lrec = struct.unpack("<II", head)
        cflag, length = lrec >> 29, lrec & _LEN_MASK
        if magic != MAGIC or off + 8 + length > file_size:
            return None
        off += 8 + length + _pad(length)
        if cflag in (0, 3):
            return off


def scan_offsets(rec_path: str | os.PathLike) -> Iterator[int]:
    """Start offsets of the readable records, by walking the file (a ``.rec`` without
    its ``.idx``); broken stretches are skipped."""
    fd = os.open(rec_path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        for off, _h, _, reason in walk_records(fd, size):
            if reason is None:
                yield off
    finally:
        os.close(fd)


@dataclass(frozen=True)
class RecordEntry:
    """One image record: where it is and which identity it belongs to."""

    index: int
    offset: int
    label: int
    length: int  # payload bytes of the record (first part when split)


class RecordIOReader:
    """Random-access reader of an insightface ``.rec`` (uses the ``.idx`` when present)."""

    def __init__(self, rec_path: str | os.PathLike, idx_path: str | os.PathLike | None = None):
        self.rec_path = Path(rec_path)
        idx = Path(idx_path) if idx_path else self.rec_path.with_suffix(".idx")
        if idx.is_file():
            self.offsets = read_idx(idx)
        else:
            self.offsets = dict(enumerate(scan_offsets(self.rec_path)))
        self._f = open(self.rec_path, "rb")

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> RecordIOReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def read(self, index: int) -> tuple[IRHeader, bytes]:
        return unpack(read_record_at(self._f, self.offsets[index]))

    def entries(self) -> Iterator[RecordEntry]:
        """The image records. With an insightface header (record 0, ``flag > 0``) only records
        ``1 .. label[0]-1`` are images; otherwise every record is. Unreadable records are
        left out (the source scan gives them rows with reasons)."""
        indices = sorted(self.offsets)
        if not indices:
            return
        fd = self._f.fileno()
        size = os.fstat(fd).st_size
        if indices[0] == 0:
            try:
                rng = insightface_range(read_head(fd, self.offsets[0], size)[0])
            except RecordError:
                rng = None
            if rng is not None:
                indices = [i for i in indices if 1 <= i < rng[0]]
        for i in indices:
            try:
                h, length = read_head(fd, self.offsets[i], size)
                label = header_label(h)
            except RecordError:
                continue
            yield RecordEntry(i, self.offsets[i], label, length)


def image_bytes_at(rec_path: str | os.PathLike, offset: int, max_bytes: int = MAX_RECORD_BYTES) -> bytes:
    """The encoded image of the record at ``offset`` (raises :class:`RecordError`)."""
    with open(rec_path, "rb") as f:
        return unpack_image(read_record_at(f, offset, max_bytes), offset)


def unpack_image(record: bytes, offset: int | None = None) -> bytes:
    """The encoded image after a record's IRHeader (raises :class:`RecordError`)."""
    try:
        return unpack(record)[1]
    except (ValueError, struct.error) as exc:
        raise RecordError(BAD_HEADER, offset) from exc


def encode_record(payload: bytes) -> bytes:
    """Frame one payload as dmlc's ``RecordIOWriter`` does: a 4-byte-aligned occurrence of the
    magic word inside the payload splits the record into parts (flags 1, 2, 3), the magic
    itself dropped, so a reader that resyncs on the magic never lands mid-record."""
    n = len(payload)
    if n > _LEN_MASK:
        raise ValueError("record too large for RecordIO (2^29 bytes)")
    splits = []
    i = payload.find(_MAGIC_B)
    while i >= 0:  # bytes.find runs in C: no Python loop over the words of an image
        if i % 4 == 0:
            splits.append(i)
            i = payload.find(_MAGIC_B, i + 4)
        else:
            i = payload.find(_MAGIC_B, i + 1)
    if not splits:
        return struct.pack("<II", MAGIC, n) + payload + b"\0" * _pad(n)
    out: list[bytes] = []
    dptr = 0
    for i in splits:
        out.append(struct.pack("<II", MAGIC, ((1 if dptr == 0 else 2) << 29) | (i - dptr)))
        out.append(payload[dptr:i])
        dptr = i + 4
    rest = n - dptr
    out.append(struct.pack("<II", MAGIC, (3 << 29) | rest))
    out.append(payload[dptr:])
    out.append(b"\0" * _pad(rest))
    return b"".join(out)


def write_recordio(
    items: Iterable[tuple[int, bytes]], rec_path: str | os.PathLike, idx_path: str | os.PathLike | None = None
) -> Path:
    """Write ``(label, encoded image)`` pairs as an insightface-style ``.rec`` + ``.idx``.

    Images must come grouped by label. Record 0 is the insightface header, then the images,
    then one record per identity holding its image index range, as in the public releases.
    ``items`` is consumed as a stream (a million images are never held at once): the header,
    whose counts are known only at the end, is written last over a same-sized placeholder.
    Both files appear under their names only when complete.
    """
    rec_path = Path(rec_path)
    idx_path = Path(idx_path) if idx_path else rec_path.with_suffix(".idx")
    placeholder = encode_record(pack(IRHeader(2, (0.0, 0.0), 0, 0), b""))
    ranges: dict[int, list[int]] = {}  # label -> [first, end) image record index
    # the .idx is renamed first, then the .rec: a .rec under its name always has its index
    with atomic_path(rec_path, fsync=False) as tmp, atomic_path(idx_path, fsync=False) as idx_tmp:
        with open(tmp, "wb", buffering=1 << 22) as f, open(idx_tmp, "w", buffering=1 << 20) as fi:
            f.write(placeholder)
            fi.write("0\t0\n")
            pos = len(placeholder)
            i = 0
            last = None
            for i, (label, img) in enumerate(items, start=1):
                label = int(label)
                if label != last:
                    if label in ranges:
                        raise ValueError(f"images must come grouped by label: label {label} appears again after {last}")
                    ranges[label] = [i, i + 1]
                    last = label
                else:
                    ranges[label][1] = i + 1
                rec = encode_record(pack(IRHeader(0, float(label), i, 0), img))
                fi.write(f"{i}\t{pos}\n")
                f.write(rec)
                pos += len(rec)
            first_id = i + 1
            for j, (a, b) in enumerate(ranges.values()):
                rec = encode_record(pack(IRHeader(2, (float(a), float(b)), 0, 0), b""))
                fi.write(f"{first_id + j}\t{pos}\n")
                f.write(rec)
                pos += len(rec)
            header = encode_record(pack(IRHeader(2, (float(first_id), float(first_id + len(ranges))), 0, 0), b""))
            if len(header) != len(placeholder):  # counts are positive: never framed differently
                raise AssertionError("RecordIO header changed size")
            f.seek(0)
            f.write(header)
    return rec_path


def rebuild_idx(rec_path: str | os.PathLike, idx_path: str | os.PathLike | None = None) -> Path:
    """Write the ``.idx`` of a ``.rec`` that has none, from one walk over its headers, so that
    its scan can be split into units. A broken stretch gets a line at its start (the scan then
    gives it its row and reason). Never replaces an existing file."""
    rec_path = Path(rec_path)
    idx_path = Path(idx_path) if idx_path else rec_path.with_suffix(".idx")
    if idx_path.exists():
        raise FileExistsError(f"{idx_path} exists; not replaced")
    fd = os.open(rec_path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError(f"{rec_path} is not a regular file")
        size = os.fstat(fd).st_size
        # replace=False: fails rather than replace a file made meanwhile
        with atomic_path(idx_path, fsync=False, replace=False) as tmp, open(tmp, "w", buffering=1 << 20) as f:
            for i, (off, _h, _, _reason) in enumerate(walk_records(fd, size)):
                f.write(f"{i}\t{off}\n")  # broken stretches too: the scan gives them their rows
    finally:
        os.close(fd)
    return idx_path


def repeat_as_new_identities(items: Sequence[tuple[int, bytes]], n: int) -> Iterator[tuple[int, bytes]]:
    """``n`` records made from ``items`` (grouped by label) repeated, each repetition as new
    identities (labels shifted past the last one): a large test ``.rec`` from a small set of
    real crops, e.g. ``write_recordio(repeat_as_new_identities(lfw_crops, 1_000_000), path)``."""
    if not items:
        raise ValueError("no items to repeat")
    span = max(int(label) for label, _ in items) + 1
    k = 0
    rep = 0
    while True:
        for label, img in items:
            if k >= n:
                return
            yield int(label) + rep * span, img
            k += 1
        rep += 1
