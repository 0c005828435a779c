"""Execute one shard: decode, mask, align, encode, write the tar; stats last.

The shard is the unit of work and of resume. A shard is done exactly when
``stats/<shard>.json`` exists with the plan hash of the current plan: the tar is renamed into
place first, the per-sample results (``stats/<shard>.parquet``) next, the stats file last.
Everything written depends only on the task (plan rows + output options), never on which
worker ran it or when, so tars are byte-identical for any worker count.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from maskgen.datasets.tarwriter import write_atomic, write_tar
from maskgen.outputs import replacing

RESULT_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string()),
        pa.field("status", pa.string()),
        pa.field("reason", pa.string()),
        pa.field("shard", pa.string()),
        pa.field("masked", pa.bool_()),
        pa.field("fit_score", pa.float32()),
        pa.field("ita", pa.float32()),
        pa.field("skin_tone", pa.string()),
        pa.field("sharpness", pa.float32()),
        pa.field("brightness", pa.float32()),
        pa.field("face_size", pa.float32()),
    ]
)
ATTRIBUTE_KEYS = ("ita", "skin_tone", "sharpness", "brightness", "face_size")


class SampleError(Exception):
    """A sample that cannot be written; its message is the manifest reason."""


def _face_attributes():
    """The audit's per-image attributes when that module is installed (it is optional here:
    the build must run without the audit)."""
    try:
        from maskgen.audit.attributes import face_attributes
    except ImportError:
        return None
    return face_attributes


def encode_jpeg(img_rgb: np.ndarray, quality: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img_rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


def _round(v, nd=3):
    return None if v is None else round(float(v), nd)


def process_sample(row: dict, opts: dict, face_attributes, src) -> tuple[dict[str, bytes], dict]:
    """The members and result of one sample (its bytes read through ``src``, the build's
    :class:`maskgen.datasets.sources.Source`). Raises on failure (the caller records it as the
    sample's reason: a :class:`SampleError` message, else the exception type and message)."""
    from maskgen.datasets.sources import ReadError
    from maskgen.masks import align_face, alignment_matrix, decode_image

    try:
        data = src.read_bytes(row["path"], row["offset"], row["nbytes"], row.get("member"))
    except ReadError as exc:
        raise SampleError(exc.reason) from exc
    img, reason = decode_image(data)
    if img is None:
        raise SampleError(f"decode: {reason}")
    lm = np.asarray(row["landmarks"], np.float32).reshape(68, 2)
    attrs = {}
    if face_attributes is not None:
        attrs = face_attributes(img, lm) or {}
    twins = opts["twins"]
    masked_img = None
    fit = None
    spec = row.get("spec")
    if row["masked"] or twins:
        from maskgen.masks import MaskSpec, faces_from_landmarks, mask_face

        faces = faces_from_landmarks(lm, img.shape)
        result = mask_face(img, MaskSpec(**spec), seed=int(row["seed"]), faces=faces)
        if getattr(result, "status", "ok") != "ok" or result.image is None:
            raise SampleError(f"mask: {getattr(result, 'status', 'failed')}")
        masked_img = result.image
        fit = getattr(result, "fit", None)

    matrix = alignment_matrix(lm, opts["image_size"]) if opts["output"] == "aligned" else None

    def out_image(im: np.ndarray) -> np.ndarray:
        if matrix is not None:  # the original and its masked twin share one alignment
            return align_face(im, lm, size=opts["image_size"], matrix=matrix)
        return im

    q = opts["jpeg_quality"]
    # a masked sample without twins writes only its masked image
    orig_jpg = encode_jpeg(out_image(img), q) if twins or not row["masked"] else None
    masked_jpg = encode_jpeg(out_image(masked_img), q) if masked_img is not None else None
    key = row["key"]
    meta = {
        "key": key,
        "identity": row["identity"],
        "label": int(row["label"]),
        "source": row["source"],
        "source_path": row["relpath"],
        "masked": bool(row["masked"]),
        "mask": ({**spec, "fit_score": _round(fit)} if spec and (row["masked"] or twins) else None),
        "seed": int(row["seed"]),
        "output": opts["output"],
        "size": [int(img.shape[1]), int(img.shape[0])],
        "landmarks": np.round(lm.astype(np.float64), 2).tolist(),
        "box": [_round(v, 2) for v in row["box"]],
        "det_score": _round(row.get("det_score")),
        "pose": {k: _round(row.get(k), 2) for k in ("yaw", "pitch", "roll")},
        "quality": {k: _round(attrs.get(k)) for k in ("sharpness", "brightness", "face_size")},
        "skin_tone": {"ita": _round(attrs.get("ita")), "label": attrs.get("skin_tone")},
        "demographics": row.get("demographics") or {},
    }
    members = {
        f"{key}.jpg": masked_jpg if row["masked"] else orig_jpg,
        f"{key}.cls": str(int(row["label"])).encode(),
        f"{key}.json": json.dumps(meta, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode(),
    }
    if twins:
        members[f"{key}.orig.jpg"] = orig_jpg
        members[f"{key}.masked.jpg"] = masked_jpg
    result = {"fit_score": fit, **{k: attrs.get(k) for k in ATTRIBUTE_KEYS}}
    return members, result


def run_shard(task: dict) -> dict:
    """Build one shard (see the module doc); returns its stats (also written as JSON)."""
    from maskgen.pipelines.runner import one_thread

    one_thread()
    t0 = time.perf_counter()
    out = Path(task["out"])
    shard = task["shard"]
    opts = task["opts"]
    face_attributes = _face_attributes()
    members: list[tuple[str, bytes]] = []
    results = []
    reasons: dict[str, int] = {}
    n_ok = n_masked = 0
    for row in sorted(task["rows"], key=lambda r: r["key"]):
        res = {"key": row["key"], "shard": shard, "masked": bool(row["masked"])}
        try:
            mem, info = process_sample(row, opts, face_attributes, task["src"])
            members.extend(mem.items())
            res.update(status="ok", reason=None, **info)
            n_ok += 1
            n_masked += bool(row["masked"])
        except Exception as exc:  # per-sample failures are data, never fatal
            reason = str(exc) if isinstance(exc, SampleError) else f"{type(exc).__name__}: {exc}"
            res.update(status="failed", reason=reason, shard=None)
            cls = reason.split(":")[0]
            reasons[cls] = reasons.get(cls, 0) + 1
        results.append(res)
    nbytes = write_tar(out / "shards" / shard, members)
    stats_dir = out / "stats"
    stem = shard[: -len(".tar")]
    table = pa.Table.from_pydict({f.name: [r.get(f.name) for r in results] for f in RESULT_SCHEMA}, schema=RESULT_SCHEMA)
    with replacing(stats_dir / f"{stem}.parquet") as tmp:
        pq.write_table(table, tmp)
    stats = {
        "shard": shard,
        "plan_hash": task["plan_hash"],
        "num_samples": n_ok,
        "num_masked": n_masked,
        "num_failed": len(results) - n_ok,
        "failures": dict(sorted(reasons.items())),
        "bytes": nbytes,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    write_atomic(stats_dir / f"{stem}.json", json.dumps(stats, indent=1, sort_keys=True).encode())
    return stats


def shard_done(out: str | os.PathLike, shard: str, plan_hash: str) -> dict | None:
    """The stats of a finished shard of the current plan, else None (to be (re)built)."""
    out = Path(out)
    stem = shard[: -len(".tar")]
    p = out / "stats" / f"{stem}.json"
    if not (p.is_file() and (out / "shards" / shard).is_file() and (out / "stats" / f"{stem}.parquet").is_file()):
        return None
    try:
        stats = json.loads(p.read_text())
    except ValueError:
        return None
    return stats if stats.get("plan_hash") == plan_hash else None
