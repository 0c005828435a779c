"""The members of a shard sample and the type of every field of its ``<key>.json``.

This is the one definition of a sample: the build serialises each ``<key>.json`` through
:func:`sample_json`, which refuses a field that is not declared here, and the Hugging Face
features of a build (:mod:`maskgen.datasets.hf`, the ``dataset_info`` of its dataset card) are
derived from :func:`json_type`. A field may be null (e.g. ``mask`` of an unmasked sample,
``mask.texture`` of a plain-colour mask, ``landmarks`` of a pass-through sample not
measured); its declared type is the type of its non-null values.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import pyarrow as pa

_F64 = pa.float64()
_XY = pa.list_(_F64)  # 68 iBUG points, flat [x0, y0, ..., x67, y67]

# The fields of <key>.json and their types (JSON numbers read back as int64 / float64).
SAMPLE_FIELDS: list[pa.Field] = [
    pa.field("key", pa.string()),
    pa.field("identity", pa.string()),
    pa.field("label", pa.int64()),
    pa.field("source", pa.string()),
    pa.field("source_path", pa.string()),
    pa.field("masked", pa.bool_()),
    pa.field("mask", pa.struct([  # null when the sample carries no mask
        pa.field("type", pa.string()),
        pa.field("color", pa.string()),
        pa.field("texture", pa.string()),  # null for a plain-colour mask
        pa.field("wear", pa.string()),
        pa.field("valve", pa.bool_()),
        pa.field("fit_score", _F64),
    ])),
    pa.field("seed", pa.int64()),
    pa.field("output", pa.string()),
    pa.field("size", pa.list_(pa.int64())),  # width, height of the source image
    pa.field("landmarks", _XY),  # source-image pixels
    pa.field("landmarks_crop", _XY),  # pixels of the written image
    pa.field("box", pa.list_(_F64)),  # x0, y0, x1, y1 (source pixels)
    pa.field("det_score", _F64),
    pa.field("pose", pa.struct([pa.field(k, _F64) for k in ("yaw", "pitch", "roll")])),
    pa.field("quality", pa.struct([pa.field(k, _F64) for k in ("sharpness", "brightness", "face_size")])),
    pa.field("skin_tone", pa.struct([pa.field("ita", _F64), pa.field("label", pa.string())])),
    pa.field("passthrough", pa.bool_()),
]
DEMOGRAPHICS = "demographics"  # the build's label columns (strings); only when it has labels

# The members of a sample after ``<key>.``: their kind (an image, the class label, the JSON).
MEMBERS = {"jpg": "image", "cls": "int64", "json": "json"}
TWIN_MEMBERS = {"orig.jpg": "image", "masked.jpg": "image"}


def json_type(label_columns: Sequence[str] = ()) -> pa.StructType:
    """The type of ``<key>.json`` of a build with these label columns."""
    fields = list(SAMPLE_FIELDS)
    if label_columns:  # never an empty struct (Parquet cannot store one)
        fields.append(pa.field(DEMOGRAPHICS, pa.struct([pa.field(c, pa.string()) for c in label_columns])))
    return pa.struct(fields)


def members(twins: bool) -> dict[str, str]:
    """The members of each sample (name after ``<key>.`` -> kind)."""
    return {**MEMBERS, **(TWIN_MEMBERS if twins else {})}


def _check(value, typ: pa.DataType, where: str) -> None:
    if pa.types.is_struct(typ):
        if not isinstance(value, dict):
            raise TypeError(f"{where}: expected an object, got {type(value).__name__}")
        names = {typ.field(i).name for i in range(typ.num_fields)}
        extra = set(value) - names
        if extra:
            raise TypeError(f"{where}: field(s) {sorted(extra)} not declared in maskgen.datasets.sample")
        for i in range(typ.num_fields):
            f = typ.field(i)
            if value.get(f.name) is not None:
                _check(value[f.name], f.type, f"{where}.{f.name}")
    elif pa.types.is_list(typ):
        if not isinstance(value, list):
            raise TypeError(f"{where}: expected a list, got {type(value).__name__}")
        for j, v in enumerate(value):
            if v is not None:
                _check(v, typ.value_type, f"{where}[{j}]")
    else:
        if pa.types.is_string(typ):
            good = isinstance(value, str)
        elif pa.types.is_boolean(typ):
            good = isinstance(value, bool)
        elif pa.types.is_integer(typ):
            good = isinstance(value, int) and not isinstance(value, bool)
        elif pa.types.is_floating(typ):
            good = isinstance(value, (int, float)) and not isinstance(value, bool)
        else:
            good = False
        if not good:
            raise TypeError(f"{where}: {type(value).__name__} is not {typ}")


def _leaf_ok(typ: pa.DataType):
    """Whether a Python type is accepted for a leaf of ``typ`` (the test of :func:`_check`)."""
    if pa.types.is_string(typ):
        return lambda t: issubclass(t, str)
    if pa.types.is_boolean(typ):
        return lambda t: issubclass(t, bool)
    if pa.types.is_integer(typ):
        return lambda t: issubclass(t, int) and not issubclass(t, bool)
    if pa.types.is_floating(typ):
        return lambda t: issubclass(t, (int, float)) and not issubclass(t, bool)
    return lambda t: False


def _compile(typ: pa.DataType):
    """A predicate true exactly when :func:`_check` accepts a value of ``typ``: the type tree is
    walked once per build, not once per sample, and a list of numbers is judged by the set of
    its element types (the 136 coordinates of a landmark list are one or two types)."""
    if pa.types.is_struct(typ):
        fields = [(typ.field(i).name, _compile(typ.field(i).type)) for i in range(typ.num_fields)]
        names = frozenset(n for n, _ in fields)

        def struct_ok(v) -> bool:
            if not isinstance(v, dict) or not names.issuperset(v):
                return False
            for name, ok in fields:
                x = v.get(name)
                if x is not None and not ok(x):
                    return False
            return True

        return struct_ok
    if pa.types.is_list(typ):
        vt = typ.value_type
        if pa.types.is_struct(vt) or pa.types.is_list(vt):
            elem = _compile(vt)
            return lambda v: isinstance(v, list) and all(x is None or elem(x) for x in v)
        leaf = _leaf_ok(vt)
        none = type(None)
        return lambda v: isinstance(v, list) and all(t is none or leaf(t) for t in set(map(type, v)))
    leaf = _leaf_ok(typ)
    return lambda v: leaf(type(v))


_CHECKERS: dict[tuple[str, ...], object] = {}


def check_sample_json(meta: dict, label_columns: Sequence[str] = ()) -> None:
    """Raise ``TypeError`` when ``meta`` has a field that is not declared, or a value that is
    not of its declared type (null is allowed everywhere)."""
    cols = tuple(label_columns)
    ok = _CHECKERS.get(cols)
    if ok is None:
        ok = _CHECKERS[cols] = _compile(json_type(cols))
    if not ok(meta):  # the slow walk says where and why
        _check(meta, json_type(cols), "json")


def sample_json(meta: dict, label_columns: Sequence[str] = ()) -> bytes:
    """The bytes of ``<key>.json``: compact, keys sorted, checked against the declaration."""
    check_sample_json(meta, label_columns)
    return json.dumps(meta, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode(
        "utf-8", "surrogateescape")
