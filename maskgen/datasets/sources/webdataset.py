"""``wds:PATTERN`` (also ``webdataset:``, a ``.tar`` path, a glob or a brace pattern
``...-{000000..000009}.tar``): existing WebDataset shards, one scan unit per shard.

A sample is the members sharing a key; its image is the first of :data:`WDS_IMAGE_EXTS`
present (a twins build's unmasked ``orig.jpg`` first), its identity the ``.json`` member's
``identity`` or the ``.cls`` text. Only headers and the small ``.json``/``.cls`` members are
read (with size and nesting-depth caps); image bytes are read later by offset, so a member
name never touches the file system (a ``../`` name gets a reason, never a path).
"""

from __future__ import annotations

import glob
import json
import os
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
from braceexpand import braceexpand

from maskgen.datasets.filters import ALREADY_MASKED
from maskgen.datasets.sources.base import (
    MAX_JSON_BYTES,
    MAX_JSON_DEPTH,
    NO_IDENTITY,
    TOO_LARGE,
    ReadError,
    RowBuffer,
    Source,
    SourceNotFound,
    fs_path,
    open_regular,
    read_file_range,
    register,
)

# Image members of a WebDataset sample, most preferred first: the unmasked original of a
# twins build, then the training image.
WDS_IMAGE_EXTS = ["orig.jpg", "jpg", "jpeg", "png", "webp"]
MAX_CLS_BYTES = 256

NO_IMAGE = "no image member in sample"
NO_IDENTITY_REASON = "no identity (.json identity or .cls) in sample"
JSON_TOO_LARGE = "json too large"
JSON_TOO_DEEP = "json too deep"
BAD_CLS = "bad cls"
UNSAFE_MEMBER = "unsafe member name"
TRUNCATED_MEMBER = "truncated member"
TRUNCATED_TAR = "truncated tar"
SPARSE_MEMBER = "sparse member"  # its bytes are not contiguous in the tar: never read by offset
BAD_TAR = "bad tar"


def local_shards(pattern: str) -> list[str]:
    """Brace patterns and globs -> sorted, de-duplicated existing local tar paths (a source's
    fixed shard set; the trainer's :func:`maskgen.training.loader.expand_shards` keeps the
    order given and takes URLs)."""
    out: list[str] = []
    for p in braceexpand(pattern):
        out.extend(glob.glob(os.path.expanduser(p)) if any(c in p for c in "*?[") else [os.path.expanduser(p)])
    missing = [p for p in out if not os.path.exists(p)]  # a FIFO or device gets its row and reason
    if missing:
        raise SourceNotFound(f"tar shard(s) not found: {missing[:3]}")
    return sorted(set(out))


@register
@dataclass(eq=False)
class WebDatasetSource(Source):
    kind = "webdataset"
    prefixes = ("wds", "webdataset")
    detect_order = 20

    shards: tuple[str, ...] = ()  # paths relative to root

    @classmethod
    def from_spec(cls, rest, *, identity_depth=1, data_home=None):
        shards = [os.path.abspath(p) for p in local_shards(rest)]
        if not shards:
            raise SourceNotFound(f"no tar shards match {rest}")
        root = Path(os.path.commonpath(shards))
        if os.path.isfile(root):  # one shard: its folder
            root = root.parent
        return cls(root, shards=tuple(Path(os.path.relpath(s, root)).as_posix() for s in shards))

    @classmethod
    def detect(cls, path: str) -> bool:
        return path.endswith(".tar") or "{" in path or "*" in path

    def describe(self) -> str:
        return f"{self.kind}:{self.root.name} ({len(self.shards)} shards)"

    # A Source travels with every task: numbered shards pickle as their range, not a list.
    def __getstate__(self) -> dict:
        state = super().__getstate__()
        packed = _pack_shards(self.shards)
        if packed is not None:
            state["shards"] = packed
        return state

    def __setstate__(self, state: dict) -> None:
        if isinstance(state.get("shards"), dict):
            state = {**state, "shards": _unpack_shards(state["shards"])}
        self.__dict__.update(state)

    def relative_path(self, path, member=None, offset=None) -> str:
        return f"{path}:{member}"

    # -- scan
    def scan_units(self) -> list[str]:
        return list(self.shards)

    def scan_unit(self, unit: str) -> Iterator[pa.RecordBatch]:
        yield from RowBuffer(self.kind).batches(self._samples(unit))

    def _samples(self, shard: str) -> Iterator[dict]:
        full = self.root / shard
        try:
            fd, st = open_regular(fs_path(self.root, shard), shard)
        except ReadError as exc:
            yield _shard_row(shard, full, None, exc.reason)
            return
        samples: dict[str, dict[str, tarfile.TarInfo]] = {}
        meta: dict[str, bytes | str] = {}  # small members' bytes, or the reason they were not read
        unsafe: set[str] = set()
        sparse: set[str] = set()
        end_reason = None
        with os.fdopen(fd, "rb") as f:
            try:
                tf = tarfile.open(fileobj=f, mode="r:")
            except tarfile.TarError:
                yield _shard_row(shard, full, 0, BAD_TAR)
                return
            with tf:
                try:
                    for m in tf:
                        if not m.isfile():
                            continue
                        name = _text(m.name)
                        d, base = os.path.split(name)
                        if "." not in base:
                            continue
                        stem, ext = base.split(".", 1)
                        key = f"{d}/{stem}" if d else stem
                        samples.setdefault(key, {})[ext] = m
                        if name.startswith("/") or ".." in name.split("/"):
                            unsafe.add(key)
                        if m.issparse():
                            sparse.add(key)
                        if ext in ("json", "cls"):
                            cap = MAX_JSON_BYTES if ext == "json" else MAX_CLS_BYTES
                            if m.size > cap:
                                meta[f"{key}.{ext}"] = JSON_TOO_LARGE if ext == "json" else BAD_CLS
                            elif m.offset_data + m.size > st.st_size:
                                meta[f"{key}.{ext}"] = TRUNCATED_MEMBER
                            else:
                                meta[f"{key}.{ext}"] = tf.extractfile(m).read()
                    stop = tf.offset
                    if stop < st.st_size and os.pread(f.fileno(), 1024, stop).strip(b"\0"):
                        end_reason = TRUNCATED_TAR  # tarfile stops quietly at a broken header
                except (tarfile.TarError, EOFError, OSError):
                    stop, end_reason = tf.offset, TRUNCATED_TAR
        for key, members in samples.items():
            yield self._sample_row(shard, full, st, key, members, meta, UNSAFE_MEMBER if key in unsafe else
                                   SPARSE_MEMBER if key in sparse else None)
        if end_reason is not None:
            yield _shard_row(shard, full, stop, end_reason)

    def _sample_row(self, shard, full, st, key, members, meta, refused: str | None) -> dict:
        ext = next((e for e in WDS_IMAGE_EXTS if e in members), None)
        info, drop = _wds_meta(meta.get(f"{key}.json"))
        identity = info.get("identity")
        cls_raw = meta.get(f"{key}.cls")
        label = None
        if isinstance(cls_raw, str):
            drop = drop or cls_raw
        elif cls_raw is not None:
            try:
                text = cls_raw.decode("utf-8").strip()
            except UnicodeDecodeError:
                text, drop = None, drop or BAD_CLS
            if text is not None:
                if re.fullmatch(r"[+-]?\d+", text):
                    label = int(text)
                    if not -(2**63) <= label < 2**63:
                        label, drop = None, drop or BAD_CLS
                if identity is None:
                    identity = text
        m = members.get(ext) if ext else None
        if refused:
            drop = refused
        elif drop is None:
            if ext is None:
                drop = NO_IMAGE
            elif m.offset_data + m.size > st.st_size:
                drop = TRUNCATED_MEMBER
            elif m.size > self.max_bytes:
                drop = TOO_LARGE
            elif identity is None:
                drop = NO_IDENTITY_REASON
            elif ext != "orig.jpg" and info.get("masked") is True:
                drop = ALREADY_MASKED
        return {
            "identity": _safe(str(identity)) if identity is not None else NO_IDENTITY,
            "path": shard,
            "offset": m.offset_data if m else None,
            "member": f"{key}.{ext}" if ext else key,
            "nbytes": m.size if m else None,
            "source_label": label,
            "cache_key": f"{full}|{key}.{ext}|{st.st_size}|{st.st_mtime_ns}",
            "drop": drop,
        }

    # -- read
    def read_bytes(self, path, offset=None, nbytes=None, member=None) -> bytes:
        if offset is None or nbytes is None:
            raise ReadError(NO_IMAGE, f"{path}:{member}")
        return read_file_range(fs_path(self.root, path), offset, nbytes, self.max_bytes, f"{path}:{member}")


_NUMBERED = re.compile(r"(.*?)(\d+)(\.tar)")


def _pack_shards(shards: tuple[str, ...]) -> dict | None:
    """``prefix-000000.tar ... prefix-00NNNN.tar`` (consecutive, same width) as a range."""
    if len(shards) < 2:
        return None
    m = _NUMBERED.fullmatch(shards[0])
    if m is None:
        return None
    prefix, num, suffix = m.groups()
    first, width = int(num), len(num)
    packed = {"prefix": prefix, "first": first, "n": len(shards), "width": width, "suffix": suffix}
    return packed if _unpack_shards(packed) == shards else None


def _unpack_shards(p: dict) -> tuple[str, ...]:
    return tuple(f"{p['prefix']}{i:0{p['width']}d}{p['suffix']}" for i in range(p["first"], p["first"] + p["n"]))


def _shard_row(shard: str, full: Path, offset: int | None, reason: str) -> dict:
    """The row of a shard (or of the unreadable rest of one) that gives no samples."""
    return {"identity": NO_IDENTITY, "path": shard, "offset": offset, "member": None,
            "cache_key": f"{full}|@{offset}", "drop": reason}


def _text(name: str) -> str:
    """A tar member name as valid text (tarfile keeps undecodable bytes as surrogates)."""
    return _safe(name)


def _safe(s: str) -> str:
    try:
        s.encode("utf-8")
        return s
    except UnicodeEncodeError:
        return s.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.S)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def json_depth(raw: bytes) -> int:
    """Nesting depth of a JSON text, measured without parsing it (no recursion)."""
    brackets = _JSON_STRING.sub(b"", raw).translate(None, _NOT_BRACKETS)
    if not brackets:
        return 0
    a = np.frombuffer(brackets, np.uint8)
    return int(np.cumsum(np.where((a == ord("[")) | (a == ord("{")), 1, -1)).max())


def _wds_meta(raw: bytes | str | None) -> tuple[dict, str | None]:
    """A sample's ``.json`` as a dict (empty when absent or not an object) and a reason when
    it was refused (too large, too deep)."""
    if raw is None or raw == b"":
        return {}, None
    if isinstance(raw, str):
        return {}, raw
    if json_depth(raw) > MAX_JSON_DEPTH:
        return {}, JSON_TOO_DEEP
    try:
        v = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return {}, None
    return (v if isinstance(v, dict) else {}), None
