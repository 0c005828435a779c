"""insightface verification ``.bin`` files, read and written without MXNet.

A ``.bin`` is a pickle of ``(bins, issame_list)``: ``bins`` holds 2N encoded images (JPEG bytes,
pair i = images 2i and 2i+1, usually aligned 112x112 crops) and ``issame_list`` N booleans.
Files written by Python 2 or by MXNet-era scripts store the images as ``str``, ``bytes`` or
``numpy`` uint8 buffers; all are accepted.

A pickle can run any code while it loads, and a ``.bin`` is a file users download from
strangers. So it is read with an unpickler that resolves only the few globals this format
needs (numpy's array and scalar reconstruction, plain dtypes, the latin-1 decoding Python 2
pickles use for bytes); any other name is refused with :class:`BinFileError` before anything
is called, and the result is checked against the format's shape.
"""

from __future__ import annotations

import codecs
import io
import os
import pickle
from pathlib import Path
from typing import Any, Callable

import numpy as np

from maskgen.errors import InputError

# A verification set of 12 000 pairs of 112x112 JPEGs is about 300 MB; a file far above that
# is not a .bin (the whole file is read before unpickling, so a length field cannot ask for
# more than the file holds).
MAX_BIN_BYTES = 4 * 1024**3
# dtype kinds an image buffer or a label can have: bool, signed/unsigned integers, floats,
# byte strings. Object and structured dtypes are refused (they can hold anything).
_PLAIN_KINDS = set("biufS")


class BinFileError(InputError, ValueError):
    """A ``.bin`` that is unsafe or not in insightface's layout (a ValueError for old callers)."""


def _numpy_attr(module: str, name: str) -> Any:
    """numpy's pickle helpers live in ``numpy._core`` since numpy 2 and ``numpy.core`` before."""
    core = getattr(np, "_core", None) or np.core
    return getattr(getattr(core, module), name)


def _plain_dtype(*args: Any) -> np.dtype:
    dt = np.dtype(*args)
    if dt.kind not in _PLAIN_KINDS or dt.hasobject or dt.fields is not None:
        raise BinFileError(f"dtype {dt} is not a plain numeric or bytes type")
    return dt


def _reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    if subtype is not np.ndarray:
        raise BinFileError(f"array subtype {subtype!r} is not numpy.ndarray")
    return _numpy_attr("multiarray", "_reconstruct")(np.ndarray, shape, _plain_dtype(dtype))


def _frombuffer(buf: Any, dtype: Any, shape: Any, order: str) -> np.ndarray:
    return _numpy_attr("numeric", "_frombuffer")(buf, _plain_dtype(dtype), shape, order)


def _scalar(dtype: Any, *args: Any) -> Any:
    return _numpy_attr("multiarray", "scalar")(_plain_dtype(dtype), *args)


def _latin1(text: Any, encoding: str = "utf-8", *rest: Any) -> bytes:
    """``_codecs.encode`` as Python 3 pickles ``bytes`` at protocol < 3 (latin-1 text only)."""
    if not isinstance(text, str) or codecs.lookup(encoding).name != "iso8859-1" or rest:
        raise BinFileError("_codecs.encode is allowed only for latin-1 byte strings")
    return text.encode("latin-1")


def _bytes_like(kind: type) -> Callable[..., Any]:
    def make(*args: Any) -> Any:
        if not all(isinstance(a, (str, bytes, bytearray)) for a in args):
            raise BinFileError(f"{kind.__name__} of a non-string")
        return kind(*args)

    return make


_ALLOWED: dict[tuple[str, str], Callable[..., Any] | type] = {}
for _core in ("numpy.core", "numpy._core"):
    _ALLOWED[(f"{_core}.multiarray", "_reconstruct")] = _reconstruct
    _ALLOWED[(f"{_core}.multiarray", "scalar")] = _scalar
    _ALLOWED[(f"{_core}.numeric", "_frombuffer")] = _frombuffer
_ALLOWED[("numpy", "ndarray")] = np.ndarray  # only ever passed to _reconstruct, never called
_ALLOWED[("numpy", "dtype")] = _plain_dtype
_ALLOWED[("_codecs", "encode")] = _latin1
for _builtins in ("builtins", "__builtin__"):
    _ALLOWED[(_builtins, "bytearray")] = _bytes_like(bytearray)
    _ALLOWED[(_builtins, "bytes")] = _bytes_like(bytes)


class _BinUnpickler(pickle.Unpickler):
    """Resolves only the globals of :data:`_ALLOWED`; every other name is refused unresolved."""

    def find_class(self, module: str, name: str) -> Any:
        found = _ALLOWED.get((module, name))
        if found is None:
            raise BinFileError(f"it names {module}.{name}, which an insightface .bin never holds")
        return found

    def persistent_load(self, pid: Any) -> Any:
        raise BinFileError("it refers to persistent objects, which an insightface .bin never holds")


def _as_bytes(item: object, i: int) -> bytes:
    if isinstance(item, (bytes, bytearray)):
        return bytes(item)
    if isinstance(item, np.ndarray) and item.dtype.kind in _PLAIN_KINDS and not item.dtype.hasobject:
        return item.astype(np.uint8, copy=False).tobytes()
    if isinstance(item, str):  # python-2 pickles read as text
        return item.encode("latin-1")
    raise BinFileError(f"image {i} is a {type(item).__name__}, not encoded image bytes")


def _as_label(item: object, i: int) -> bool:
    if isinstance(item, (bool, np.bool_)) or (isinstance(item, (int, np.integer)) and item in (0, 1)):
        return bool(item)
    raise BinFileError(f"label {i} is {type(item).__name__} {item!r:.40}, not a boolean")


def loads_bin(data: bytes, name: str = "<bytes>") -> tuple[list[bytes], np.ndarray]:
    """(encoded images, issame per pair) from the bytes of a ``.bin`` file."""
    try:
        obj = _BinUnpickler(io.BytesIO(data), encoding="bytes").load()
    except BinFileError as exc:
        raise BinFileError(f"{name}: refused: {exc} (loading it could run code)") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
            KeyError, OverflowError, MemoryError, RecursionError) as exc:
        raise BinFileError(f"{name}: not a readable insightface .bin ({type(exc).__name__}: {exc})") from None
    if not isinstance(obj, (tuple, list)) or len(obj) != 2:
        raise BinFileError(f"{name}: not an insightface .bin (expected a pickled (bins, issame) pair)")
    bins, issame = obj
    if not isinstance(bins, (tuple, list)) or not isinstance(issame, (tuple, list, np.ndarray)):
        raise BinFileError(f"{name}: not an insightface .bin (bins and issame must be sequences)")
    try:
        images = [_as_bytes(b, i) for i, b in enumerate(bins)]
        labels = np.asarray([_as_label(x, i) for i, x in enumerate(issame)], dtype=bool)
    except BinFileError as exc:
        raise BinFileError(f"{name}: not an insightface .bin ({exc})") from None
    if len(images) != 2 * len(labels):
        raise BinFileError(f"{name}: {len(images)} images for {len(labels)} pairs (expected 2 per pair)")
    return images, labels


def read_bin(path: str | os.PathLike) -> tuple[list[bytes], np.ndarray]:
    """(encoded images, issame per pair). Checks that there are two images per label."""
    from maskgen.masks.imageio import read_regular_file

    data, reason = read_regular_file(path, MAX_BIN_BYTES)
    if data is None:
        raise BinFileError(f"{path}: {reason}")
    return loads_bin(data, str(path))


def write_bin(path: str | os.PathLike, images: list[bytes], issame: np.ndarray | list[bool]) -> None:
    """Write ``(images, issame)`` as insightface does, atomically (a temp name unique to this
    run, then rename); a failed write is one error naming ``path``."""
    from maskgen.outputs import replacing

    issame = [bool(x) for x in issame]
    if len(images) != 2 * len(issame):
        raise ValueError(f"{len(images)} images for {len(issame)} pairs (expected 2 per pair)")
    with replacing(Path(path), hint="") as tmp, open(tmp, "wb") as f:
        pickle.dump(([bytes(b) for b in images], issame), f, protocol=pickle.HIGHEST_PROTOCOL)
