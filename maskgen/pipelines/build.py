"""``maskgen build``: a face dataset -> WebDataset shards with an exact mask ratio.

Stages (one-way): scan -> filter -> landmarks (cached) -> filter again (failures, duplicates)
-> plan -> execute shard by shard on Ray -> merge (manifest, dataset.json, report).
The driver holds only metadata (one manifest row per image); pixels live in the workers.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import re
import stat
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from maskgen.datasets import filters as F
from maskgen.datasets.labels import attach_labels
from maskgen.datasets.manifest import (
    CORE_NAMES,
    STATUS_DROPPED,
    STATUS_FAILED,
    STATUS_OK,
    STATUS_PENDING,
    conform,
    write_manifest,
)
from maskgen.datasets.sources import Source, parse_source
from maskgen.datasets.tarwriter import write_atomic
from maskgen.errors import OutputError
from maskgen.outputs import OutputClaim, claim, is_tmp_of
from maskgen.pipelines import analyze as A
from maskgen.pipelines import plan as P
from maskgen.pipelines.config import BuildConfig, resolve, write_yaml
from maskgen.pipelines.execute import RESULT_SCHEMA, run_shard, shard_done
from maskgen.pipelines.maskmix import MaskMix
from maskgen.pipelines.progress import Progress
from maskgen.pipelines.runner import cluster_cpus, run_window, start_ray

FORMAT_VERSION = 1  # bump when the bytes written for the same plan change
CACHE_CHECKPOINT_S = 60.0  # how often the landmark cache is saved during detection


@dataclass
class BuildResult:
    """What a build produced (also in ``<out>/dataset.json``)."""

    out: Path
    num_samples: int
    num_classes: int
    num_masked: int
    ratio: float  # realized: masked / written
    ratio_requested: float
    num_inputs: int
    num_dropped: int
    num_failed: int
    shards: list[Path]
    pattern: str | None  # brace pattern of the shard paths; None when nothing was written
    manifest: Path
    dataset_json: Path
    shards_built: int
    shards_reused: int
    shards_failed: int  # tasks that crashed even after retries: rerun the build to complete them
    seconds: float
    reasons: dict[str, int] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage


def build(
    source: str | None = None,
    out: str | os.PathLike | None = None,
    *,
    ratio: float = 0.1,
    twins: bool = False,
    seed: int = 0,
    mask_mix: str | dict | None = None,
    mask_types: list[str] | str | None = None,
    wear: list[str] | str | None = None,
    texture_prob: float | None = None,
    min_images: int = 1,
    max_images: int | None = None,
    max_identities: int | None = None,
    min_masked: int = 0,
    include: list[str] | str | None = None,
    exclude: list[str] | str | None = None,
    exclude_eval: list[str] | str | None = None,
    dedup: bool = False,
    dedup_threshold: int = 4,
    identity_depth: int = 1,
    labels: str | None = None,
    stratify: list[str] | str | None = None,
    cap_per_group: int | None = None,
    output: Literal["aligned", "original"] = "aligned",
    image_size: int = 112,
    jpeg_quality: int = 95,
    samples_per_shard: int = 1000,
    shard_bytes: int | None = None,
    name: str = "train",
    shuffle: bool = True,
    workers: int | None = None,
    ray_address: str | None = None,
    mode: Literal["resume", "overwrite"] = "resume",
    detector: str = "auto",
    landmarks_from: str | None = None,
    chunk_size: int = 256,
    progress: bool = True,
    report: bool = True,
    config: str | os.PathLike | None = None,
) -> BuildResult:
    """Build WebDataset shards from ``source`` into ``out`` (see docs/build.md).

    ``config`` names a YAML file of the same keys; arguments that differ from their defaults
    override it.
    """
    sig = inspect.signature(build)
    given = {}
    for k, p in sig.parameters.items():
        if k == "config":
            continue
        v = locals()[k]
        if v != p.default:
            given[k] = v
    return run_build(resolve(config, given))


def _plan_hash(rows: list[dict], opts: dict) -> str:
    h = hashlib.sha256(json.dumps({"v": FORMAT_VERSION, "opts": opts}, sort_keys=True).encode())
    for r in rows:
        h.update(
            json.dumps(
                [r["key"], r["label"], r["masked"], r["seed"], r["spec"], r["_cache_key"], r["demographics"]],
                sort_keys=True,
            ).encode()
        )
        h.update(np.asarray(r["landmarks"], np.float32).tobytes())
    return h.hexdigest()[:16]


# Files a build writes at the top of its folder (the landmark cache is kept on overwrite: it is
# keyed by file identity and detector, so it is never stale).
TOP_OUTPUTS = ("manifest.parquet", "dataset.json", "build.yaml", "classes.tsv", "timings.json")
_SHARD_RE = re.compile(r"[^/.]+-\d{6}\.tar")


def _recorded_shards(out: Path) -> set[str]:
    """Shard names this folder's own records name: every ``stats/*.json`` written by a shard
    task and the previous ``dataset.json``. Only these are ever deleted (never a user's
    ``.tar`` that happens to sit in ``shards/``)."""
    names: set[str] = set()
    stats = out / "stats"
    if _real_dir(stats):
        for p in stats.iterdir():
            if p.suffix == ".json" and _SHARD_RE.fullmatch(p.stem + ".tar") and p.is_file() and not p.is_symlink():
                try:
                    rec = json.loads(p.read_bytes()[:1_000_000])
                except ValueError:
                    continue
                if isinstance(rec, dict) and rec.get("shard") == p.stem + ".tar":
                    names.add(rec["shard"])
    try:
        info = json.loads((out / "dataset.json").read_bytes()[:50_000_000]) if (out / "dataset.json").is_file() else {}
    except ValueError:
        info = {}
    for s in info.get("shards", []) if isinstance(info, dict) else []:
        n = s.get("name") if isinstance(s, dict) else None
        if isinstance(n, str) and _SHARD_RE.fullmatch(n):
            names.add(n)
    return names


def _real_dir(p: Path) -> bool:
    """A folder that is not a symlink (a linked folder is never listed for deletion)."""
    try:
        return stat.S_ISDIR(os.lstat(p).st_mode)
    except OSError:
        return False


def _shard_files(shard: str) -> list[str]:
    stem = shard[: -len(".tar")]
    return [f"shards/{shard}", f"stats/{stem}.json", f"stats/{stem}.parquet"]


def _temp_files(out: Path, finals: set[str]) -> list[str]:
    """Temp files of earlier runs (killed mid-write) of the named final files."""
    found = []
    by_dir: dict[str, set[str]] = {}
    for f in finals:
        d, _, name = f.rpartition("/")
        by_dir.setdefault(d, set()).add(name)
    for d, names in by_dir.items():
        folder = out / d if d else out
        if not _real_dir(folder):
            continue
        for p in folder.iterdir():
            if any(p.name == n + ".tmp" or is_tmp_of(p.name, n) for n in names):
                found.append(f"{d}/{p.name}" if d else p.name)
    return found


def _clean_outputs(c: OutputClaim) -> None:
    """Overwrite mode: remove what this folder's records name, nothing else."""
    finals = set(TOP_OUTPUTS)
    for s in _recorded_shards(c.out):
        finals.update(_shard_files(s))
    c.remove(sorted(finals) + _temp_files(c.out, finals))


def run_build(cfg: BuildConfig, *, shutdown_ray: bool = False) -> BuildResult:
    """Run a build. ``shutdown_ray``: stop a local Ray instance that this build started as
    soon as the last shard is written, while the manifest and report are written (the CLI
    sets it: Ray's shutdown takes 1-2 s, and the process ends with the build anyway)."""
    t_start = time.perf_counter()
    with claim(cfg.out, "build", mode=cfg.mode) as owned:
        out = owned.out
        for d in ("shards", "stats"):
            if os.path.lexists(out / d) and not _real_dir(out / d):
                raise OutputError(f"{out / d} is a link or a file; a build writes only into folders it made (remove it)")
        if cfg.mode == "overwrite":
            _clean_outputs(owned)
        log = Progress(out / "build.log", echo=cfg.progress)
        log.timings = {}
        log.ray_started = False  # set when this build starts a local Ray
        log.claim = owned
        try:
            return _run(cfg, out, log, t_start, shutdown_ray)
        finally:
            log.close()


def _run(cfg: BuildConfig, out: Path, log: Progress, t_start: float, shutdown_ray: bool) -> BuildResult:
    mix = MaskMix.resolve(cfg.mask_mix, mask_types=cfg.mask_types, wear=cfg.wear, texture_prob=cfg.texture_prob)
    # Eval name sets are read before any work so a missing protocol file fails fast.
    eval_sets = {e: F.eval_names(e) for e in (cfg.exclude_eval or [])}
    log.line(f"build {cfg.source} -> {out} (ratio {cfg.ratio}, seed {cfg.seed}, mode {cfg.mode})")

    # 1. scan
    src: Source = parse_source(cfg.source, cfg.identity_depth)

    def scan() -> tuple[pa.Table, list[str]]:
        t = time.perf_counter()
        table = F.assign_keys(src.scan())
        if cfg.labels:
            table, cols = attach_labels(table, cfg.labels, src.root)
        else:
            cols = []
        log.timings["scan"] = time.perf_counter() - t
        return table, cols

    if _cold(cfg, out):
        # every image needs landmarks, so Ray will be needed: start it while the files are
        # listed (the scan waits on the file system, Ray's start on its new processes)
        with ThreadPoolExecutor(1, thread_name_prefix="maskgen-scan") as ex:
            scanned = ex.submit(scan)
            _timed_ray_start(cfg, log, "ray_start")
            table, label_cols = scanned.result()
    else:
        table, label_cols = scan()
    log.line(f"[scan] {table.num_rows:,} images, {len(set(table.column('identity').to_pylist())):,} identities in {src.describe()}")
    ws = F.WorkSet(table)
    t_filters = time.perf_counter()

    # 2. filters that need no pixels
    F.drop_scan_errors(ws)
    F.filter_names(ws, F.read_names(cfg.include), F.read_names(cfg.exclude), eval_sets)
    F.filter_min_images(ws, cfg.min_images)
    F.filter_max_images(ws, cfg.max_images, cfg.seed)
    F.filter_max_identities(ws, cfg.max_identities)
    log.timings["scan"] += time.perf_counter() - t_filters

    # 3. landmarks, from the cache where possible
    t_an = time.perf_counter()
    analysis, t_ray = _analyze(cfg, out, ws, log, src)
    log.timings["landmarks"] = time.perf_counter() - t_an - t_ray
    a_status = np.array([a.get("a_status") if a else None for a in analysis], dtype=object)
    a_reason = np.array([a.get("a_reason") if a else None for a in analysis], dtype=object)
    ws.mark(a_status == "failed", STATUS_FAILED, a_reason)

    # 4. filters that need the analysis
    if cfg.dedup:
        F.filter_duplicates(ws, np.array([a.get("phash") if a else None for a in analysis], dtype=object), cfg.dedup_threshold)
    F.filter_min_images(ws, cfg.min_images, stage=" after failures")
    F.filter_min_masked(ws, cfg.min_masked, cfg.ratio)
    strat = cfg.stratify if cfg.stratify is not None else label_cols
    missing = [c for c in strat if c not in ws.table.column_names]
    if missing:
        raise ValueError(f"stratify: no label column(s) {missing}; the labels give {label_cols}")
    if cfg.cap_per_group is not None:
        _cap_groups(ws, strat, cfg.cap_per_group, cfg.seed)

    # 5. plan
    t_plan = time.perf_counter()
    kept = np.flatnonzero(ws.pending)
    keys = ws.col("key")
    idents = ws.col("identity")
    classes = sorted({idents[i] for i in kept})
    label_of = {n: i for i, n in enumerate(classes)}
    groups = None
    if strat:
        cols = {c: ws.col(c) for c in strat}
        groups = ["|".join(f"{c}={cols[c][i]}" for c in strat) for i in kept]
    masked = P.allocate_masked([keys[i] for i in kept], [idents[i] for i in kept], cfg.ratio, cfg.seed, groups)
    rows = _plan_rows(cfg, src, ws, kept, masked, analysis, label_of, label_cols, mix)
    order = P.shard_order([r["key"] for r in rows], cfg.seed, cfg.shuffle)
    opts = {"output": cfg.output, "image_size": cfg.image_size, "jpeg_quality": cfg.jpeg_quality, "twins": cfg.twins}
    per_shard = cfg.samples_per_shard
    if cfg.shard_bytes and rows:
        per_shard = _samples_for_bytes(cfg, rows, order, opts, log, src)
    shards_idx = P.split_shards(order, per_shard)
    tasks = []
    for si, idx in enumerate(shards_idx):
        srows = sorted((rows[i] for i in idx), key=lambda r: r["key"])
        name = P.shard_name(cfg.name, si)
        tasks.append({"out": str(out), "shard": name, "opts": opts, "rows": srows, "plan_hash": _plan_hash(srows, opts), "src": src})
    log.line(
        f"[plan] {len(rows):,} samples of {len(classes):,} identities, {int(masked.sum()):,} masked "
        f"({(masked.mean() if len(masked) else 0):.4f}), {len(tasks)} shards; dropped/failed so far: {ws.reasons()}"
    )
    write_yaml(cfg, out / "build.yaml")
    _remove_stale(log.claim, {t["shard"] for t in tasks})
    log.timings["plan"] = time.perf_counter() - t_plan

    # 6. execute
    t_exec = time.perf_counter()
    results = _execute(cfg, out, tasks, log)
    log.timings["execute"] = time.perf_counter() - t_exec - log.timings.get("ray_start_execute", 0.0)

    closer = None
    if shutdown_ray and log.ray_started:
        closer = threading.Thread(target=_shutdown_ray, name="maskgen-ray-shutdown", daemon=True)
        closer.start()

    # 7. merge
    try:
        return _merge(cfg, out, src, ws, kept, rows, tasks, results, analysis, label_of, log, t_start)
    finally:
        if closer is not None:
            closer.join()


def _cap_groups(ws: F.WorkSet, columns: list[str], cap: int, seed: int) -> None:
    """Rebalance: keep at most ``cap`` usable images per group of the label ``columns``
    (a seeded choice, maskgen.audit.balance.cap_per_group); the rest are dropped with a reason."""
    from maskgen.audit.balance import CAP_REASON, cap_per_group

    if not columns:
        raise ValueError("cap_per_group needs demographic labels (--labels) to group by")
    cols = {c: ws.col(c) for c in columns}
    groups = ["|".join(f"{c}={cols[c][i]}" for c in columns) for i in range(len(ws.status))]
    keep = cap_per_group(groups, cap, seed, eligible=ws.pending)
    ws.mark(ws.pending & ~keep, STATUS_DROPPED, f"{CAP_REASON} ({cap})")


def _cold(cfg: BuildConfig, out: Path) -> bool:
    """A build with no landmark cache to read: every image is detected on Ray."""
    return not cfg.landmarks_from and not (out / A.CACHE_FILE).is_file()


def _analyze(cfg: BuildConfig, out: Path, ws: F.WorkSet, log: Progress, src: Source) -> tuple[list[dict | None], float]:
    """Landmarks for every pending row: cached rows are reused, the rest run on Ray. Also
    returns the seconds spent starting Ray here (0 when it was already running)."""
    cache_path = out / A.CACHE_FILE
    sources = [cache_path] + ([cfg.landmarks_from] if cfg.landmarks_from else [])
    tag = A.cache_tag(cfg.detector)
    cache = A.load_cache(sources, tag)
    t_ray = 0.0
    ck = ws.col("_cache_key")
    pend = np.flatnonzero(ws.pending)
    todo = [i for i in pend if ck[i] not in cache]
    log.line(f"[landmarks] {len(pend):,} images: {len(pend) - len(todo):,} cached, {len(todo):,} to detect")
    if todo:
        t = ws.table
        cols = {c: t.column(c).to_pylist() for c in ("source", "path", "offset", "nbytes", "member", "_cache_key")}
        chunks = [todo[i : i + cfg.chunk_size] for i in range(0, len(todo), cfg.chunk_size)]
        payloads = ({"rows": [{c: cols[c][i] for c in cols} for i in ch], "detector": cfg.detector, "tag": tag, "src": src} for ch in chunks)
        if cfg.detector in ("auto", "dlib"):
            _prepare_batch_model(log)
        t_ray = _timed_ray_start(cfg, log, "ray_start")
        window = cfg.workers or cluster_cpus()
        log.stage("landmarks", len(todo))
        counts = {"done": 0, "ok": 0, "failed": 0}
        saved = [time.perf_counter()]

        def on_done(task, result, error):
            if error is not None:
                result = [
                    {"_cache_key": r["_cache_key"], "detector": tag, "a_status": "failed",
                     "a_reason": f"worker error: {type(error).__name__}"}
                    for r in task["rows"]
                ]
                # not cached: a crashed worker is retried by the next run
                for r in result:
                    transient[r["_cache_key"]] = r
            else:
                for r in result:
                    cache[r["_cache_key"]] = A.compact(r)
            n_ok = sum(r["a_status"] == "ok" for r in result)
            counts["done"] += len(result)
            counts["ok"] += n_ok
            counts["failed"] += len(result) - n_ok
            if time.perf_counter() - saved[0] > CACHE_CHECKPOINT_S:  # a killed run keeps most of its work
                A.write_cache(cache, cache_path)
                saved[0] = time.perf_counter()
            log.update(counts["done"], counts["ok"], counts["failed"])

        transient: dict[str, dict] = {}
        run_window(_analyze_task, payloads, 2 * window, on_done)
        log.update(counts["done"], counts["ok"], counts["failed"], force=True)
        A.write_cache(cache, cache_path)
        cache = {**cache, **transient}
    elif not cache_path.is_file() and cache:
        A.write_cache(cache, cache_path)
    out_rows: list[dict | None] = [None] * ws.table.num_rows
    for i in pend:
        out_rows[i] = cache.get(ck[i])
    return out_rows, t_ray


def _samples_for_bytes(cfg: BuildConfig, rows: list[dict], order: list[int], opts: dict, log: Progress, src: Source) -> int:
    """Samples per shard for a ``shard_bytes`` target: the mean size of the first (seeded
    shuffle order) 32 samples as they will be written, tar headers included. The estimate is
    a pure function of the inputs, so the shard split stays reproducible."""
    from maskgen.pipelines.execute import _face_attributes, process_sample

    sizes = []
    for i in order[:32]:
        try:
            members, _ = process_sample(rows[i], opts, _face_attributes(), src)
        except Exception:  # a failing sample just does not count
            continue
        sizes.append(sum(512 + -(-len(b) // 512) * 512 for b in members.values()))
    mean = float(np.mean(sizes)) if sizes else 16384.0
    n = max(1, int(cfg.shard_bytes // mean))
    log.line(f"[plan] shard_bytes {cfg.shard_bytes:,}: ~{mean:,.0f} bytes per sample -> {n:,} samples per shard")
    return n


def _prepare_batch_model(log: Progress) -> None:
    """The workers fit landmarks in batches with dlib's model in array form: parse it here
    once per machine (~12 s) rather than in every worker."""
    from maskgen.masks.ert import ensure_cache
    from maskgen.masks.landmarks import predictor_path

    t = time.perf_counter()
    if ensure_cache(predictor_path()):
        log.line(f"[landmarks] dlib's 68-point model prepared for batched fitting in {time.perf_counter() - t:.1f} s (once per machine)")


def _shutdown_ray() -> None:
    import ray

    ray.shutdown()


def _timed_ray_start(cfg: BuildConfig, log: Progress, name: str) -> float:
    """Start (or join) Ray unless it is running; the seconds it took (0 when it was running)."""
    t = time.perf_counter()
    if start_ray(cfg.workers, cfg.ray_address):
        log.ray_started = not cfg.ray_address  # a cluster joined is left to its owner
        log.timings[name] = time.perf_counter() - t
        log.line(f"[ray] started locally with {cfg.workers or os.cpu_count()} CPUs in {log.timings[name]:.1f} s")
        return log.timings[name]
    return 0.0


def _analyze_task(payload: dict) -> list[dict]:
    from maskgen.pipelines.runner import one_thread

    one_thread()
    return A.analyze_rows(payload["rows"], payload["detector"], payload.get("tag"), payload["src"])


def _plan_rows(cfg, src, ws, kept, masked, analysis, label_of, label_cols, mix) -> list[dict]:
    t = ws.table
    cols = {c: t.column(c).to_pylist() for c in ("key", "identity", "source", "path", "offset", "member", "nbytes", "_cache_key")}
    labs = {c: t.column(c).to_pylist() for c in label_cols}
    rows = []
    for j, i in enumerate(kept):
        a = analysis[i]
        key = cols["key"][i]
        s = P.key_seed(cfg.seed, key)
        need_spec = bool(masked[j]) or cfg.twins
        rows.append(
            {
                **{c: cols[c][i] for c in cols},
                "label": label_of[cols["identity"][i]],
                "masked": bool(masked[j]),
                "seed": s,
                "spec": mix.draw(np.random.default_rng(s)) if need_spec else None,
                "landmarks": a["landmarks"],
                "box": a["box"],
                "det_score": a["det_score"],
                "yaw": a["yaw"],
                "pitch": a["pitch"],
                "roll": a["roll"],
                "relpath": src.relative_path(cols["path"][i], cols["member"][i], cols["offset"][i]),
                "demographics": {c: labs[c][i] for c in label_cols if labs[c][i] is not None},
            }
        )
    return rows


def _remove_stale(c: OutputClaim, names: set[str]) -> None:
    """Shards of an earlier, larger plan (named by this folder's records) would be picked up
    by a glob: remove them, and temp files of killed runs. Nothing the records do not name."""
    stale = _recorded_shards(c.out) - names
    finals: set[str] = set()
    for s in stale | names:
        finals.update(_shard_files(s))
    c.remove(sorted(f for s in stale for f in _shard_files(s)) + _temp_files(c.out, finals))


def _execute(cfg: BuildConfig, out: Path, tasks: list[dict], log: Progress) -> dict[str, dict]:
    results: dict[str, dict] = {}
    todo = []
    for t in tasks:
        st = shard_done(out, t["shard"], t["plan_hash"])
        if st is not None:
            results[t["shard"]] = {**st, "reused": True}
        else:
            todo.append(t)
    total = sum(len(t["rows"]) for t in tasks)
    done_rows = sum(len(t["rows"]) for t in tasks if t["shard"] in results)
    c = {
        "done": done_rows,
        "ok": sum(r["num_samples"] for r in results.values()),
        "failed": sum(r["num_failed"] for r in results.values()),
        "masked": sum(r["num_masked"] for r in results.values()),
        "shards": len(results),
    }
    log.line(f"[execute] {len(tasks)} shards: {len(results)} already done, {len(todo)} to build")
    if not todo:
        return results
    _timed_ray_start(cfg, log, "ray_start_execute")
    window = cfg.workers or cluster_cpus()
    log.stage("execute", total)

    def on_done(task, result, error):
        if error is not None:
            log.line(f"[execute] shard {task['shard']} failed: {type(error).__name__}: {error} (rerun to retry)")
            results[task["shard"]] = {"shard": task["shard"], "error": f"{type(error).__name__}: {error}",
                                      "num_samples": 0, "num_masked": 0, "num_failed": len(task["rows"])}
        else:
            results[task["shard"]] = result
        r = results[task["shard"]]
        c["done"] += len(task["rows"])
        c["ok"] += r["num_samples"]
        c["failed"] += r["num_failed"]
        c["masked"] += r["num_masked"]
        c["shards"] += 1
        log.update(c["done"], c["ok"], c["failed"], shards=(c["shards"], len(tasks)), masked=c["masked"], force=True)

    # The window is the worker count: one shard per worker, so memory is a few shards at most.
    run_window(run_shard, todo, window, on_done)
    return results


def _merge(cfg, out, src, ws, kept, rows, tasks, results, analysis, label_of, log, t_start) -> BuildResult:
    t_merge = time.perf_counter()
    n = ws.table.num_rows
    row_of = {k: i for i, k in enumerate(ws.col("key"))}
    # per-sample results of every shard (reused ones included) from their parquet files
    res_cols = {f.name: np.full(n, None, dtype=object) for f in RESULT_SCHEMA}
    for t in tasks:
        p = out / "stats" / (t["shard"][: -len(".tar")] + ".parquet")
        if "error" in results.get(t["shard"], {}) or not p.is_file():
            for r in t["rows"]:
                i = row_of[r["key"]]
                res_cols["status"][i] = STATUS_FAILED
                res_cols["reason"][i] = "shard task failed: " + results.get(t["shard"], {}).get("error", "missing")
            continue
        for r in pq.read_table(p).to_pylist():
            i = row_of[r["key"]]
            for k, v in r.items():
                res_cols[k][i] = v
    status = ws.status.copy()
    reason = ws.reason.copy()
    for i in kept:
        status[i] = res_cols["status"][i] or STATUS_FAILED
        reason[i] = res_cols["reason"][i]
    assert not (status == STATUS_PENDING).any()
    plan_by_key = {r["key"]: r for r in rows}
    t = ws.table
    cols: dict[str, Any] = {c: t.column(c) for c in t.column_names if not c.startswith("_")}
    cols["status"] = pa.array(status.tolist(), pa.string())
    cols["reason"] = pa.array(reason.tolist(), pa.string())
    idents = ws.col("identity")
    kept_mask = np.zeros(n, dtype=bool)
    kept_mask[kept] = True
    cols["label"] = pa.array([label_of[idents[i]] if kept_mask[i] else -1 for i in range(n)], pa.int32())
    keys = ws.col("key")
    plan = [plan_by_key.get(k) for k in keys]
    cols["shard"] = pa.array(res_cols["shard"].tolist(), pa.string())
    cols["masked"] = pa.array([p["masked"] if p else None for p in plan], pa.bool_())
    for col, sk in (("mask_type", "type"), ("mask_color", "color"), ("mask_texture", "texture"), ("wear", "wear")):
        cols[col] = pa.array([(p["spec"] or {}).get(sk) if p and p["spec"] else None for p in plan], pa.string())
    cols["seed"] = pa.array([p["seed"] if p else None for p in plan], pa.int64())
    for k in ("fit_score", "ita", "skin_tone", "sharpness", "brightness", "face_size"):
        cols[k] = pa.array(res_cols[k].tolist())
    for k in ("landmarks", "box", "det_score", "yaw", "pitch", "roll", "width", "height", "phash"):
        cols[k] = pa.array([a.get(k) if a else None for a in analysis], A.CACHE_SCHEMA.field(k).type)
    manifest = conform(pa.table(cols))
    manifest_path = write_manifest(manifest, out / "manifest.parquet")

    num_samples = sum(r.get("num_samples", 0) for r in results.values())
    num_masked = sum(r.get("num_masked", 0) for r in results.values())
    st = np.asarray(status)
    reason_counts = F.count_reasons(st, reason)
    shard_list = [
        {"name": t["shard"], "num_samples": results[t["shard"]].get("num_samples", 0),
         "num_masked": results[t["shard"]].get("num_masked", 0), "bytes": results[t["shard"]].get("bytes")}
        for t in tasks
    ]
    pattern = P.brace_pattern(cfg.name, len(tasks)) if tasks else None
    written_classes = sorted({plan_by_key[k]["label"] for k, s in zip(keys, status) if s == STATUS_OK})
    info = {
        "format": "webdataset",
        "version": FORMAT_VERSION,
        "source": src.describe(),
        "num_samples": num_samples,
        "num_classes": len(label_of),
        "num_classes_written": len(written_classes),
        "num_masked": num_masked,
        "ratio_requested": cfg.ratio,
        "ratio_realized": (num_masked / num_samples) if num_samples else 0.0,
        "twins": cfg.twins,
        "output": cfg.output,
        "image_size": cfg.image_size if cfg.output == "aligned" else None,
        "seed": cfg.seed,
        "members": ["jpg", "cls", "json"] + (["orig.jpg", "masked.jpg"] if cfg.twins else []),
        "pattern": f"shards/{pattern}" if pattern else None,
        "shards": shard_list,
        "num_inputs": n,
        "num_ok": int((st == STATUS_OK).sum()),
        "num_dropped": int((st == "dropped").sum()),
        "num_failed": int((st == STATUS_FAILED).sum()),
        "reasons": reason_counts,
        "label_columns": [c for c in manifest.column_names if c not in CORE_NAMES],
    }
    write_atomic(out / "dataset.json", (json.dumps(info, indent=1) + "\n").encode())
    write_atomic(out / "classes.tsv", "".join(f"{i}\t{n_}\n" for n_, i in sorted(label_of.items(), key=lambda x: x[1])).encode())
    log.timings["merge"] = time.perf_counter() - t_merge
    if cfg.report:
        t_rep = time.perf_counter()
        _write_report(out, log)
        log.timings["report"] = time.perf_counter() - t_rep
    secs = time.perf_counter() - t_start
    log.timings["total"] = secs
    timings = {k: round(v, 3) for k, v in log.timings.items()}
    write_atomic(out / "timings.json", (json.dumps(timings, indent=1) + "\n").encode())
    log.line("[timings] " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()))
    log.line(
        f"[done] {num_samples:,} samples ({num_masked:,} masked, ratio {info['ratio_realized']:.4f}) in "
        f"{len(tasks)} shards; inputs {n:,}: ok {info['num_ok']:,}, dropped {info['num_dropped']:,}, "
        f"failed {info['num_failed']:,}; {secs:.1f} s"
    )
    return BuildResult(
        out=out,
        num_samples=num_samples,
        num_classes=len(label_of),
        num_masked=num_masked,
        ratio=info["ratio_realized"],
        ratio_requested=cfg.ratio,
        num_inputs=n,
        num_dropped=info["num_dropped"],
        num_failed=info["num_failed"],
        shards=[out / "shards" / s["name"] for s in shard_list],
        pattern=str(out / "shards" / pattern) if pattern else None,
        manifest=manifest_path,
        dataset_json=out / "dataset.json",
        shards_built=sum(1 for r in results.values() if not r.get("reused") and "error" not in r),
        shards_reused=sum(1 for r in results.values() if r.get("reused")),
        shards_failed=sum(1 for r in results.values() if "error" in r),
        seconds=secs,
        reasons=reason_counts,
        timings=timings,
    )


def _write_report(out: Path, log: Progress) -> None:
    """The audit's balance report and data card, when the audit module provides them."""
    try:
        from maskgen.audit import write_build_report
    except ImportError:
        return
    try:
        write_build_report(out, reproduce=f"maskgen build --config {out / 'build.yaml'}")
    except Exception as exc:  # the shards are done; a report problem must not undo them
        log.line(f"[report] not written: {type(exc).__name__}: {exc}")
