"""Benchmark: audit all 13,233 LFW images from a build's manifest (target: < 30 s).

    python benchmarks/audit_lfw.py [--build BUILD_DIR] [--skip-images]

With ``--build``, audits that build's ``manifest.parquet`` (as ``maskgen audit BUILD`` does).
Without it, writes a manifest of the whole LFW folder (identities, paths, a 10% mask plan
stratified by identity) so the benchmark runs anywhere LFW is present.

Figures printed:
1. manifest-only audit (stats + figures + report.html/md + DATA_CARD.md), split by stage,
   against the baseline of just reading the manifest;
2. attributes from the images when the manifest lacks them (decode + ``face_attributes``, with
   the manifest's landmarks when it has them), against the baseline of decoding only;
3. without ``--build``: the audit again on the manifest completed with those attributes (as a
   build's manifest carries them: skin tone, quality and their figures).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa


def lfw_manifest(lfw: Path, path: Path) -> Path:
    from maskgen.audit.balance import stratified_mask_plan
    from maskgen.datasets.manifest import write_manifest

    rows = []
    for d in sorted(p for p in lfw.iterdir() if p.is_dir()):
        for f in sorted(d.glob("*.jpg")):
            rows.append({"key": f.stem.replace(".", "_"), "identity": d.name, "source": "lfw",
                         "path": str(f), "status": "ok"})
    df = pd.DataFrame(rows)
    df["masked"] = stratified_mask_plan(df["identity"].tolist(), 0.1, seed=0)
    return write_manifest(pa.Table.from_pandas(df, preserve_index=False), path)


def cpu_s() -> tuple[float, float]:
    """CPU seconds (user + system) of this process and of its finished worker processes."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    ch = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime, ch.ru_utime + ch.ru_stime


def time_audit(target: Path, mpath: Path, out: Path, what: str) -> float:
    """Time the audit of ``target`` (a build folder, or a manifest file) by stage against the
    baseline of reading its manifest ``mpath``."""
    import pyarrow.parquet as pq

    from maskgen.audit.api import write_outputs
    from maskgen.audit.sources import load_input
    from maskgen.audit.stats import compute_stats
    from maskgen.audit.thumbnails import make_thumbnails

    t0 = time.perf_counter()
    pq.read_table(mpath).to_pandas()
    t_read = time.perf_counter() - t0
    c0 = cpu_s()
    t0 = time.perf_counter()
    inp = load_input(target, compute_attributes=False, fill_failed=True, workers=2)
    t_load = time.perf_counter() - t0
    t0 = time.perf_counter()
    stats = compute_stats(inp.table, source=inp.source())
    t_stats = time.perf_counter() - t0
    t0 = time.perf_counter()
    thumbs = make_thumbnails(inp, stats, workers=2)
    t_thumbs = time.perf_counter() - t0
    t0 = time.perf_counter()
    write_outputs(stats, out, title="Balance report: LFW", inp=inp, thumbnails=thumbs)
    t_write = time.perf_counter() - t0
    total = t_load + t_stats + t_thumbs + t_write
    c1 = cpu_s()
    cpu_main, cpu_workers = c1[0] - c0[0], c1[1] - c0[1]
    n = len(inp.table)
    print(f"{what}: {total:.2f} s for {n:,} rows (load {t_load:.2f} s, stats {t_stats:.2f} s, "
          f"thumbnails {t_thumbs:.2f} s ({len(thumbs)} strips), figures+report+card "
          f"{t_write:.2f} s); baseline read of the manifest {t_read:.2f} s "
          f"-> {total / max(t_read, 1e-9):.1f}x the read; target < 30 s: "
          f"{'PASS' if total < 30 else 'FAIL'}")
    print(f"  CPU {cpu_main:.2f} s main + {cpu_workers:.2f} s workers "
          f"({n / max(cpu_main + cpu_workers, 1e-9):,.0f} rows per CPU-second)")
    html = (out / "report.html").stat().st_size
    print(f"  report.html {html / 1e3:.0f} kB, {len(list((out / 'report').glob('*.png')))} "
          f"figures, {len(stats['warnings'])} warnings")
    return round(total, 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--build", type=Path, help="an existing build folder (manifest.parquet)")
    ap.add_argument("--skip-images", action="store_true", help="skip the image-attribute part")
    args = ap.parse_args()

    import pyarrow.parquet as pq

    from maskgen.audit.sources import fill_attributes, load_input, read_manifest_frame
    from maskgen.data_home import dataset_dir

    lfw = dataset_dir("lfw")
    tmp = Path(tempfile.mkdtemp(prefix="audit_bench_"))
    try:
        if args.build:
            mpath = args.build / "manifest.parquet"
            source = f"build {args.build.name}"
        else:
            if not (lfw / "pairs.txt").is_file():
                raise SystemExit(f"LFW not found at {lfw} (set MASKGEN_DATA_HOME)")
            mpath = lfw_manifest(lfw, tmp / "manifest.parquet")
            source = "manifest of the LFW folder (no attributes)"
        n_rows = pq.read_metadata(mpath).num_rows
        print(f"source: {source}: {n_rows:,} rows")

        audit_s = time_audit(args.build or mpath, mpath, tmp / "report", "manifest audit")

        if args.skip_images:
            return
        # 2. attributes from the images, against decoding alone (in this process)
        from maskgen.audit.sources import locators, read_image

        df = read_manifest_frame(mpath, columns=["landmarks"])
        df["ita"] = np.nan
        df = df[df["status"].isin(["ok", "failed"]) & df["path"].notna()].copy()
        src = load_input(args.build, compute_attributes=False, fill_failed=False).src \
            if args.build else None  # where the build's relative paths are read from
        c0 = cpu_s()
        t0 = time.perf_counter()
        unread = sum(read_image(loc)[0] is None for loc in locators(df, src))
        t_decode = time.perf_counter() - t0
        cpu_decode = cpu_s()[0] - c0[0]
        if unread:
            print(f"  {unread:,} images could not be read")
        c0 = cpu_s()
        t0 = time.perf_counter()
        n = fill_attributes(df, src, workers=2)
        t_attr = time.perf_counter() - t0
        c1 = cpu_s()
        cpu_attr = (c1[0] - c0[0]) + (c1[1] - c0[1])
        print(f"attributes from images (2 worker processes): {n:,} images in {t_attr:.1f} s "
              f"({1e3 * t_attr / max(n, 1):.2f} ms/image), {cpu_attr:.1f} CPU-s; decoding "
              f"alone (1 process) {t_decode:.1f} s, {cpu_decode:.1f} CPU-s "
              f"-> {cpu_attr / max(cpu_decode, 1e-9):.2f}x the decode's CPU")
        result = {"rows": n_rows, "audit_s": audit_s, "attributes_s": round(t_attr, 1),
                  "attributes_cpu_s": round(cpu_attr, 1), "decode_s": round(t_decode, 1),
                  "decode_cpu_s": round(cpu_decode, 1)}
        if not args.build:
            # 3. a build's manifest carries the attributes: audit again with them
            from maskgen.datasets.manifest import write_manifest

            full = read_manifest_frame(mpath)
            for c in ("ita", "skin_tone", "sharpness", "brightness", "face_size"):
                full[c] = df[c].reindex(full.index)
            full = full.drop(columns=["_region"], errors="ignore")
            m2 = write_manifest(pa.Table.from_pandas(full, preserve_index=False),
                                tmp / "with_attributes.parquet")
            result["audit_with_attributes_s"] = time_audit(m2, m2, tmp / "report2",
                                                           "manifest audit with attributes")
        print(json.dumps(result))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
