"""Benchmark: `maskgen build` of an insightface `.rec` of N aligned 112x112 crops at ratio 0.1.

The `.rec` is made from LFW's aligned crops (a `maskgen build lfw --ratio 0 --image-mode aligned`
once, kept in the work folder), repeated as new identities up to N records
(`maskgen.datasets.recordio.repeat_as_new_identities`), as MS1M/Glint360K/WebFace releases
ship them. Each N is one fresh `maskgen build recordio:... --ratio 0.1 --workers W --no-report`
process (its own local Ray, an empty output folder). The process tree is sampled at nice 19:
the driver's RSS every 0.2 s (its peak: that or the kernel's high-water mark the build
records at each stage end, `timings.json["driver_memory_mib"]`, whichever is higher), the PSS
of every process (driver, Ray workers, Ray daemons) once a second. CPU seconds come from each process's last sample.

Printed per N, against the targets of the scale work:
- driver peak RSS (target: at the largest N at most 1.2x the smallest N's, and < 1 GB);
- peak PSS of all processes (target: < 2 GB + 0.5 GB per worker);
- images per second per core end to end: N / (wall x workers), and N / CPU-seconds of all
  processes (the second does not depend on what else the machine runs) (target >= 1,000,
  and at the largest N within 10% of the middle one);
- driver CPU microseconds per image in plan (identity table, filters, allocation, the plan
  tasks' orchestration) and merge (resume check, manifest task, dataset.json) (target <= 5 us),
  and, apart, in dispatching the landmark and shard tasks (Ray's per-task cost in the driver).

    MASKGEN_DATA_HOME=../shared/data python benchmarks/build_scale.py --sizes 10000 100000
    MASKGEN_DATA_HOME=../shared/data python benchmarks/build_scale.py --sizes 1000000
    python benchmarks/build_scale.py --work /big/disk/bench --sizes 10000 --keep   # keep the builds
    MASKGEN_DATA_HOME=../shared/data python benchmarks/build_scale.py --sizes 10000 --split 6

``--split K`` also runs shards 1..K-1 of the first N's plan again in this process (shard 0
first, to load modules and models) and prints where a shard task's CPU goes per image: record
reads, decode, the deferred aligned landmark fit, mask render, attributes, JPEG encode, the
sample JSON, tar and Parquet writes, and the rest (the per-sample loop and its dicts).

The work folder (default `~/.cache/maskgen/bench-scale`) holds the crops and the `.rec` files
(~4.5 KB per record); builds are removed after their figures are taken unless `--keep`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from build_lfw import run_sampled  # noqa: E402

GB = 1024**3
PLAN_STAGES = ("scan", "prepare", "join", "plan")  # identity table, filters, allocation, plan tasks
MERGE_STAGES = ("execute_check", "merge")  # resume check, manifest task, dataset.json, classes.tsv
DISPATCH_STAGES = ("landmarks", "execute")  # submitting and collecting landmark and shard tasks


def lfw_crops(work: Path, workers: int) -> list[tuple[int, bytes]]:
    """(label, JPEG bytes) of LFW's aligned 112x112 crops, grouped by label (built once)."""
    out = work / "lfw-crops"
    if not (out / "dataset.json").is_file():
        cmd = [sys.executable, "-m", "maskgen", "build", "lfw", "-o", str(out), "--ratio", "0", "--no-shuffle",
               "--attributes", "none", "--no-report", "--workers", str(workers), "--quiet"]
        print("making LFW's aligned crops once:", " ".join(cmd[2:]), flush=True)
        subprocess.run(cmd, check=True)
    by_id: dict[str, list[bytes]] = {}
    for tar in sorted((out / "shards").glob("*.tar")):
        with tarfile.open(tar) as tf:
            metas, jpgs = {}, {}
            for m in tf:
                key, ext = m.name.split(".", 1)
                data = tf.extractfile(m).read()
                if ext == "json":
                    metas[key] = json.loads(data)["identity"]
                elif ext == "jpg":
                    jpgs[key] = data
            for k in sorted(jpgs):
                by_id.setdefault(metas[k], []).append(jpgs[k])
    return [(label, img) for label, name in enumerate(sorted(by_id)) for img in by_id[name]]


def make_rec(work: Path, n: int, crops: list[tuple[int, bytes]]) -> Path:
    from maskgen.datasets.recordio import repeat_as_new_identities, write_recordio

    rec = work / f"rec-{n}" / "train.rec"
    if not rec.is_file():
        t = time.perf_counter()
        write_recordio(repeat_as_new_identities(crops, n), rec)
        print(f"wrote {rec.name} of {n:,} records ({rec.stat().st_size / 2**20:,.0f} MiB) in {time.perf_counter() - t:.0f} s",
              flush=True)
    return rec


def run_build(rec: Path, out: Path, workers: int, ratio: float) -> dict:
    cmd = [sys.executable, "-m", "maskgen", "build", f"recordio:{rec}", "-o", str(out), "--ratio", str(ratio),
           "--workers", str(workers), "--no-report", "--mode", "overwrite", "--seed", "0"]
    env = {**os.environ, "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"}
    proc, output, wall, peak, sampler, _ = run_sampled(cmd, env)
    if proc.returncode != 0:
        print(output[-4000:], file=sys.stderr)
        raise SystemExit(f"build of {rec} failed (exit {proc.returncode})")
    info = json.loads((out / "dataset.json").read_text())
    tm = json.loads((out / "timings.json").read_text())
    cpu = sampler.cpu_seconds()
    dcpu = tm.get("driver_cpu", {})
    n = info["num_inputs"]
    return {
        "n": n, "workers": workers, "wall_s": wall, "samples": info["num_samples"], "masked": info["num_masked"],
        "passthrough": info.get("passthrough"), "ratio_realized": info["ratio_realized"],
        # the sampled peak, or the kernel's high-water mark at the last stage end when it is
        # higher (a peak shorter than the 0.2 s sampling interval)
        "driver_peak_rss_mb": max([peak["root_rss"] / 2**20] + [v.get("peak", 0.0) for v in tm.get("driver_memory_mib", {}).values()]),
        "driver_peak_rss_sampled_mb": peak["root_rss"] / 2**20, "peak_pss_total_mb": peak["pss_total"] / 2**20,
        "peak_rss_total_mb": peak["total"] / 2**20,
        "img_s_per_core_wall": n / wall / workers,
        # CPU of every process, less the one-time model preparation (when another build on
        # the machine invalidated the per-machine model cache)
        "img_per_cpu_s": n / max(1e-9, sum(cpu.values()) - dcpu.get("model_prep", 0.0)),
        "cpu_s": cpu, "timings": {k: v for k, v in tm.items() if not isinstance(v, dict)}, "driver_cpu_s": dcpu,
        "driver_memory_mib": tm.get("driver_memory_mib", {}),
        "driver_us_plan": 1e6 * sum(dcpu.get(k, 0.0) for k in PLAN_STAGES) / n,
        "driver_us_merge": 1e6 * sum(dcpu.get(k, 0.0) for k in MERGE_STAGES) / n,
        "driver_us_dispatch": 1e6 * sum(dcpu.get(k, 0.0) for k in DISPATCH_STAGES) / n,
        "driver_cpu_total_s": dcpu and sum(dcpu.values()),
        "load_after": os.getloadavg()[0],
    }


SPLIT_STEPS = (  # (module, function, label) timed inside a shard task by --split
    ("maskgen.pipelines.scan", "read_bytes", "read record"),
    ("maskgen.masks", "decode_image", "decode"),
    ("maskgen.masks", "detect_faces", "aligned landmark fit"),
    ("maskgen.masks", "mask_face", "mask render"),
    ("maskgen.pipelines.execute", "face_attributes", "attributes"),
    ("maskgen.pipelines.execute", "encode_jpeg", "JPEG encode"),
    ("maskgen.pipelines.execute", "sample_json", "sample JSON"),
    ("maskgen.pipelines.execute", "jpeg_info", "JPEG headers"),
    ("maskgen.pipelines.execute", "tar_bytes", "tar bytes"),
    ("maskgen.pipelines.execute", "write_file", "write tar + json"),
    ("maskgen.pipelines.execute", "read_shard_rows", "read plan rows"),
    ("maskgen.pipelines.execute", "to_manifest", "stats table"),
    ("pyarrow.parquet", "write_table", "write stats Parquet"),
)


def shard_split(build: Path, rec: Path, shards: int) -> None:
    """Per-image CPU of a shard task by step (see the module doc), in this process."""
    import collections
    import importlib

    from maskgen.datasets.sources import parse_source
    from maskgen.pipelines import execute as E
    from maskgen.pipelines import plan as P

    acc: collections.Counter = collections.Counter()
    inside = [0]

    def timed(fn, label):
        def wrapper(*a, **k):
            if inside[0]:  # a step inside a step counts once, for the outer one
                return fn(*a, **k)
            inside[0] += 1
            c = time.process_time()
            try:
                return fn(*a, **k)
            finally:
                acc[label] += time.process_time() - c
                inside[0] -= 1
        return wrapper

    for mod, name, label in SPLIT_STEPS:
        m = importlib.import_module(mod)
        setattr(m, name, timed(getattr(m, name), label))
    info = json.loads((build / "dataset.json").read_text())
    opts = {"output": info["output"], "image_size": info["image_size"], "jpeg_quality": 95, "twins": info["twins"]}
    scratch = build / "split"
    for d in ("shards", "stats"):
        (scratch / d).mkdir(parents=True, exist_ok=True)
    plan_files = sorted(str(p) for p in (build / "work" / "plan").glob("*.parquet"))
    tasks = [{"out": str(scratch), "shard": P.shard_name("train", s), "index": s, "plan_files": plan_files, "opts": opts,
              "plan_hash": "split", "src": parse_source(f"recordio:{rec}", 1), "label_columns": []}
             for s in range(min(shards, len(info["shards"])))]
    E.run_shard(tasks[0])
    acc.clear()
    c = time.process_time()
    n = sum(E.run_shard(t)["num_samples"] for t in tasks[1:])
    cpu = time.process_time() - c
    print(f"shard task CPU split ({len(tasks) - 1} shards, {n:,} samples, in-process): {1e3 * cpu / max(n, 1):.3f} "
          f"CPU-ms per image ({n / max(cpu, 1e-9):,.0f} per CPU-second)")
    for label, v in sorted(acc.items(), key=lambda kv: -kv[1]):
        print(f"  {label:22s} {1e6 * v / max(n, 1):7.1f} us/img")
    print(f"  {'rest (loop, dicts)':22s} {1e6 * (cpu - sum(acc.values())) / max(n, 1):7.1f} us/img", flush=True)
    shutil.rmtree(scratch, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--ratio", type=float, default=0.1)
    ap.add_argument("--work", type=Path, default=Path.home() / ".cache" / "maskgen" / "bench-scale")
    ap.add_argument("--keep", action="store_true", help="keep the build folders")
    ap.add_argument("--keep-rec", action="store_true", help="keep the .rec files for the next run")
    ap.add_argument("--json", type=Path, help="append the figures to this JSON-lines file")
    ap.add_argument("--split", type=int, metavar="K", default=0,
                    help="after the first N, time shards 1..K-1 of its plan step by step in this process")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}", flush=True)
    crops = lfw_crops(args.work, args.workers)
    print(f"{len(crops):,} LFW aligned crops of {len({c for c, _ in crops}):,} identities", flush=True)
    runs = []
    for n in args.sizes:
        rec = make_rec(args.work, n, crops)
        out = args.work / f"out-{n}"
        r = run_build(rec, out, args.workers, args.ratio)
        runs.append(r)
        print(
            f"N={n:,}: wall {r['wall_s']:.1f} s | {r['img_s_per_core_wall']:,.0f} img/s per core (wall), "
            f"{r['img_per_cpu_s']:,.0f} img per CPU-second | driver peak RSS {r['driver_peak_rss_mb']:.0f} MiB | "
            f"peak PSS all {r['peak_pss_total_mb']:.0f} MiB | driver CPU {r['driver_us_plan']:.2f} us/img plan + "
            f"{r['driver_us_merge']:.2f} us/img merge (+ {r['driver_us_dispatch']:.2f} us/img dispatching landmark and shard tasks) | "
            f"{r['samples']:,} written, {r['masked']:,} masked ({r['ratio_realized']:.4f}), "
            f"{r['passthrough']:,} passed through | load {r['load_after']:.1f}", flush=True)
        print(f"  stages (s): {json.dumps({k: round(v, 1) for k, v in r['timings'].items()})}")
        print(f"  CPU seconds: {json.dumps({k: round(v, 1) for k, v in r['cpu_s'].items()})}", flush=True)
        mem = r["driver_memory_mib"]
        if mem:  # which stage raised the driver's peak, and what it still held at its end
            print("  driver MiB at each stage end (RSS / peak so far): "
                  + ", ".join(f"{k} {v.get('rss', 0):.0f}/{v.get('peak', 0):.0f}" for k, v in mem.items()), flush=True)
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps(r) + "\n")
        if args.split and n == args.sizes[0]:
            shard_split(out, rec, args.split)
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)
        if not args.keep_rec and n >= 1_000_000:
            shutil.rmtree(rec.parent, ignore_errors=True)
    lo, hi = runs[0], runs[-1]
    w = args.workers
    print("targets:")
    if len(runs) >= 2:
        print(f"  driver peak RSS {hi['driver_peak_rss_mb']:.0f} MiB at N={hi['n']:,} <= 1.2 x {lo['driver_peak_rss_mb']:.0f} MiB "
              f"at N={lo['n']:,} and < 1 GB: {'met' if hi['driver_peak_rss_mb'] <= 1.2 * lo['driver_peak_rss_mb'] and hi['driver_peak_rss_mb'] < 1024 else 'not met'}")
    else:  # growth needs two sizes in one run; say so rather than compare a size with itself
        print(f"  driver peak RSS {hi['driver_peak_rss_mb']:.0f} MiB at N={hi['n']:,} < 1 GB: "
              f"{'met' if hi['driver_peak_rss_mb'] < 1024 else 'not met'} (the 1.2x growth target needs two --sizes)")
    worst = max(r["peak_pss_total_mb"] for r in runs)
    print(f"  peak PSS of all processes {worst:.0f} MiB < {(2 + 0.5 * w) * 1024:.0f} MiB: {'met' if worst < (2 + 0.5 * w) * 1024 else 'not met'}")
    best = min(r["img_per_cpu_s"] for r in runs)
    print(f"  >= 1,000 images per core-second: slowest N {best:,.0f} per CPU-second, "
          f"{min(r['img_s_per_core_wall'] for r in runs):,.0f} per core by wall: {'met' if best >= 1000 else 'not met'}")
    if len(runs) >= 2:
        mid = runs[-2]
        rel = hi["img_per_cpu_s"] / mid["img_per_cpu_s"]
        print(f"  speed at N={hi['n']:,} vs N={mid['n']:,}: {rel:.2f}x (within 10%: {'met' if rel >= 0.9 else 'not met'})")
    worst_us = max(r["driver_us_plan"] + r["driver_us_merge"] for r in runs)
    print(f"  driver CPU plan + merge {worst_us:.2f} us per image <= 5: {'met' if worst_us <= 5 else 'not met'}")


if __name__ == "__main__":
    main()
