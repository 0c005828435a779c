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

import os
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

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


def read_record_at(f, offset: int) -> bytes:
    """The payload of the (possibly multi-part) record starting at byte ``offset``."""
    f.seek(offset)
    parts: list[bytes] = []
    while True:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(f"truncated record header at offset {offset}")
        magic, lrec = struct.unpack("<II", head)
        if magic != MAGIC:
            raise ValueError(f"bad RecordIO magic {magic:#x} at offset {offset}")
        cflag, length = lrec >> 29, lrec & _LEN_MASK
        data = f.read(length)
        if len(data) < length:
            raise ValueError(f"truncated record at offset {offset}")
        f.read((4 - length % 4) % 4)
        parts.append(data)
        if cflag in (0, 3):  # whole record, or last part of a split one
            break
        # MXNet drops the magic word between parts of a split record; restore it.
        parts.append(struct.pack("<I", MAGIC))
    return b"".join(parts)


def read_header_at(f, offset: int) -> tuple[IRHeader, int]:
    """The IRHeader of the record at ``offset`` and its payload length, reading only the header
    (a scan of a multi-GB ``.rec`` must not read every image)."""
    f.seek(offset)
    head = f.read(8 + _IR_SIZE)
    if len(head) < 8 + _IR_SIZE:
        raise ValueError(f"truncated record at offset {offset}")
    magic, lrec = struct.unpack("<II", head[:8])
    if magic != MAGIC:
        raise ValueError(f"bad RecordIO magic {magic:#x} at offset {offset}")
    flag, label, id_, id2 = struct.unpack(_IR_FORMAT, head[8:])
    if flag > 0:
        labels = struct.unpack(f"<{flag}f", f.read(4 * flag))
        return IRHeader(flag, labels, id_, id2), lrec & _LEN_MASK
    return IRHeader(flag, label, id_, id2), lrec & _LEN_MASK


def read_idx(idx_path: str | os.PathLike) -> dict[int, int]:
    """``.idx`` file -> {record index: byte offset}."""
    out: dict[int, int] = {}
    with open(idx_path) as f:
        for line in f:
            line = line.strip()
            if line:
                k, v = line.split("\t")
                out[int(k)] = int(v)
    return out


def scan_offsets(rec_path: str | os.PathLike) -> Iterator[int]:
    """Record start offsets by walking the file (for a ``.rec`` without its ``.idx``)."""
    with open(rec_path, "rb") as f:
        offset = 0
        start = None
        while True:
            f.seek(offset)
            head = f.read(8)
            if len(head) < 8:
                return
            magic, lrec = struct.unpack("<II", head)
            if magic != MAGIC:
                raise ValueError(f"bad RecordIO magic {magic:#x} at offset {offset}")
            cflag, length = lrec >> 29, lrec & _LEN_MASK
            if cflag in (0, 1):
                start = offset
            if cflag in (0, 3):
                yield start
            offset += 8 + length + (4 - length % 4) % 4


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
        ``1 .. label[0]-1`` are images; otherwise every record is."""
        indices = sorted(self.offsets)
        if not indices:
            return
        h0, _ = self.read(indices[0])
        if h0.flag > 0 and isinstance(h0.label, tuple) and indices[0] == 0:
            end = int(h0.label[0])
            indices = [i for i in indices if 1 <= i < end]
        for i in indices:
            h, length = read_header_at(self._f, self.offsets[i])
            label = h.label[0] if isinstance(h.label, tuple) else h.label
            yield RecordEntry(i, self.offsets[i], int(label), length)


def image_bytes_at(rec_path: str | os.PathLike, offset: int) -> bytes:
    """The encoded image of the record at ``offset`` (what a build worker needs)."""
    with open(rec_path, "rb") as f:
        _, img = unpack(read_record_at(f, offset))
    return img


def encode_record(payload: bytes) -> bytes:
    """Frame one payload as dmlc's ``RecordIOWriter`` does: a 4-byte-aligned occurrence of the
    magic word inside the payload splits the record into parts (flags 1, 2, 3), the magic
    itself dropped, so a reader that resyncs on the magic never lands mid-record."""
    magic = struct.pack("<I", MAGIC)
    out: list[bytes] = []
    n = len(payload)
    if n > _LEN_MASK:
        raise ValueError("record too large for RecordIO (2^29 bytes)")
    dptr = 0
    for i in range(0, n - n % 4, 4):
        if payload[i : i + 4] == magic:
            out.append(struct.pack("<II", MAGIC, ((1 if dptr == 0 else 2) << 29) | (i - dptr)))
            out.append(payload[dptr:i])
            dptr = i + 4
    rest = n - dptr
    out.append(struct.pack("<II", MAGIC, ((3 if dptr else 0) << 29) | rest))
    out.append(payload[dptr:])
    out.append(b"\0" * ((4 - rest % 4) % 4))
    return b"".join(out)


def write_recordio(
    items: Iterable[tuple[int, bytes]], rec_path: str | os.PathLike, idx_path: str | os.PathLike | None = None
) -> Path:
    """Write ``(label, encoded image)`` pairs as an insightface-style ``.rec`` + ``.idx``.

    Images must come grouped by label. Record 0 is the insightface header, then the images,
    then one record per identity holding its image index range, as in the public releases.
    """
    rec_path = Path(rec_path)
    idx_path = Path(idx_path) if idx_path else rec_path.with_suffix(".idx")
    items = list(items)
    n_img = len(items)
    ranges: dict[int, list[int]] = {}
    for i, (label, _) in enumerate(items, start=1):
        r = ranges.setdefault(int(label), [i, i + 1])
        r[1] = i + 1
    first_id = n_img + 1
    records: list[bytes] = [pack(IRHeader(2, (float(first_id), float(first_id + len(ranges))), 0, 0), b"")]
    records += [pack(IRHeader(0, float(label), i, 0), img) for i, (label, img) in enumerate(items, start=1)]
    records += [pack(IRHeader(2, (float(a), float(b)), 0, 0), b"") for a, b in ranges.values()]
    rec_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = rec_path.with_name(rec_path.name + ".tmp")
    lines = []
    with open(tmp, "wb") as f:
        for i, payload in enumerate(records):
            lines.append(f"{i}\t{f.tell()}\n")
            f.write(encode_record(payload))
    os.replace(tmp, rec_path)
    idx_tmp = idx_path.with_name(idx_path.name + ".tmp")
    idx_tmp.write_text("".join(lines))
    os.replace(idx_tmp, idx_path)
    return rec_path
