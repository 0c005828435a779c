"""Execute one shard: read its own rows, decode where needed, mask, align, encode, write.

The shard is the unit of work and of resume. A shard task receives its shard index, reads its
rows from the plan parts (``work/plan/*.parquet``, sorted by shard, so only a few row groups
are read), and writes, in order: the tar (temp name, renamed), ``stats/<shard>.parquet`` (the
manifest rows of its samples, results included), ``stats/<shard>.json`` last (plan hash, tar
size and SHA-256: its presence with the current plan hash and a matching tar means done).
Everything written depends only on the rows and the output options, never on which worker
ran it or when, so tars are byte-identical for any worker count, locally or on a cluster.

Pixels are touched only where needed. An unmasked sample whose output frame is its input
frame (``--output original``, or an aligned crop already at the output size) is written as
its source bytes when they are a plain baseline/progressive 3-channel JPEG (no EXIF): no
decode, no re-encode. Its 68 landmarks are then fitted only if attributes are measured for
it (``attr_measured``); otherwise they stay null.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from maskgen.datasets.attributes import face_attributes
from maskgen.datasets.faces import DEFERRED, jpeg_info
from maskgen.datasets.filters import reason_class
from maskgen.datasets.manifest import STATUS_FAILED, STATUS_OK, to_manifest
from maskgen.datasets.sample import sample_json
from maskgen.datasets.tarwriter import tar_bytes
from maskgen.outputs import replacing, write_file

ATTRIBUTE_KEYS = ("ita", "skin_tone", "sharpness", "brightness", "face_size")
UPDATED = ("landmarks", "box", "det_score", "yaw", "pitch", "roll")  # set by a deferred fit
RESULT_TYPES = {
    "fit_score": pa.float32(), "ita": pa.float32(), "skin_tone": pa.string(), "sharpness": pa.float32(),
    "brightness": pa.float32(), "face_size": pa.float32(), "landmarks_crop": pa.list_(pa.float32()),
    "passthrough": pa.bool_(),
}


class SampleError(Exception):
    """A sample that cannot be written; its message is the manifest reason."""


def encode_jpeg(img_rgb: np.ndarray, quality: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img_rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


def _round(v, nd=3):
    return None if v is None else round(float(v), nd)


def _flat(lm: np.ndarray | None) -> list[float] | None:
    return None if lm is None else np.round(np.asarray(lm, np.float64).reshape(-1), 2).tolist()


def process_sample(row: dict, ctx: dict) -> tuple[dict[str, bytes], dict]:
    """The members and results of one sample. Raises on failure (the caller records it as the
    sample's reason: a :class:`SampleError` message, else the exception type and message)."""
    from maskgen.masks import align_face, alignment_matrix, decode_image
    from maskgen.masks.align import transform_points
    from maskgen.pipelines.scan import read_bytes, sample_name

    opts = ctx["opts"]
    size = opts["image_size"]
    twins = opts["twins"]
    from maskgen.datasets.sources import ReadError

    try:
        data = read_bytes(ctx["src"], row)
    except ReadError as exc:
        raise SampleError(exc.reason) from exc
    deferred = row.get("backend") in DEFERRED
    frame_is_input = opts["output"] == "original" or (
        opts["output"] == "aligned" and deferred and row.get("width") == size and row.get("height") == size)
    info = jpeg_info(data) if frame_is_input else None
    pass_ok = info is not None and info[2] == 3 and (opts["output"] == "original" or info[:2] == (size, size))
    masked = bool(row["masked"])
    need_pixels = masked or twins or bool(row.get("attr_measured")) or not pass_ok
    upd: dict = {}
    lm = None if row.get("landmarks") is None else np.asarray(row["landmarks"], np.float32).reshape(68, 2)
    img = None
    if need_pixels:
        img, reason = decode_image(data)
        if img is None:
            raise SampleError(f"decode: {reason}")
        if lm is None:
            from maskgen.masks import detect_faces

            faces = detect_faces(img, backend=row.get("backend") or "aligned", select="center")
            if not faces:
                raise SampleError("no face detected")
            f = faces[0]
            lm = np.asarray(f.landmarks, np.float32).reshape(68, 2)
            upd = {"landmarks": lm.reshape(-1).tolist(), "box": [float(v) for v in f.box], "det_score": float(f.score),
                   "yaw": float(f.pose[0]), "pitch": float(f.pose[1]), "roll": float(f.pose[2])}
    attrs = {}
    fa = ctx["face_attributes"]
    if img is not None and fa is not None and row.get("attr_measured"):
        attrs = fa(img, lm) or {}
    spec = None
    if row.get("mask_type") is not None:
        spec = {"type": row["mask_type"], "color": row["mask_color"], "texture": row["mask_texture"],
                "wear": row["wear"], "valve": bool(row.get("mask_valve"))}
    masked_img = None
    fit = None
    if masked or twins:
        from maskgen.masks import LOW_FIT, MaskSpec, faces_from_landmarks, mask_face
        from maskgen.masks.jpeglook import look_of_image

        faces = faces_from_landmarks(lm, img.shape)
        look = look_of_image(data, img)  # the source's JPEG look, given to the mask
        result = mask_face(img, MaskSpec(**spec), seed=int(row["seed"]), faces=faces, min_fit=opts.get("min_fit"),
                           fit_frame="aligned" if opts["output"] == "aligned" else "image",
                           jpeg_quality=look and look.quality, jpeg_sampling=look and look.sampling)
        if getattr(result, "status", "ok") == LOW_FIT:
            raise SampleError("fit score below threshold")
        if getattr(result, "status", "ok") != "ok" or result.image is None:
            raise SampleError(f"mask: {getattr(result, 'status', 'failed')}")
        masked_img = result.image
        fit = getattr(result, "fit", None)
    matrix = None if frame_is_input or lm is None else alignment_matrix(lm, size)

    def out_image(im: np.ndarray) -> np.ndarray:
        if matrix is not None:  # the original and its masked twin share one alignment
            return align_face(im, lm, size=size, matrix=matrix)
        return im

    q = opts["jpeg_quality"]
    orig_jpg = None
    if twins or not masked:  # a masked sample without twins writes only its masked image
        orig_jpg = data if pass_ok else encode_jpeg(out_image(img), q)
    masked_jpg = encode_jpeg(out_image(masked_img), q) if masked_img is not None else None
    lm_crop = None if lm is None else (lm if matrix is None else transform_points(lm, matrix))
    key = row["key"]
    b = upd.get("box", row.get("box"))
    meta = {  # the fields and types are declared in maskgen.datasets.sample (SAMPLE_FIELDS)
        "key": key,
        "identity": row["identity"],
        "label": int(row["label"]),
        "source": row["source"],
        "source_path": sample_name(ctx["src"], row),
        "masked": masked,
        "mask": ({**spec, "fit_score": _round(fit)} if spec and (masked or twins) else None),
        "seed": int(row["seed"]),
        "output": opts["output"],
        "size": [int(row["width"]), int(row["height"])] if img is None else [int(img.shape[1]), int(img.shape[0])],
        "landmarks": _flat(lm),
        "landmarks_crop": _flat(lm_crop),
        "box": None if b is None else [_round(v, 2) for v in b],
        "det_score": _round(upd.get("det_score", row.get("det_score"))),
        "pose": {k: _round(upd.get(k, row.get(k)), 2) for k in ("yaw", "pitch", "roll")},
        "quality": {k: _round(attrs.get(k)) for k in ("sharpness", "brightness", "face_size")},
        "skin_tone": {"ita": _round(attrs.get("ita")), "label": attrs.get("skin_tone")},
        "passthrough": bool(pass_ok and orig_jpg is data),
    }
    if ctx["label_columns"]:  # never an empty struct (Parquet cannot store one)
        meta["demographics"] = {c: row.get(c) for c in ctx["label_columns"]}
    members = {
        f"{key}.jpg": masked_jpg if masked else orig_jpg,
        f"{key}.cls": str(int(row["label"])).encode(),
        f"{key}.json": sample_json(meta, ctx["label_columns"]),  # checked against its declared types
    }
    if twins:
        members[f"{key}.orig.jpg"] = orig_jpg
        members[f"{key}.masked.jpg"] = masked_jpg
    result = {"fit_score": fit, **{k: attrs.get(k) for k in ATTRIBUTE_KEYS},
              "landmarks_crop": None if lm_crop is None else np.asarray(lm_crop, np.float32).reshape(-1).tolist(),
              "passthrough": meta["passthrough"], **upd}
    return members, result


def _build_attributes(img: np.ndarray, lm: np.ndarray | None) -> dict:
    """The attributes a sample records (``ATTRIBUTE_KEYS``): no uncorrected ITA."""
    return face_attributes(img, lm, raw=False)


def read_shard_rows(plan_files: list[str], index: int) -> pa.Table:
    """A shard's rows from the plan parts (sorted by shard: row-group statistics prune)."""
    t = pads.dataset(plan_files, format="parquet").to_table(filter=pc.field("_shard") == index)
    return t.sort_by("key")


def run_shard(task: dict) -> dict:
    """Build one shard (see the module doc); returns its stats (also written as JSON)."""
    from maskgen.pipelines.runner import one_thread

    one_thread()
    t0 = time.perf_counter()
    out = Path(task["out"])
    shard = task["shard"]
    rows_t = read_shard_rows(task["plan_files"], task["index"])
    ctx = {"opts": task["opts"], "src": task["src"], "face_attributes": _build_attributes,
           "label_columns": task["label_columns"]}
    members: list[tuple[str, bytes]] = []
    n = rows_t.num_rows
    status, reason, shard_col = [STATUS_OK] * n, [None] * n, [shard] * n
    results: dict[str, list] = {k: [None] * n for k in (*RESULT_TYPES, *UPDATED)}
    failures: dict[str, int] = {}
    n_ok = n_masked = n_pass = n_attr = 0
    for i, row in enumerate(rows_t.to_pylist()):
        for k in UPDATED:
            results[k][i] = row.get(k)
        try:
            mem, res = process_sample(row, ctx)
        except Exception as exc:  # per-sample failures are data, never fatal
            why = str(exc) if isinstance(exc, SampleError) else f"{type(exc).__name__}: {exc}"
            status[i], reason[i], shard_col[i] = STATUS_FAILED, why, None
            k = f"{STATUS_FAILED}: {reason_class(why)}"
            failures[k] = failures.get(k, 0) + 1
            continue
        members.extend(mem.items())
        for k, v in res.items():
            results[k][i] = v
        n_ok += 1
        n_masked += bool(row["masked"])
        n_pass += bool(res["passthrough"])
        n_attr += res.get("ita") is not None or res.get("sharpness") is not None
    data = tar_bytes(members)
    write_file(out / "shards" / shard, data)
    digest = hashlib.sha256(data).hexdigest()
    table = rows_t
    for k, v in (("status", status), ("reason", reason), ("shard", shard_col)):
        table = _put(table, k, pa.array(v, pa.string()))
    for k in RESULT_TYPES:
        table = _put(table, k, pa.array(results[k], RESULT_TYPES[k]))
    for k in UPDATED:
        table = _put(table, k, pa.array(results[k], table.schema.field(k).type))
    table = _put(table, "attr_measured", pa.array([bool(a) and s == STATUS_OK and (r is not None)
                                                    for a, s, r in zip(table.column("attr_measured").to_pylist(), status,
                                                                       results["sharpness"])], pa.bool_()))
    stem = shard[: -len(".tar")]
    with replacing(out / "stats" / f"{stem}.parquet") as tmp:
        pq.write_table(to_manifest(table, task["label_columns"]), tmp)
    stats = {
        "shard": shard,
        "plan_hash": task["plan_hash"],
        "num_samples": n_ok,
        "num_masked": n_masked,
        "num_failed": n - n_ok,
        "num_passthrough": n_pass,
        "num_attributes": n_attr,
        "failures": dict(sorted(failures.items())),
        "bytes": len(data),
        "sha256": digest,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    write_file(out / "stats" / f"{stem}.json", json.dumps(stats, indent=1, sort_keys=True).encode())
    return stats


def _put(t: pa.Table, name: str, arr: pa.Array) -> pa.Table:
    i = t.schema.get_field_index(name)
    return t.set_column(i, name, arr) if i >= 0 else t.append_column(name, arr)


def shard_done(out: str | Path, shard: str, plan_hash: str) -> dict | None:
    """The stats of a finished shard of the current plan whose tar has the recorded size,
    else None (to be (re)built). The digest is checked by :func:`verify_task`."""
    out = Path(out)
    stem = shard[: -len(".tar")]
    p = out / "stats" / f"{stem}.json"
    tar = out / "shards" / shard
    if not (p.is_file() and tar.is_file() and (out / "stats" / f"{stem}.parquet").is_file()):
        return None
    try:
        stats = json.loads(p.read_bytes()[:1_000_000])
    except ValueError:
        return None
    if not isinstance(stats, dict) or stats.get("plan_hash") != plan_hash or "sha256" not in stats:
        return None
    return stats if tar.stat().st_size == stats.get("bytes") else None


def verify_task(task: dict) -> list[str]:
    """The shards (of ``task["shards"]``: name, sha256) whose tar still has its recorded
    digest; a truncated or altered tar is rebuilt by the caller."""
    good = []
    for name, digest in task["shards"]:
        h = hashlib.sha256()
        try:
            with open(Path(task["out"]) / "shards" / name, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
        except OSError:
            continue
        if h.hexdigest() == digest:
            good.append(name)
    return good
