"""The Hugging Face ``datasets`` features of a build's samples, from :mod:`maskgen.datasets.sample`.

``datasets`` infers the features of WebDataset shards from their first 5 samples, so a field
that is null there (``mask`` of unmasked samples, ``mask.texture`` of plain-colour masks) would
get type ``null`` and later samples fail to cast. A build therefore publishes its features:

```python
import datasets
from maskgen.datasets.hf import build_features, shard_files
ds = datasets.load_dataset("webdataset", data_files={"train": shard_files(out)},
                           features=build_features(out), split="train")
ds = datasets.load_dataset(str(out), split="train")  # the same, from the README.md card
```

:func:`features_yaml` gives the same features in the Hub's YAML form (the ``dataset_info:
features:`` of the dataset card); it needs no ``datasets`` install.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa

from maskgen.datasets.sample import json_type, members

# Columns the WebDataset loader of ``datasets`` adds to every sample.
LOADER_COLUMNS = {"__key__": pa.string(), "__url__": pa.string()}


def _schema(label_columns: Sequence[str], twins: bool) -> list[tuple[str, object]]:
    """(column, pyarrow type or "image") of each column, in the order of the members."""
    out: list[tuple[str, object]] = []
    for name, kind in members(twins).items():
        if kind == "image":
            out.append((name, "image"))
        elif kind == "json":
            out.append((name, json_type(label_columns)))
        else:
            out.append((name, pa.int64()))
    return out + list(LOADER_COLUMNS.items())


def features(label_columns: Sequence[str] = (), twins: bool = False):
    """The ``datasets.Features`` of the samples of a build (needs ``datasets``)."""
    import datasets

    cols = _schema(label_columns, twins)
    arrow = pa.schema([(n, t) for n, t in cols if t != "image"])
    feats = datasets.Features.from_arrow_schema(arrow)
    return datasets.Features({n: datasets.Image() if t == "image" else feats[n] for n, t in cols})


def _build_info(build_dir: str | os.PathLike) -> dict:
    return json.loads((Path(build_dir) / "dataset.json").read_text(encoding="utf-8"))


def build_features(build_dir: str | os.PathLike):
    """The features of the build in ``build_dir`` (its label columns and twins from
    ``dataset.json``)."""
    info = _build_info(build_dir)
    return features(info.get("label_columns") or (), bool(info.get("twins")))


def shard_files(build_dir: str | os.PathLike) -> list[str]:
    """The shard paths of the build in ``build_dir``, in order."""
    info = _build_info(build_dir)
    return [str(Path(build_dir) / "shards" / s["name"]) for s in info.get("shards") or ()]


_DTYPES = {pa.string(): "string", pa.int64(): "int64", pa.int32(): "int32", pa.float64(): "float64",
           pa.float32(): "float32", pa.bool_(): "bool"}


def _yaml_type(t) -> dict | str:
    """The Hub YAML form of one type: a dtype name, ``{"list": ...}`` or ``{"struct": [...]}``."""
    if t == "image":
        return "image"
    if pa.types.is_struct(t):
        return {"struct": [_yaml_field(t.field(i).name, t.field(i).type) for i in range(t.num_fields)]}
    if pa.types.is_list(t):
        inner = _yaml_type(t.value_type)
        return {"list": inner["struct"] if isinstance(inner, dict) and "struct" in inner else inner}
    return _DTYPES[t]


def _yaml_field(name: str, t) -> dict:
    y = _yaml_type(t)
    return {"name": name, "dtype": y} if isinstance(y, str) else {"name": name, **y}


def features_yaml(label_columns: Sequence[str] = (), twins: bool = False) -> list[dict]:
    """The features in the YAML form of a Hub dataset card (``dataset_info: features:``)."""
    return [_yaml_field(n, t) for n, t in _schema(label_columns, twins)]
