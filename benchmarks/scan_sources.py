"""Streaming scans: peak memory and speed of scanning a RecordIO file and folders of many
files at two sizes, and the speed of the RecordIO writer.

    MASKGEN_DATA_HOME=../shared/data python benchmarks/scan_sources.py            # 100 k and 1 M
    MASKGEN_DATA_HOME=../shared/data python benchmarks/scan_sources.py --sizes 10000 100000

Inputs are made from real LFW images (centre crops resized to 112x112, JPEG q95): a ``.rec`` +
``.idx`` of N records (the crops repeated as new identities) and folders of N files (hard
links to the crops: real sizes, little disk) laid out as identities of 100 images and as one
flat folder. Each scan runs in a fresh process that consumes the batches and keeps nothing;
it prints that process's peak RSS (``VmHWM``), its peak above the RSS after imports, and
rows per CPU-second. The memory target: the peak at the large size is within 1.2x of the small
one (no per-image Python objects beyond one batch). The ``.rec`` is also scanned without its
``.idx`` (one sequential pass over headers). Files are written under ``--work`` (default: the
system temp folder) and removed afterwards unless ``--keep``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, os, resource, sys, time
from maskgen.datasets.sources import parse_source

def hwm_kib():  # this process's peak RSS (VmHWM restarts at exec, unlike ru_maxrss)
    try:
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) for l in f if l.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

spec, depth = sys.argv[1], int(sys.argv[2])
base = hwm_kib()
t, c = time.perf_counter(), time.process_time()
src = parse_source(spec, identity_depth=depth)
rows = bad = 0
units = src.scan_units()
for u in units:
    for b in src.scan_unit(u):
        rows += b.num_rows
        bad += b.num_rows - b.column("_drop").null_count
peak = hwm_kib()
print(json.dumps({"rows": rows, "bad": bad, "units": len(units), "wall": time.perf_counter() - t,
                  "cpu": time.process_time() - c, "peak_mib": peak / 1024, "over_import_mib": (peak - base) / 1024}))
"""


def crops(n: int) -> list[tuple[int, bytes]]:
    """``n`` real 112x112 JPEG crops of LFW, labelled by person, grouped by label."""
    import cv2

    from maskgen.datasets.lfw import lfw_dir

    root = lfw_dir(download=False)
    out: list[tuple[int, bytes]] = []
    for label, person in enumerate(sorted(p for p in root.iterdir() if p.is_dir())):
        for f in sorted(person.iterdir()):
            img = cv2.imread(str(f))[69:181, 69:181]
            ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 95])
            out.append((label, buf.tobytes()))
        if len(out) >= n:
            return out[:n]
    return out


def scan(spec: str, depth: int = 1) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", CHILD, spec, str(depth)], capture_output=True, text=True, env=env, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def make_folders(work: Path, n: int, files: list[Path]) -> tuple[Path, Path]:
    nested, flat = work / f"nested-{n}", work / f"flat-{n}"
    for i in range(n):
        d = nested / f"id{i // 100:07d}"
        if i % 100 == 0:
            d.mkdir(parents=True)
        os.link(files[i % len(files)], d / f"{i:08d}.jpg")
    flat.mkdir()
    for i in range(n):
        os.link(files[i % len(files)], flat / f"{i:08d}.jpg")
    return nested, flat


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--work", default=tempfile.gettempdir())
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    from maskgen.datasets import recordio as R

    work = Path(tempfile.mkdtemp(prefix="maskgen-scan-bench-", dir=args.work))
    try:
        base = crops(2000)
        pool = work / "pool"
        pool.mkdir()
        files = []
        for i, (_, data) in enumerate(base):
            (pool / f"{i}.jpg").write_bytes(data)
            files.append(pool / f"{i}.jpg")
        mean = sum(len(d) for _, d in base) / len(base)
        print(f"{len(base)} real LFW crops, {mean:,.0f} bytes each on average; {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
        results: dict[str, dict[int, dict]] = {}
        for n in args.sizes:
            rec = work / f"n{n}" / "train.rec"
            t, c = time.perf_counter(), time.process_time()
            R.write_recordio(R.repeat_as_new_identities(base, n), rec)
            wall, cpu = time.perf_counter() - t, time.process_time() - c
            size = rec.stat().st_size
            print(f"[write] {n:>9,} records: {wall:6.1f} s wall, {cpu:6.1f} s CPU, {n / cpu:,.0f} records/CPU-s, "
                  f"{size / wall / 2**20:,.0f} MiB/s ({size / 2**30:.2f} GiB)")
            runs = {"recordio + idx": (str(rec), 1)}
            noidx = work / f"n{n}" / "noidx"
            noidx.mkdir()
            os.link(rec, noidx / "train.rec")
            runs["recordio, no idx"] = (str(noidx / "train.rec"), 1)
            nested, flat = make_folders(work, n, files)
            runs["folder, 100 per identity"] = (str(nested), 1)
            runs["folder, flat"] = (str(flat), 0)
            for name, (spec, depth) in runs.items():
                r = scan(spec, depth)
                results.setdefault(name, {})[n] = r
                print(f"[scan] {name:<26} {n:>9,}: {r['rows']:,} rows ({r['bad']} with a reason) in {r['units']} units, "
                      f"{r['wall']:6.1f} s wall, {r['rows'] / r['cpu']:,.0f} rows/CPU-s, peak RSS {r['peak_mib']:,.0f} MiB "
                      f"({r['over_import_mib']:,.0f} MiB above imports)")
            shutil.rmtree(work / f"n{n}")
            shutil.rmtree(nested)
            shutil.rmtree(flat)
        if len(args.sizes) >= 2:
            lo, hi = min(args.sizes), max(args.sizes)
            for name, by_n in results.items():
                ratio = by_n[hi]["peak_mib"] / by_n[lo]["peak_mib"]
                print(f"[memory] {name:<26} peak RSS at {hi:,} / at {lo:,}: {ratio:.2f}x "
                      f"({'met' if ratio <= 1.2 else 'NOT met'}: target <= 1.2x)")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"inputs kept in {work}")


if __name__ == "__main__":
    main()
