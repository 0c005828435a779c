"""Dataset sources, the manifest schema, identity filters and reproducible shard writing.

```python
from maskgen.datasets import parse_source, read_pair_names, RecordIOReader, write_recordio
src = parse_source("lfw")                 # or a folder, "recordio:train.rec", "wds:shards/*.tar"
for batch in src.scan_batches():          # one row per image, nothing decoded, streamed
    ...
data = src.read_bytes(path, offset, nbytes, member)   # the encoded bytes of one row
```
"""

from __future__ import annotations

from maskgen.datasets.lfw import (
    lfw_dir,
    lfw_names,
    pair_image_path,
    read_pair_names,
    read_people,
)
from maskgen.datasets.manifest import (
    CORE_SCHEMA,
    conform,
    read_manifest,
    write_manifest,
)
from maskgen.datasets.recordio import RecordIOReader, image_bytes_at, write_recordio
from maskgen.datasets.sources import Source, parse_source
from maskgen.datasets.tarwriter import tar_bytes, write_tar

__all__ = [
    "CORE_SCHEMA",
    "RecordIOReader",
    "Source",
    "conform",
    "image_bytes_at",
    "lfw_dir",
    "lfw_names",
    "pair_image_path",
    "parse_source",
    "read_manifest",
    "read_pair_names",
    "read_people",
    "tar_bytes",
    "write_manifest",
    "write_recordio",
    "write_tar",
]
