"""Benchmark: full LFW (13,233 images) -> WebDataset shards at ratio 0.1, 1 vs 2 workers.

Each run is a fresh ``maskgen build`` process (its own local Ray, an empty output folder, so
landmarks are detected, not read from a cache). Memory is sampled every 0.2 s with psutil over
the whole process tree of the build: the driver plus Ray's workers and, separately, Ray's own
daemons (GCS, raylet, agents, monitors). Two measures: the sum of RSS (resident pages of each
process, so the shared libraries that every Python process maps — libpython, NumPy, OpenCV,
Ray's core — are counted once per process) and the sum of PSS (each shared page split between
the processes that map it: the physical memory the build actually occupies).

    MASKGEN_DATA_HOME=../shared/data python benchmarks/build_lfw.py            # 1 and 2 workers
    MASKGEN_DATA_HOME=../shared/data python benchmarks/build_lfw.py --workers 1 2 2 1   # ABBA, averaged
    python benchmarks/build_lfw.py --workers 2 --max-identities 500             # a quick look

Targets (2-core machine): < 90 s wall with both cores, >= 1.8x from 1 to 2 workers,
peak memory < 1.5 GB. Reference: MaskTheFace needs ~7 min for the same images on both cores
and writes loose files only.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

WORKER_MARKS = ("default_worker.py",)
RAY_DAEMONS = ("ray::DashboardAgent", "ray::RuntimeEnvAgent", "ray::JobAgent")  # not task workers


def _tree_memory(root: psutil.Process) -> dict[str, int]:
    """RSS and PSS in bytes of ``root`` and its descendants: driver + Ray workers, Ray daemons."""
    out = {"main": 0, "daemons": 0, "pss_main": 0, "pss_daemons": 0}
    try:
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return out
    for p in procs:
        try:
            mem = p.memory_full_info()  # rss, and pss from /proc/<pid>/smaps_rollup
            cmd = " ".join(p.cmdline())
        except psutil.Error:
            continue
        is_worker = (cmd.startswith("ray::") or any(m in cmd for m in WORKER_MARKS)) and not cmd.startswith(RAY_DAEMONS)
        part = "main" if p.pid == root.pid or is_worker else "daemons"
        out[part] += mem.rss
        out["pss_" + part] += getattr(mem, "pss", mem.rss)
    return out


def run_once(workers: int, args: argparse.Namespace, out: Path) -> dict:
    cmd = [sys.executable, "-m", "maskgen", "build", args.source, "-o", str(out), "--ratio", str(args.ratio),
           "--workers", str(workers), "--mode", "overwrite", "--seed", "0"]
    if args.max_identities:
        cmd += ["--max-identities", str(args.max_identities)]
    if not args.report:
        cmd.append("--no-report")
    env = {**os.environ, "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"}
    peak = {"main": 0, "daemons": 0, "total": 0, "pss_main": 0, "pss_total": 0}
    load = []
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    root = psutil.Process(proc.pid)
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            mem = _tree_memory(root)
            peak["main"] = max(peak["main"], mem["main"])
            peak["daemons"] = max(peak["daemons"], mem["daemons"])
            peak["total"] = max(peak["total"], mem["main"] + mem["daemons"])
            peak["pss_main"] = max(peak["pss_main"], mem["pss_main"])
            peak["pss_total"] = max(peak["pss_total"], mem["pss_main"] + mem["pss_daemons"])
            load.append(os.getloadavg()[0])
            stop.wait(0.2)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    output = proc.communicate()[0]
    wall = time.perf_counter() - t0
    stop.set()
    th.join()
    if proc.returncode != 0:
        print(output[-4000:], file=sys.stderr)
        raise SystemExit(f"build with {workers} worker(s) failed (exit {proc.returncode})")
    info = json.loads((out / "dataset.json").read_text())
    timings = json.loads((out / "timings.json").read_text())
    n_in = info["num_inputs"] - sum(v for k, v in info["reasons"].items() if k.startswith("dropped: beyond max_identities"))
    work = timings.get("landmarks", 0) + timings.get("execute", 0)
    return {
        "workers": workers,
        "wall_s": wall,
        "work_s": work,  # landmarks + execute stages, without Ray start-up
        "timings": timings,
        "images": n_in,
        "images_per_s": n_in / wall,
        "images_per_s_work": n_in / work if work else 0.0,
        "samples": info["num_samples"],
        "ratio_realized": info["ratio_realized"],
        "success_rate": info["num_samples"] / n_in if n_in else 0.0,
        "reasons": info["reasons"],
        "peak_rss_driver_workers_mb": peak["main"] / 2**20,
        "peak_rss_ray_daemons_mb": peak["daemons"] / 2**20,
        "peak_rss_total_mb": peak["total"] / 2**20,
        "peak_pss_driver_workers_mb": peak["pss_main"] / 2**20,
        "peak_pss_total_mb": peak["pss_total"] / 2**20,
        "load_avg_mean": sum(load) / len(load) if load else 0.0,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", default="lfw")
    ap.add_argument("--ratio", type=float, default=0.1)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--max-identities", type=int, default=None)
    ap.add_argument("--report", action="store_true", help="also write the balance report and data card")
    ap.add_argument("--out", type=Path, default=None, help="keep the builds here (default: a temp folder)")
    ap.add_argument("--json", type=Path, default=None, help="write the figures as JSON")
    args = ap.parse_args()
    base = args.out or Path(tempfile.mkdtemp(prefix="maskgen-bench-"))
    print(f"machine: {os.cpu_count()} CPUs, load average before: {os.getloadavg()[0]:.2f}")
    runs = []
    for w in args.workers:
        r = run_once(w, args, base / f"run{len(runs)}-w{w}")
        runs.append(r)
        print(
            f"workers={w}: wall {r['wall_s']:.1f} s ({r['images_per_s']:.1f} img/s), stages landmarks+execute "
            f"{r['work_s']:.1f} s ({r['images_per_s_work']:.1f} img/s), ray start "
            f"{r['timings'].get('ray_start', 0):.1f} s | {r['samples']:,}/{r['images']:,} written "
            f"(success {r['success_rate']:.2%}), realized ratio {r['ratio_realized']:.4f} | peak RSS driver+workers "
            f"{r['peak_rss_driver_workers_mb']:.0f} MB, Ray daemons {r['peak_rss_ray_daemons_mb']:.0f} MB, total "
            f"{r['peak_rss_total_mb']:.0f} MB | peak PSS driver+workers {r['peak_pss_driver_workers_mb']:.0f} MB, "
            f"everything {r['peak_pss_total_mb']:.0f} MB | mean load {r['load_avg_mean']:.1f}"
        )
        print(f"  timings: {r['timings']}")
        print(f"  not written: {r['reasons']}")
    # repeated worker counts (e.g. --workers 1 2 2 1: the host's speed drifts, and an ABBA order
    # cancels a linear drift) are averaged; the speed-up is the ratio of the mean walls
    by: dict[int, list[dict]] = {}
    for r in runs:
        by.setdefault(r["workers"], []).append(r)

    def mean(w: int, key: str) -> float:
        return sum(r[key] for r in by[w]) / len(by[w])

    if 1 in by and 2 in by:
        n1, n2 = len(by[1]), len(by[2])
        print(
            f"speed-up 1 -> 2 workers (mean of {n1} and {n2} run(s)): wall {mean(1, 'wall_s') / mean(2, 'wall_s'):.2f}x, "
            f"landmarks+execute {mean(1, 'work_s') / mean(2, 'work_s'):.2f}x"
        )
    if 2 in by:
        wall2 = mean(2, "wall_s")
        peak2 = max(r["peak_pss_total_mb"] for r in by[2])
        gb = 1024.0
        speed = mean(1, "wall_s") / wall2 if 1 in by else None
        print(
            f"targets (2 workers): mean wall {wall2:.1f} s < 90 s: {'met' if wall2 < 90 else 'not met'}; "
            + (f"speed-up {speed:.2f}x >= 1.8x: {'met' if speed >= 1.8 else 'not met'}; " if speed else "")
            + f"peak memory (PSS, everything incl. Ray daemons) {peak2 / gb:.2f} GB < 1.5 GB: "
            f"{'met' if peak2 < 1.5 * gb else 'not met'}"
        )
    if args.json:
        args.json.write_text(json.dumps(runs, indent=1))


if __name__ == "__main__":
    main()
