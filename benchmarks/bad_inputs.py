"""Peak memory of a `maskgen build` over a folder of hostile inputs, against good photos only.

    python benchmarks/bad_inputs.py [--copies 1 4] [--workers 2]

The hostile folder (``tests/faults.py:make_bad_folder``) holds, per copy, a FIFO, a link to
/dev/zero, a real 20000x20000 JPEG and PNG (1.2 GB of RGB each if decoded), truncated, empty
and corrupt files, hidden files, non-UTF-8 and control-character names, an HTML identity, a
symlink loop, plus a symlinked identity folder and an owned output folder inside the source.
The baseline folder holds only the good photos of the same layout.

Memory is read from the kernel: the peak RSS (``VmHWM``) of every process of the build (the
CLI, Ray's GCS and raylet, every worker), sampled every 50 ms so short-lived workers are seen,
and the sampled peak of the sum of their PSS (shared pages counted once). Prints one line per run and the ratio bad / baseline.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import faults  # noqa: E402


def _face():
    import cv2
    from skimage import data

    return cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)


def _kib(pid: int, table: str, field: str) -> int:
    """A KiB figure of /proc/<pid>/<table>: ``VmHWM`` of ``status`` (the process's peak RSS),
    ``Pss`` of ``smaps_rollup`` (shared pages such as libraries counted once)."""
    try:
        with open(f"/proc/{pid}/{table}") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def measure(cmd: list[str], cwd: Path, env: dict) -> dict:
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    top = psutil.Process(proc.pid)
    peak_proc: dict[int, tuple[int, str]] = {}
    peak_sum = 0
    while proc.poll() is None:
        try:
            procs = [top, *top.children(recursive=True)]
        except psutil.NoSuchProcess:
            break
        total = 0
        for p in procs:
            try:
                total += _kib(p.pid, "smaps_rollup", "Pss")
                hwm = _kib(p.pid, "status", "VmHWM")
                if hwm > peak_proc.get(p.pid, (0, ""))[0]:
                    peak_proc[p.pid] = (hwm, " ".join(p.cmdline()[:3])[:60])
            except psutil.Error:
                pass
        peak_sum = max(peak_sum, total)
        time.sleep(0.05)
    out, err = proc.communicate()
    top_pid, (top_kib, top_name) = max(peak_proc.items(), key=lambda kv: kv[1][0])
    return {"rc": proc.returncode, "peak_process_mib": top_kib / 1024, "peak_process": top_name,
            "peak_sum_mib": peak_sum / 1024, "processes": len(peak_proc), "stderr": err, "stdout": out}


def manifest_counts(out: Path) -> dict[str, int]:
    import pyarrow.parquet as pq

    t = pq.read_table(out / "manifest.parquet", columns=["status"]).column("status").to_pylist()
    return {s: t.count(s) for s in sorted(set(t))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--copies", type=int, nargs="+", default=[1, 4], help="hostile sets per folder (sizes)")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    face = _face()
    maskgen = faults.maskgen_cmd()
    print(f"# maskgen build --workers {args.workers}: peak RSS of the largest process, peak PSS of all processes")
    for copies in args.copies:
        work = Path(tempfile.mkdtemp(prefix="mg-bad-"))
        try:
            kinds = faults.make_bad_folder(work / "bad", face, copies=copies)
            good = work / "good"
            for rel, kind in kinds.items():
                if kind == "good":
                    (good / rel).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(work / "bad" / rel, good / rel)
            env = {**os.environ, "RAY_TMPDIR": str(work / "ray")}
            res = {}
            for name in ("good", "bad"):
                r = measure(maskgen + ["build", str(work / name), "-o", str(work / f"out-{name}"), "--workers",
                                       str(args.workers), "--quiet"], work, env)
                if r["rc"] != 0:
                    print(r["stderr"][-2000:], file=sys.stderr)
                    raise SystemExit(f"build of {name} failed (exit {r['rc']})")
                r["counts"] = manifest_counts(work / f"out-{name}")
                res[name] = r
                print(f"copies={copies} {name:4s}: inputs {sum(r['counts'].values()):3d} {r['counts']}  "
                      f"peak process {r['peak_process_mib']:7.1f} MiB ({r['peak_process']})  "
                      f"peak PSS sum {r['peak_sum_mib']:7.1f} MiB over {r['processes']} processes")
            b, g = res["bad"], res["good"]
            print(f"copies={copies} bad/good: peak process x{b['peak_process_mib'] / g['peak_process_mib']:.2f}, "
                  f"peak PSS sum x{b['peak_sum_mib'] / g['peak_sum_mib']:.2f}; "
                  f"under 1 GiB: largest process {b['peak_process_mib'] < 1024}, all processes {b['peak_sum_mib'] < 1024}")
        finally:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
