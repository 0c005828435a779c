"""``maskgen build``: a face dataset -> WebDataset shards with an exact mask ratio.

Stages (one-way): scan -> identity filters -> prepare -> landmarks (cached) -> join (failures,
duplicates) -> plan -> execute shard by shard -> merge (manifest, dataset.json, report).

The driver is a coordinator. From the scan on, rows live on disk as Parquet parts under
``<out>/work`` (scan parts, partition parts, the landmark cache, plan parts, per-shard
results) and every per-row step is a Ray task that reads and writes those parts and returns
counts. The driver keeps per-identity arrays (:class:`~maskgen.pipelines.scan.Identities`)
and per-shard arrays only: never a Python object per image, never a stage's rows.
"""

from __future__ import annotations

import json
import os
import re
import stat
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from maskgen.datasets import filters as F
from maskgen.datasets.manifest import CORE_NAMES
from maskgen.datasets.sources import parse_source
from maskgen.errors import InputError, MaskgenError, OutputError
from maskgen.outputs import OutputClaim, claim, is_tmp_of, replacing, write_file
from maskgen.parallel import cluster_cpus, start_ray
from maskgen.pipelines import analyze as A
from maskgen.pipelines import plan as P
from maskgen.pipelines.config import BUILD, BuildConfig, signature, write_yaml
from maskgen.pipelines.execute import run_shard, shard_done, verify_task
from maskgen.masks.mix import MaskMix
from maskgen.pipelines.merge import classes_tsv, manifest_task, write_names
from maskgen.pipelines.parts import join_task, part_path, plan_task, prepare_task
from maskgen.pipelines.progress import BuildProgress
from maskgen.pipelines.runner import driver_memory, error_line, release_memory, run_window
from maskgen.pipelines.scan import Identities, Reasons, ScanHelper, scan_notes, scan_task, units

FORMAT_VERSION = 4  # bump when the bytes written for the same plan change (4: the portable ITA arithmetic)
ATTRIBUTE_SAMPLE_RATE = 0.1  # share of pass-through samples measured by attributes="sample"/"auto"
VERIFY_BATCH = 64  # finished shards whose digest one task re-checks on resume
CHUNKS_PER_TASK = 16  # at most this many landmark chunks per task


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


def build(source: str | os.PathLike | None = None, out: str | os.PathLike | None = None, *,
          config: str | os.PathLike | None = None, **options: Any) -> BuildResult:
    """Build WebDataset shards from ``source`` into ``out`` (see docs/build.md).

    The keyword arguments are the options of ``maskgen build`` (:data:`BUILD`, checked by the
    same code as the flags and the YAML); ``config`` names a YAML file (or a shipped config) of
    the same keys. Every argument passed beats the YAML, even one equal to its default;
    ``source``/``out`` left at None are not given (the YAML may hold them).
    """
    given = {k: v for k, v in (("source", source), ("out", out)) if v is not None}
    with warnings.catch_warnings(record=True) as notes:
        warnings.simplefilter("always", FutureWarning)
        cfg = BUILD.resolve(config, **given, **options)
    for note in notes:  # deprecated names: one warning each, pointing at the caller's line
        warnings.warn(note.message, note.category, stacklevel=2)
    return run_build(cfg)


build.__signature__ = signature()  # type: ignore[attr-defined]


# ---- the output folder: only files its own records name are ever deleted ----

# Files a build writes at the top of its folder (the landmark cache is kept on overwrite: it is
# keyed by file identity and detector, so it is never stale).
TOP_OUTPUTS = ("manifest.parquet", "dataset.json", "build.yaml", "classes.tsv", "timings.json")
WORK_STAGES = ("scan", "part", "joined", "plan")
NAMES_FILE = "identities.arrow"  # work/: the sorted identity names, from prepare to merge
_SHARD_RE = re.compile(r"[^/.]+-\d{6}\.tar")
_PART_RE = re.compile(r"(u|p)-\d{5}\.parquet")


def _recorded_shards(out: Path) -> set[str]:
    """Shard names this folder's own records name: every ``stats/*.json`` written by a shard
    task and the previous ``dataset.json``. Only these are ever deleted (never a user's
    ``.tar`` that happens to sit in ``shards/``)."""
    names: set[str] = set()
    stats_dir = out / "stats"
    if _real_dir(stats_dir):
        for p in stats_dir.iterdir():
            if p.suffix == ".json" and _SHARD_RE.fullmatch(p.stem + ".tar") and _real_file(p):
                try:
                    rec = json.loads(p.read_bytes()[:1_000_000])
                except ValueError:
                    continue
                if isinstance(rec, dict) and rec.get("shard") == p.stem + ".tar":
                    names.add(rec["shard"])
    info = {}
    if _real_file(out / "dataset.json"):
        try:
            info = json.loads((out / "dataset.json").read_bytes()[:200_000_000])
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


def _real_file(p: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(p).st_mode)
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
            if p.name.endswith(".tmp") and any(p.name == n + ".tmp" or is_tmp_of(p.name, n) for n in names):
                found.append(f"{d}/{p.name}" if d else p.name)
    return found


def _work_files(out: Path) -> list[str]:
    """The build's own intermediate parts (names it gives them, in folders it made)."""
    found = []
    for stage in WORK_STAGES:
        d = out / "work" / stage
        if _real_dir(out / "work") and _real_dir(d):
            for p in d.iterdir():
                base = p.name.split(".parquet")[0] + ".parquet" if ".parquet" in p.name else p.name
                if _PART_RE.fullmatch(base) and (p.name == base or is_tmp_of(p.name, base)):
                    found.append(f"work/{stage}/{p.name}")
    if _real_dir(out / "work"):  # the identity names, kept for classes.tsv
        found += [f"work/{p.name}" for p in (out / "work").iterdir()
                  if p.name == NAMES_FILE or is_tmp_of(p.name, NAMES_FILE)]
    return found


def _clean_outputs(c: OutputClaim) -> None:
    """Overwrite mode: remove what this folder's records name, nothing else."""
    finals = set(TOP_OUTPUTS)
    for s in _recorded_shards(c.out):
        finals.update(_shard_files(s))
    c.remove(sorted(finals) + _temp_files(c.out, finals) + _work_files(c.out) + _report_files(c.out))


def _report_files(out: Path) -> list[str]:
    """The report an earlier build wrote here (:func:`maskgen.audit.files.report_files`)."""
    from maskgen.audit import report_files

    return report_files(out)


def _remove_stale(c: OutputClaim, names: set[str]) -> None:
    """Shards of an earlier, larger plan (named by this folder's records) would be picked up
    by a glob: remove them, and temp files of killed runs. Nothing the records do not name."""
    stale = _recorded_shards(c.out) - names
    finals: set[str] = set()
    for s in stale | names:
        finals.update(_shard_files(s))
    c.remove(sorted(f for s in stale for f in _shard_files(s)) + _temp_files(c.out, finals | set(TOP_OUTPUTS)))


# ---- the build ----


def run_build(cfg: BuildConfig, *, shutdown_ray: bool = False) -> BuildResult:
    """Run a build. ``shutdown_ray``: stop a local Ray instance that this build started as
    soon as the last shard is written, while the manifest and report are written (the CLI
    sets it: Ray's shutdown takes 1-2 s, and the process ends with the build anyway)."""
    t_start = time.perf_counter()
    with claim(cfg.out, "build", mode=cfg.mode) as owned:
        out = owned.out
        for d in ("shards", "stats", "work", A.CACHE_DIR):
            if os.path.lexists(out / d) and not _real_dir(out / d):
                raise OutputError(f"{out / d} is a link or a file; a build writes only into folders it made (remove it)")
        if cfg.mode == "overwrite":
            _clean_outputs(owned)
        log = BuildProgress(out / "build.log", echo=not cfg.quiet)
        try:
            return _Build(cfg, owned, log, t_start, shutdown_ray).run()
        finally:
            log.close()


def plan_opts(cfg: BuildConfig) -> dict[str, Any]:
    """The rendering options of the shard plan. Its keys keep their first names (``output``,
    ``jpeg_quality``) whatever the options are called now: they are hashed into every shard's
    plan hash, which resume compares, so a folder built before a rename is the same build."""
    opts = {"output": cfg.image_mode, "image_size": cfg.image_size, "jpeg_quality": cfg.quality, "twins": cfg.twins}
    if cfg.min_fit is not None:  # masks: reject renders below the fit score threshold
        opts["min_fit"] = cfg.min_fit
    return opts


class _Build:
    """One build's driver state: options, the identity table, per-shard arrays."""

    def __init__(self, cfg: BuildConfig, owned: OutputClaim, log: BuildProgress, t_start: float, shutdown_ray: bool):
        self.cfg = cfg
        self.owned = owned
        self.out = owned.out
        self.work = self.out / "work"
        self.log = log
        self.t_start = t_start
        self.shutdown_ray = shutdown_ray
        self.timings: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self.rss: dict[str, dict[str, float]] = {}
        self.ray_started = False
        self.user_error: Exception | None = None

    # -- helpers --

    def _stage(self, name: str, t: float, c: float) -> None:
        self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - t
        self.cpu[name] = self.cpu.get(name, 0.0) + time.process_time() - c
        self.rss[name] = driver_memory()  # before the release: what the stage itself held
        release_memory()

    def _map(self, fn, tasks: list, window: int | None = None, on_done=None) -> tuple[list, dict[int, str]]:
        """Run ``fn`` over ``tasks`` on Ray (bounded window); results in task order, and the
        error of each task that failed after Ray's retries."""
        results: list = [None] * len(tasks)
        errors: dict[int, str] = {}
        order = {id(t): i for i, t in enumerate(tasks)}

        def done(task, result, error):
            i = order[id(task)]
            if error is not None:
                errors[i] = error_line(error)
                cause = getattr(error, "cause", None) or error
                if isinstance(cause, MaskgenError) and self.user_error is None:
                    self.user_error = cause  # e.g. a full disk: the build stops with its one line
            else:
                results[i] = result
            if on_done is not None:
                on_done(i, result, error)

        run_window(fn, tasks, window or self.window, done)
        return results, errors

    def _fatal(self, what: str, errors: dict[int, str]) -> None:
        self._user_error()
        if errors:
            i, e = next(iter(sorted(errors.items())))
            self.log.line(f"[{what}] {len(errors)} task(s) failed, e.g. #{i}: {e}")
            raise OutputError(f"{what} failed: {e} (rerun to resume)") from None

    def _user_error(self) -> None:
        """Stop on an error of the environment a task met (disk full, read-only, permission):
        every other task would meet it too; the message names the file."""
        if self.user_error is not None:
            self.log.line(f"[error] {self.user_error}")
            raise type(self.user_error)(str(self.user_error))

    # -- stages --

    def run(self) -> BuildResult:
        cfg, log = self.cfg, self.log
        self.mix = MaskMix.resolve(cfg.mask_mix, mask_types=cfg.mask_type, wear=cfg.wear, texture_prob=cfg.texture_prob)
        eval_sets = {e: F.eval_names(e) for e in (cfg.exclude_eval or [])}  # fail fast on a missing file
        self.label_cols = _label_columns(cfg.labels)
        strat = cfg.stratify if cfg.stratify is not None else self.label_cols
        missing = [c for c in strat if c not in self.label_cols]
        if missing:
            raise ValueError(f"stratify: no label column(s) {missing}; the labels give {self.label_cols}")
        if cfg.cap_per_group is not None and not strat:
            raise ValueError("cap_per_group needs demographic labels (--labels) to group by")
        self.strat = list(strat)
        log.line(f"build {cfg.source} -> {self.out} (ratio {cfg.ratio}, seed {cfg.seed}, mode {cfg.mode})")
        self.src = parse_source(cfg.source, cfg.identity_depth)
        self._scan(eval_sets)
        self._prepare()
        self._landmarks()
        self._join()
        self._plan()
        results = self._execute()
        # the report's chart helper imports matplotlib while the manifest and dataset.json are written
        self.report_helper = _report_helper() if cfg.report else None
        closer = None
        try:
            man = self._manifest(results)  # the last Ray task
            if self.shutdown_ray and self.ray_started:
                closer = threading.Thread(target=_shutdown_ray, name="maskgen-ray-shutdown", daemon=True)
                closer.start()
            return self._merge(results, man)
        finally:
            if closer is not None:
                closer.join()
            if self.report_helper is not None:
                self.report_helper.close()

    def _start_ray(self) -> None:
        t, c = time.perf_counter(), time.process_time()
        started, how = start_ray(self.cfg.workers, self.cfg.ray_address, quiet=self.cfg.quiet)
        self.cpu["ray_start"] = time.process_time() - c
        self.ray_started = started and not self.cfg.ray_address
        self.window = self.cfg.workers or cluster_cpus()
        self.timings["ray_start"] = time.perf_counter() - t
        self.log.line(f"[ray] {how} in {self.timings['ray_start']:.1f} s; {self.window} tasks at a time")

    def _scan(self, eval_sets: dict[str, set[str]]) -> None:
        cfg = self.cfg
        t, c = time.perf_counter(), time.process_time()
        us = units(self.src)
        tasks = [{"src": self.src, "unit": u, "index": i, "path": str(self.work / "scan" / f"u-{i:05d}.parquet")}
                 for i, u in enumerate(us)]
        # A local Ray takes seconds to start: meanwhile a helper process scans units (as a task
        # would: part written, counts returned; the driver neither holds their rows nor spends
        # CPU on them), the rest run as tasks once Ray is up. (Ray starts in the main thread:
        # it installs signal handlers.)
        early: dict[int, pa.Table] = {}
        ray_up = threading.Event()

        def scan_early() -> None:
            with ScanHelper() as helper:
                while not ray_up.is_set() and len(early) < len(tasks):
                    result = helper.scan(tasks[len(early)])
                    if result is None:
                        return  # the helper failed: the units it did not finish run on Ray
                    early[len(early)] = result

        with ThreadPoolExecutor(1, thread_name_prefix="maskgen-scan") as ex:
            scanning = ex.submit(scan_early) if not cfg.ray_address else None
            try:
                self._start_ray()
            finally:
                ray_up.set()
            if scanning is not None:
                scanning.result()
        t_ray = self.timings["ray_start"]
        rest, errors = self._map(scan_task, tasks[len(early):])
        self._fatal("scan", errors)
        counts = [early[i] for i in range(len(early))] + rest
        early.clear()
        del rest
        self.scan_files = [tk["path"] for tk, ct in zip(tasks, counts) if ct.num_rows]
        notes = scan_notes(counts)  # what the scan skipped without a row: in the units' tasks
        ids = Identities.from_counts(counts)  # empties counts
        # what later stages need of the identity table: the names (sorted) and the key width;
        # the counts stay in this stage
        self.names, self.key_width, self.n_ids = ids.names, ids.key_width, len(ids)
        n_rows = int(ids.n_rows.sum())
        self.log.line(f"[scan] {n_rows:,} images, {len(ids):,} identities in {self.src.describe()} ({len(us)} unit(s))")
        for note, count in self.src.notes.items():  # and while listing the units, here
            notes[note] = notes.get(note, 0) + count
        for note, count in sorted(notes.items()):
            self.log.line(f"[scan] {note} ({count:,})")
        if n_rows == 0:
            raise InputError(f"no image found in {self.src.describe()}: nothing to build")
        # identity filters that need no pixels (vectorized over the identity table)
        n = len(ids)
        pre = Reasons(n)
        names = ids.names
        if cfg.include:
            pre.mark(~_isin(names, F.read_names(cfg.include)), "not in include list")
        if cfg.exclude:
            pre.mark(_isin(names, F.read_names(cfg.exclude)), "in exclude list")
        for e, s in eval_sets.items():
            pre.mark(_isin(names, s), f"evaluation identity ({e})")
        usable = ids.n_usable
        if cfg.min_images > 1:
            pre.mark((usable > 0) & (usable < cfg.min_images),
                     (usable, lambda v: f"identity has fewer than min_images ({v} < {cfg.min_images})"))
        post = Reasons(n)
        if cfg.max_identities:
            post.mark_beyond(pre.free & (usable > 0), cfg.max_identities, f"beyond max_identities ({cfg.max_identities})")
        self.reason_pre, self.reason_post = pre, post
        self.parts = ids.partitions()
        self._stage("scan", t, c)
        self.timings["scan"] -= min(t_ray, self.timings["scan"])  # the overlap is counted once, as ray_start
        self.cpu["scan"] -= min(self.cpu["ray_start"], self.cpu["scan"])

    def _prepare(self) -> None:
        cfg = self.cfg
        t, c = time.perf_counter(), time.process_time()
        names = self.names
        tasks = []
        for p, (lo, hi) in enumerate(self.parts):
            tasks.append({
                "index": p, "lo": lo, "hi": hi, "names": pa.concat_arrays([names[lo:hi]]),
                "reason_pre": self.reason_pre.part(lo, hi), "reason_post": self.reason_post.part(lo, hi),
                "scan_files": self.scan_files, "key_width": self.key_width, "max_images": cfg.max_images,
                "seed": cfg.seed, "labels": str(Path(cfg.labels).resolve()) if cfg.labels else None,
                "chunk_size": cfg.chunk_size, "path": str(part_path(self.work, "part", p)),
            })
        res, errors = self._map(prepare_task, tasks)
        self._fatal("prepare", errors)
        self.pending_chunks = [r["pending_per_chunk"] for r in res]
        # in the partitions now; the names wait on disk for classes.tsv
        del self.reason_pre, self.reason_post
        self.names_file = self.work / NAMES_FILE
        with replacing(self.names_file) as tmp:
            write_names(tmp, self.names)
        del self.names
        self._stage("prepare", t, c)

    def _landmarks(self) -> None:
        cfg, log = self.cfg, self.log
        t, c = time.perf_counter(), time.process_time()
        self.tag = A.cache_tag(cfg.backend)
        from_dirs = [str(Path(cfg.landmarks_from).resolve())] if cfg.landmarks_from and Path(cfg.landmarks_from).is_dir() else []
        legacy = A.legacy_caches([self.out] + ([cfg.landmarks_from] if cfg.landmarks_from else []))
        chunks = [(p, j) for p, per in enumerate(self.pending_chunks) for j, k in enumerate(per) if k]
        # cheap chunks (aligned crops) travel several per task; the outputs do not depend on it
        group = int(np.clip(len(chunks) // (16 * self.window), 1, CHUNKS_PER_TASK))
        tasks = []
        for p in range(len(self.parts)):
            mine = [j for q, j in chunks if q == p]
            for a in range(0, len(mine), group):
                tasks.append({"part": str(part_path(self.work, "part", p)), "part_index": p, "chunks": mine[a : a + group],
                              "tag": self.tag, "detector": cfg.backend, "out": str(self.out),
                              "from_dirs": from_dirs, "legacy": legacy, "src": self.src, "defer": not cfg.dedup})
        total = sum(sum(per) for per in self.pending_chunks)
        log.line(f"[landmarks] {total:,} images in {len(chunks):,} chunks ({len(tasks):,} tasks)")
        if cfg.backend in ("auto", "cnn", "dlib") and tasks and not (cfg.backend == "auto" and self._looks_aligned(tasks[0])):
            self._stage("landmarks", t, c)
            t, c = time.perf_counter(), time.process_time()
            _prepare_batch_model(log)  # one-time model preparation: its own line in the timings
            self._stage("model_prep", t, c)
            t, c = time.perf_counter(), time.process_time()
        log.stage("landmarks", total)
        counts = {"done": 0, "ok": 0, "failed": 0, "computed": 0}

        def on_done(i, r, error):
            task = tasks[i]
            per = self.pending_chunks[task["part_index"]]
            counts["done"] += sum(per[j] for j in task["chunks"])
            if error is None:
                for x in r:
                    counts["ok"] += x["ok"]
                    counts["failed"] += x["failed"]
                    counts["computed"] += x["computed"]
            else:
                counts["failed"] += sum(per[j] for j in task["chunks"])
            log.update(counts["done"], counts["ok"], counts["failed"])

        res, errors = self._map(A.chunks_task, tasks, window=2 * self.window, on_done=on_done)
        self._user_error()
        log.update(counts["done"], counts["ok"], counts["failed"], force=True)
        log.line(f"[landmarks] {counts['done'] - counts['computed']:,} from the cache, {counts['computed']:,} analyzed")
        self.chunk_names: list[list[str]] = [[] for _ in self.parts]
        self.chunk_errors: list[dict[int, str]] = [{} for _ in self.parts]
        for i, task in enumerate(tasks):
            p = task["part_index"]
            if i in errors:
                log.line(f"[landmarks] chunks {p}/{task['chunks'][0]}.. failed: {errors[i]} (rerun to retry)")
                for j in task["chunks"]:
                    self.chunk_errors[p][j] = errors[i]
            else:
                self.chunk_names[p].extend(x["name"] for x in res[i])
        self._stage("landmarks", t, c)

    def _looks_aligned(self, task: dict) -> bool:
        """Whether the first images are aligned crops (square, <= 128 px, from their headers
        only): then no chunk needs dlib's detector, and its model is not prepared."""
        import io

        import pyarrow.parquet as pq
        from PIL import Image

        from maskgen.pipelines.scan import read_bytes

        rows = pq.ParquetFile(task["part"]).read_row_group(task["chunks"][0]).to_pylist()
        rows = [r for r in rows if r["status"] == "pending"][:4]
        try:
            sizes = [Image.open(io.BytesIO(read_bytes(self.src, r))).size for r in rows]
        except Exception:  # an unreadable first image: prepare the model, as for photos
            return False
        return bool(sizes) and all(w == h and w <= 128 for w, h in sizes)

    def _join(self) -> None:
        cfg = self.cfg
        t, c = time.perf_counter(), time.process_time()
        tasks = [{"index": p, "lo": lo, "hi": hi, "part": str(part_path(self.work, "part", p)),
                  "path": str(part_path(self.work, "joined", p)), "out": str(self.out), "tag": self.tag,
                  "chunk_names": self.chunk_names[p], "chunk_errors": self.chunk_errors[p],
                  "chunk_size": cfg.chunk_size, "dedup": cfg.dedup, "threshold": cfg.dedup_threshold,
                  "stratify": self.strat, "cap": cfg.cap_per_group is not None, "seed": cfg.seed}
                 for p, (lo, hi) in enumerate(self.parts)]
        res, errors = self._map(join_task, tasks)
        self._fatal("join", errors)
        n = self.n_ids
        usable = np.zeros(n, np.int64)
        for (lo, hi), r in zip(self.parts, res):
            usable[lo:hi] = r.pop("usable")
        # identity filters after failures and duplicates
        late = Reasons(n)
        if cfg.min_images > 1:
            late.mark((usable > 0) & (usable < cfg.min_images),
                      (usable, lambda v: f"identity has fewer than min_images ({v} < {cfg.min_images} after failures)"))
        if cfg.min_masked > 0:
            got = np.floor(cfg.ratio * usable + 1e-9).astype(np.int64)
            late.mark((usable > 0) & (got < cfg.min_masked),
                      (got, lambda v: f"identity keeps fewer than min_masked masked images ({v} < {cfg.min_masked})"))
            del got
        alive = late.free & (usable > 0)
        # cells: (group, identity) -> usable count, for the allocation
        cap = None
        if self.strat:
            cells = pa.concat_tables([r["cells"] for r in res])
            cells = cells.filter(pa.array(alive[cells.column("_id").to_numpy()]))
            if cfg.cap_per_group is not None:
                cap, cells = _cap(res, alive, cfg.cap_per_group)
            groups = cells.column("group").to_pylist()
            gnames = sorted(set(groups), key=P.group_sort_key)
            grank = {g: i for i, g in enumerate(gnames)}
            cell_group = np.array([grank[g] for g in groups], np.int64)
            cell_id = cells.column("_id").to_numpy().astype(np.int64)
            cell_n = cells.column("n").to_numpy().astype(np.int64)
            cell_g = groups
        else:  # one group: cells are the living identities, in identity order
            cell_id = np.flatnonzero(alive).astype(np.int32 if n < 2**31 else np.int64)
            cell_n = usable[cell_id]
            cell_group = np.zeros(len(cell_id), np.int8)
            cell_g = None
        del usable, alive
        if cell_g is not None:  # unstratified cells are in identity order already
            order = np.lexsort((cell_id, cell_group))
            cell_id, cell_n, cell_group = cell_id[order], cell_n[order], cell_group[order]
            cell_g = [cell_g[i] for i in order]
            del order
        m = P.allocate_cells(cell_group, cell_n, cfg.ratio, cfg.seed)
        del cell_group
        if cell_g is None:  # one cell per identity: its count is the identity's
            n_plan = np.zeros(n, np.int64)
            n_plan[cell_id] = cell_n
        else:
            n_plan = np.bincount(cell_id, weights=cell_n, minlength=n).astype(np.int64)
        kept = n_plan > 0
        labels = np.cumsum(kept, dtype=np.int32 if n < 2**31 else np.int64)
        labels -= 1
        labels[~kept] = -1
        self.labels = labels  # the class id of each identity (-1: none)
        self.kept = kept
        self.n_plan = n_plan
        self.reason_late = late
        self.cap = cap
        # masked count per cell, grouped by partition for the plan tasks
        # (arrays, not a dict of cells: the driver's state stays a few bytes per identity)
        nz = np.flatnonzero(m)
        los = np.array([lo for lo, _ in self.parts], np.int64)
        part_of = np.searchsorted(los, cell_id[nz], side="right") - 1
        by_part = np.argsort(part_of, kind="stable")  # cells come by group first when stratified
        nz, part_of = nz[by_part], part_of[by_part]
        bounds = np.searchsorted(part_of, np.arange(len(self.parts) + 1))
        self.cell_m = []
        for p in range(len(self.parts)):
            sel = nz[bounds[p] : bounds[p + 1]]
            self.cell_m.append({"ids": cell_id[sel].astype(np.int64), "m": m[sel].astype(np.int64),
                                "groups": None if cell_g is None else [cell_g[k] for k in sel]})
        self.n_total = int(n_plan.sum())
        self.n_masked_planned = int(m.sum())
        self._stage("join", t, c)

    def _plan(self) -> None:
        cfg, log = self.cfg, self.log
        t, c = time.perf_counter(), time.process_time()
        base = np.cumsum(self.n_plan) - self.n_plan
        attributes = _attribute_mode(cfg.attributes)
        self.opts = opts = plan_opts(cfg)
        self.head = json.dumps({"v": FORMAT_VERSION, "opts": opts}, sort_keys=True)

        def task(p: int, per_shard: int, estimate: int = 0) -> dict:
            lo, hi = self.parts[p]
            return {"index": p, "lo": lo, "hi": hi, "part": str(part_path(self.work, "joined", p)),
                    "path": str(part_path(self.work, "plan", p)), "reason_late": self.reason_late.part(lo, hi),
                    "cap": self.cap, "cell_m": self.cell_m[p], "labels": self.labels[lo:hi],
                    "rank_base": int(base[lo]) if lo < len(base) else 0, "n_total": self.n_total,
                    "per_shard": per_shard, "seed": cfg.seed, "shuffle": cfg.shuffle, "mix": self.mix,
                    "twins": cfg.twins, "attributes": attributes, "stratify": self.strat,
                    "label_columns": self.label_cols, "opts": opts, "src": self.src, "estimate": estimate}

        per_shard = cfg.samples_per_shard
        if cfg.shard_bytes and self.n_total:
            first = next(p for p, (lo, hi) in enumerate(self.parts) if self.n_plan[lo:hi].sum())
            (mean,), errors = self._map(plan_task, [task(first, per_shard, estimate=32)], window=1)
            self._fatal("shard size estimate", errors)
            per_shard = max(1, int(cfg.shard_bytes // (mean or 16384.0)))
            log.line(f"[plan] shard_bytes {cfg.shard_bytes:,}: ~{mean or 16384.0:,.0f} bytes per sample -> {per_shard:,} samples per shard")
        self.per_shard = per_shard
        res, errors = self._map(plan_task, [task(p, per_shard) for p in range(len(self.parts))])
        self._fatal("plan", errors)
        self.plan_files = [str(part_path(self.work, "plan", p)) for p in range(len(self.parts))]
        ns = P.num_shards(self.n_total, per_shard)
        counts = np.zeros(ns, np.int64)
        lanes = np.zeros((ns, 2), np.uint64)
        self.reasons: dict[str, int] = {}
        self.num_inputs = self.num_dropped = self.num_failed_before = 0
        self.holds = np.zeros((len(self.parts), ns), bool)  # partition p holds rows of shard s
        for r in res:
            if len(r["shards"]):
                self.holds[r["index"], r["shards"]] = True
                counts[r["shards"]] += r["counts"]
                P.add_lanes(lanes, r["shards"].astype(np.int64), r["lanes"])
            for k, v in r["reasons"].items():
                self.reasons[k] = self.reasons.get(k, 0) + v
            self.num_inputs += r["rows"]
            self.num_dropped += r["dropped"]
            self.num_failed_before += r["failed"]
        self.shard_counts = counts
        self.shard_hashes = [P.shard_hash(self.head, counts[s], lanes[s]) for s in range(ns)]
        self.shard_names = [P.shard_name(cfg.name, s) for s in range(ns)]
        log.line(
            f"[plan] {self.n_total:,} samples of {int(self.kept.sum()):,} identities, {self.n_masked_planned:,} masked "
            f"({self.n_masked_planned / self.n_total if self.n_total else 0:.4f}), {ns} shards; "
            f"dropped/failed so far: {dict(sorted(self.reasons.items()))}"
        )
        write_yaml(cfg, self.out / "build.yaml")
        _remove_stale(self.owned, set(self.shard_names))
        del self.labels, self.cell_m, self.reason_late, self.n_plan, res  # in the plan parts now
        self._stage("plan", t, c)

    def _execute(self) -> dict[int, dict]:
        log = self.log
        t, c = time.perf_counter(), time.process_time()
        results: dict[int, dict] = {}
        candidates = {}
        for s, (name, h) in enumerate(zip(self.shard_names, self.shard_hashes)):
            st = shard_done(self.out, name, h)
            if st is not None:
                candidates[s] = st
        if candidates:  # a finished shard is reused only if its tar still has its digest
            items = sorted(candidates)
            batches = [items[i : i + VERIFY_BATCH] for i in range(0, len(items), VERIFY_BATCH)]
            vt = [{"out": str(self.out), "shards": [(self.shard_names[s], candidates[s]["sha256"]) for s in b]} for b in batches]
            good, _ = self._map(verify_task, vt)
            ok = {n for g in good if g for n in g}
            for s, st in candidates.items():
                if self.shard_names[s] in ok:
                    results[s] = {**st, "reused": True}
            bad = len(candidates) - len(results)
            if bad:
                log.line(f"[execute] {bad} finished shard(s) do not match their recorded size/digest: rebuilt")
        todo = [s for s in range(len(self.shard_names)) if s not in results]
        total = int(self.shard_counts.sum())
        cnt = {"done": int(sum(self.shard_counts[s] for s in results)),
               "ok": sum(r["num_samples"] for r in results.values()),
               "failed": sum(r["num_failed"] for r in results.values()),
               "masked": sum(r["num_masked"] for r in results.values()), "shards": len(results)}
        log.line(f"[execute] {len(self.shard_names)} shards: {len(results)} already done, {len(todo)} to build")
        self._stage("execute_check", t, c)
        t, c = time.perf_counter(), time.process_time()
        if todo:
            log.stage("execute", total)
            tasks = [{"out": str(self.out), "shard": self.shard_names[s], "index": s,
                      "plan_files": [self.plan_files[p] for p in np.flatnonzero(self.holds[:, s])],
                      "opts": self.opts, "plan_hash": self.shard_hashes[s], "src": self.src,
                      "label_columns": self.label_cols} for s in todo]

            def on_done(i, r, error):
                s = todo[i]
                if error is not None:
                    msg = error_line(error)
                    log.line(f"[execute] shard {self.shard_names[s]} failed: {msg} (rerun to retry)")
                    r = {"shard": self.shard_names[s], "error": msg, "num_samples": 0, "num_masked": 0,
                         "num_failed": int(self.shard_counts[s]), "failures": {"failed: shard task failed": int(self.shard_counts[s])}}
                results[s] = r
                cnt["done"] += int(self.shard_counts[s])
                cnt["ok"] += r["num_samples"]
                cnt["failed"] += r["num_failed"]
                cnt["masked"] += r["num_masked"]
                cnt["shards"] += 1
                log.update(cnt["done"], cnt["ok"], cnt["failed"], shards=(cnt["shards"], len(self.shard_names)),
                           masked=cnt["masked"], force=True)

            # one shard per worker at a time: memory is a few shards at most
            self._map(run_shard, tasks, on_done=on_done)
            self._user_error()
        self._stage("execute", t, c)
        return results

    def _manifest(self, results: dict[int, dict]) -> dict:
        """``manifest.parquet``, written by one task from the parts (never gathered here)."""
        t, c = time.perf_counter(), time.process_time()
        shards = [(s, self.shard_names[s], results[s].get("error")) for s in range(len(self.shard_names))]
        (man,), errors = self._map(manifest_task, [{"out": str(self.out), "plan_files": self.plan_files, "shards": shards,
                                                    "label_columns": self.label_cols}], window=1)
        self._fatal("manifest", errors)
        self._stage("merge", t, c)
        return man

    def _merge(self, results: dict[int, dict], man: dict) -> BuildResult:
        cfg, log = self.cfg, self.log
        t, c = time.perf_counter(), time.process_time()
        ns = len(self.shard_names)
        reasons = dict(self.reasons)
        for r in results.values():
            for k, v in r.get("failures", {}).items():
                reasons[k] = reasons.get(k, 0) + v
        reasons = dict(sorted(reasons.items()))
        num_samples = sum(r.get("num_samples", 0) for r in results.values())
        num_masked = sum(r.get("num_masked", 0) for r in results.values())
        num_failed = self.num_failed_before + sum(r.get("num_failed", 0) for r in results.values())
        n_attr = sum(r.get("num_attributes", 0) for r in results.values())
        n_pass = sum(r.get("num_passthrough", 0) for r in results.values())
        shard_list = [{"name": self.shard_names[s], "num_samples": results[s].get("num_samples", 0),
                       "num_masked": results[s].get("num_masked", 0), "bytes": results[s].get("bytes"),
                       "sha256": results[s].get("sha256")} for s in range(ns)]
        pattern = P.brace_pattern(cfg.name, ns) if ns else None
        mode, rate = _attribute_mode(cfg.attributes)
        info = {
            "format": "webdataset",
            "version": FORMAT_VERSION,
            "source": self.src.describe(),
            "num_samples": num_samples,
            "num_classes": int(self.kept.sum()),
            "num_classes_written": int(man["classes_written"]),
            "num_masked": num_masked,
            "ratio_requested": cfg.ratio,
            "ratio_realized": (num_masked / num_samples) if num_samples else 0.0,
            "twins": cfg.twins,
            "output": cfg.image_mode,
            "image_size": cfg.image_size if cfg.image_mode == "aligned" else None,
            "seed": cfg.seed,
            "members": ["jpg", "cls", "json"] + (["orig.jpg", "masked.jpg"] if cfg.twins else []),
            "pattern": f"shards/{pattern}" if pattern else None,
            "shards": shard_list,
            "num_inputs": self.num_inputs,
            "num_ok": num_samples,
            "num_dropped": self.num_dropped,
            "num_failed": num_failed,
            "reasons": reasons,
            "label_columns": list(self.label_cols),
            "attributes": {"mode": mode, "sample_rate": rate if mode in ("sample", "auto") else None,
                           "measured": n_attr, "of": num_samples,
                           "note": _ATTR_NOTE[mode]},
            "passthrough": n_pass,
            "landmarks_layout": "68 iBUG points, flat [x0, y0, ..., x67, y67]: 'landmarks' in source pixels, "
                                "'landmarks_crop' in the written image's pixels",
            "paths": "relative to the source root",
        }
        if cfg.record_root:
            info["source_root"] = str(Path(self.src.root))
        write_file(self.out / "dataset.json", (json.dumps(info, indent=1, ensure_ascii=False) + "\n").encode())
        write_file(self.out / "classes.tsv", classes_tsv(self.names_file, self.kept))  # block by block
        self._stage("merge", t, c)
        if cfg.report:
            t_rep = time.perf_counter()
            _write_report(self.out, log, self.report_helper)
            self.timings["report"] = time.perf_counter() - t_rep
        else:  # a report left by an earlier build would describe another set of samples
            old = self.owned.remove(_report_files(self.out))
            if old:
                log.line(f"[report] not written (--no-report); the earlier report was removed: {', '.join(old[:4])}"
                         + (f" and {len(old) - 4} more" if len(old) > 4 else ""))
        secs = time.perf_counter() - self.t_start
        self.timings["total"] = secs
        timings = {k: round(v, 3) for k, v in self.timings.items()}
        timings["driver_cpu"] = {k: round(v, 3) for k, v in self.cpu.items()}
        timings["driver_memory_mib"] = self.rss  # at each stage end: RSS now and the peak so far
        write_file(self.out / "timings.json", (json.dumps(timings, indent=1) + "\n").encode())
        log.line("[timings] " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items() if not isinstance(v, dict)))
        log.line(
            f"[done] {num_samples:,} samples ({num_masked:,} masked, ratio {info['ratio_realized']:.4f}) in "
            f"{ns} shards; inputs {self.num_inputs:,}: ok {num_samples:,}, dropped {self.num_dropped:,}, "
            f"failed {num_failed:,}; {secs:.1f} s"
        )
        res = BuildResult(
            out=self.out,
            num_samples=num_samples,
            num_classes=int(self.kept.sum()),
            num_masked=num_masked,
            ratio=info["ratio_realized"],
            ratio_requested=cfg.ratio,
            num_inputs=self.num_inputs,
            num_dropped=self.num_dropped,
            num_failed=num_failed,
            shards=[self.out / "shards" / s["name"] for s in shard_list],
            pattern=str(self.out / "shards" / pattern) if pattern else None,
            manifest=self.out / "manifest.parquet",
            dataset_json=self.out / "dataset.json",
            shards_built=sum(1 for r in results.values() if not r.get("reused") and "error" not in r),
            shards_reused=sum(1 for r in results.values() if r.get("reused")),
            shards_failed=sum(1 for r in results.values() if "error" in r),
            seconds=secs,
            reasons=reasons,
            timings=timings,
        )
        if num_samples == 0:
            raise InputError(
                f"no usable image in {self.src.describe()}: all {self.num_inputs:,} inputs were dropped or failed "
                f"({', '.join(f'{k} {v:,}' for k, v in list(reasons.items())[:3])}); see {self.out / 'manifest.parquet'}")
        return res


_ATTR_NOTE = {
    "all": "every written sample",
    "sample": "a seeded uniform sample of the written samples",
    "auto": "every sample whose pixels are decoded anyway; a seeded sample of those whose bytes pass through",
    "none": "not measured",
}


def _attribute_mode(mode: str) -> tuple[str, float]:
    return mode, ATTRIBUTE_SAMPLE_RATE


def _label_columns(labels: str | None) -> list[str]:
    """The label columns of a labels CSV, from its header (the file is joined in the tasks)."""
    if not labels:
        return []
    import csv

    from maskgen.datasets.labels import JOIN_COLUMNS

    with open(labels, newline="", encoding="utf-8") as f:
        header = next(csv.reader(f), [])
    if not any(c in header for c in JOIN_COLUMNS):
        raise ValueError(f"{labels}: needs an 'identity', 'file' or 'path' column to join on")
    cols = [c for c in header if c not in JOIN_COLUMNS]
    clash = [c for c in cols if c in CORE_NAMES or c in ("key",)]
    if clash:
        raise ValueError(f"{labels}: label column(s) {clash} clash with manifest columns")
    return cols


def _isin(names: pa.Array, values: set[str]) -> np.ndarray:
    if not values:
        return np.zeros(len(names), bool)
    return pc.is_in(names, value_set=pa.array(sorted(values), pa.string())).to_numpy(zero_copy_only=False)


def _cap(res: list[dict], alive: np.ndarray, cap: int):
    """Rebalancing: keep at most ``cap`` usable images per label group, the ones with the
    smallest seeded priority. Returns ``(cap, {group: threshold})`` and the recounted cells.
    (Per-image priorities come back from the join tasks: 8 bytes per usable image.)"""
    g = np.concatenate([r["cap"]["group"] for r in res]) if res else np.zeros(0, object)
    ids = np.concatenate([r["cap"]["_id"] for r in res]) if res else np.zeros(0, np.int64)
    prio = np.concatenate([r["cap"]["prio"] for r in res]) if res else np.zeros(0, np.int64)
    keep = alive[ids]
    g, ids, prio = g[keep], ids[keep], prio[keep]
    thr: dict[str, int] = {}
    kept = np.ones(len(g), bool)
    for name in set(g.tolist()):
        m = np.flatnonzero(g == name)
        if len(m) > cap:
            t = int(np.sort(prio[m])[cap - 1])
            thr[name] = t
            kept[m] = prio[m] <= t
    cells = pa.table({"group": pa.array(g[kept].tolist(), pa.string()), "_id": pa.array(ids[kept])})
    cells = cells.group_by(["group", "_id"]).aggregate([("_id", "count")]).rename_columns(["group", "_id", "n"])
    return (cap, thr), cells


def _prepare_batch_model(log: BuildProgress) -> None:
    """The workers fit landmarks in batches with dlib's model in array form: parse it here
    once per machine (~12 s) rather than in every worker; and save dlib's HOG detector in
    serialized form, which each worker loads in milliseconds."""
    from maskgen.masks.ert import ensure_cache
    from maskgen.masks.landmarks import frontal_detector, predictor_path

    t = time.perf_counter()
    if ensure_cache(predictor_path()):
        log.line(f"[landmarks] dlib's 68-point model prepared for batched fitting in {time.perf_counter() - t:.1f} s (once per machine)")
    frontal_detector()  # written (or a damaged copy replaced) here: each worker then loads it in ~3 ms


def _shutdown_ray() -> None:
    from maskgen.parallel import stop_ray

    stop_ray()  # also gives Ray's loggers back the levels a quiet start changed


def _report_helper():
    """The report's chart helper process (:func:`maskgen.audit.figure_helper`), or None."""
    try:
        from maskgen.audit import figure_helper

        return figure_helper()
    except Exception:  # the report draws every chart itself
        return None


def _write_report(out: Path, log: BuildProgress, helper=None) -> None:
    """The audit's balance report and data card, when the audit module provides them."""
    try:
        from maskgen.audit import write_build_report
    except ImportError:
        return
    try:
        write_build_report(out, reproduce="maskgen build --config build.yaml", helper=helper)
    except Exception as exc:  # the shards are done; a report problem must not undo them
        log.line(f"[report] not written: {type(exc).__name__}: {exc}")
