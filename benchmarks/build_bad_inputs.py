"""Benchmark: peak memory of `maskgen build` over a folder of hostile inputs, at two sizes.

Each copy of the bad set is one identity folder holding: a FIFO named `fifo.jpg`, a link to
`/dev/zero`, a 20000x20000 JPEG (a decompression bomb, ~4 MB on disk, 400 M pixels), an empty,
a truncated and a random-bytes `.jpg`, a PNG of noise (no face), LFW photos under a name with a
newline and tab, a name that is not UTF-8 and a hidden name, plus a link to a real LFW identity
folder and a link loop. Only the FIFO, the device and the bomb would cost memory (or hang) if
they were read or decoded; the others check that each input gets its row.

Each size is one fresh `maskgen build FOLDER --ratio 0.5 --workers W --no-report` process (its own
local Ray), its process tree sampled as in `build_lfw.py` (PSS of every process once a second,
the sampler at nice 19). Printed per size: rows by status, reasons, peak PSS of all processes
and of the driver + workers, wall. Target (robustness work): peak memory < 1 GB at both sizes.

    MASKGEN_DATA_HOME=../shared/data python benchmarks/build_bad_inputs.py               # 1 and 8 copies
    MASKGEN_DATA_HOME=../shared/data python benchmarks/build_bad_inputs.py --copies 2 16
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from build_lfw import run_sampled  # noqa: E402

LFW_PEOPLE = ("Aaron_Eckhart", "Aaron_Peirsol", "Abdullah_Gul")  # photos for the odd names


def _lfw_root() -> Path:
    home = Path(os.environ.get("MASKGEN_DATA_HOME", Path.home() / ".cache" / "maskgen")).expanduser()
    for d in (home / "lfw" / "lfw-deepfunneled", home / "lfw" / "lfw", home / "lfw"):
        if (d / LFW_PEOPLE[0]).is_dir():
            return d
    raise SystemExit(f"LFW photos not found under {home / 'lfw'} (set MASKGEN_DATA_HOME)")


def make_bomb(path: Path, side: int = 20000) -> None:
    """A real, valid JPEG of side x side grey pixels (small on disk, huge when decoded)."""
    from PIL import Image

    img = Image.new("L", (side, side), 128)
    img.paste(255, (0, 0, side // 2, side // 2))
    img.save(path, quality=50)
    del img


def make_bad_set(root: Path, copies: int, bomb: Path, lfw: Path) -> None:
    rng = np.random.default_rng(0)
    photos = [sorted((lfw / p).iterdir())[0] for p in LFW_PEOPLE]
    for k in range(copies):
        d = root / f"bad-{k:03d}"
        d.mkdir(parents=True)
        os.mkfifo(d / "fifo.jpg")
        os.symlink("/dev/zero", d / "zero.jpg")
        shutil.copyfile(bomb, d / "bomb.jpg")
        (d / "empty.jpg").write_bytes(b"")
        data = photos[0].read_bytes()
        (d / "truncated.jpg").write_bytes(data[: len(data) // 2])
        (d / "garbage.jpg").write_bytes(rng.bytes(20_000))
        from PIL import Image

        Image.fromarray(rng.integers(0, 255, (200, 200, 3), dtype=np.uint8)).save(d / "noise.png")
        shutil.copyfile(photos[0], d / "new\nline\ttab.jpg")
        shutil.copyfile(photos[1], os.path.join(os.fsencode(d), b"caf\xe9.jpg"))
        shutil.copyfile(photos[2], d / ".hidden.jpg")
        shutil.copyfile(photos[1], d / "good.jpg")
        os.symlink(lfw / LFW_PEOPLE[k % len(LFW_PEOPLE)], root / f"linked-{k:03d}")
        os.symlink("..", d / "loop")


def run_one(root: Path, out: Path, workers: int) -> dict:
    import pyarrow.parquet as pq

    cmd = [sys.executable, "-m", "maskgen", "build", str(root), "-o", str(out), "--ratio", "0.5",
           "--workers", str(workers), "--no-report", "--mode", "overwrite", "--seed", "0", "--quiet"]
    env = {**os.environ, "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"}
    proc, output, wall, peak, sampler, load = run_sampled(cmd, env)
    rows = pq.read_table(out / "manifest.parquet").to_pylist() if (out / "manifest.parquet").is_file() else []
    return {
        "exit": proc.returncode, "output_tail": output[-600:], "wall_s": wall, "rows": len(rows),
        "status": dict(Counter(r["status"] for r in rows)),
        "reasons": dict(Counter(r["reason"].split(":")[0] for r in rows if r["reason"])),
        "peak_pss_total_mb": peak["pss_total"] / 2**20, "peak_pss_driver_workers_mb": peak["pss_main"] / 2**20,
        "peak_rss_driver_mb": peak["root_rss"] / 2**20, "cpu_s": sampler.cpu_seconds(),
        "load_mean": sum(load) / len(load) if load else 0.0,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--copies", type=int, nargs="+", default=[1, 8], help="copies of the bad set per build")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--work", type=Path, default=None, help="work folder (default: a temp folder, removed)")
    ap.add_argument("--json", type=Path, help="append the figures to this JSON-lines file")
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="maskgen-bad-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}", flush=True)
    bomb = work / "bomb.jpg"
    if not bomb.is_file():
        t = time.perf_counter()
        make_bomb(bomb)
        print(f"bomb: 20000x20000 JPEG of {bomb.stat().st_size / 2**20:.1f} MiB in {time.perf_counter() - t:.0f} s", flush=True)
    lfw = _lfw_root()
    worst = 0.0
    try:
        for c in args.copies:
            root = work / f"src-{c}"
            shutil.rmtree(root, ignore_errors=True)
            make_bad_set(root, c, bomb, lfw)
            r = run_one(root, work / f"out-{c}", args.workers)
            r["copies"] = c
            worst = max(worst, r["peak_pss_total_mb"])
            print(f"copies={c}: exit {r['exit']}, {r['rows']} rows {r['status']}, wall {r['wall_s']:.1f} s | peak PSS "
                  f"all {r['peak_pss_total_mb']:.0f} MiB, driver + workers {r['peak_pss_driver_workers_mb']:.0f} MiB, "
                  f"driver RSS {r['peak_rss_driver_mb']:.0f} MiB | mean load {r['load_mean']:.1f}", flush=True)
            print(f"  reasons: {json.dumps(r['reasons'], ensure_ascii=False)}")
            print(f"  CPU seconds: {json.dumps({k: round(v, 1) for k, v in r['cpu_s'].items()})}", flush=True)
            if r["exit"] != 0:
                print(r["output_tail"], file=sys.stderr)
            if args.json:
                with open(args.json, "a") as f:
                    f.write(json.dumps(r) + "\n")
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print(f"target: peak PSS of all processes {worst:.0f} MiB < 1024 MiB at every size: {'met' if worst < 1024 else 'not met'}")


if __name__ == "__main__":
    main()
