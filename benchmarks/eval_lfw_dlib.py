"""dlib's ResNet face descriptor on LFW View 2 (6,000 pairs), Cases 1/2/3 with maskgen's masks.

dlib's descriptor never saw a mask, so it is the "original model" baseline of the masked-face
literature: how far does it fall when one (Case 2) or both (Case 3) faces of a pair wear a mask?

    MASKGEN_DATA_HOME=<data> python benchmarks/eval_lfw_dlib.py --workers 2
    python benchmarks/eval_lfw_dlib.py --max-folds 3   # a documented subset when time is short

Embeddings are cached in ``<out>/cache`` (a rerun or an interrupted run resumes). Prints the
table that is recorded in ``benchmarks/eval_lfw_dlib.md``.
"""

from __future__ import annotations

import argparse
import json
import time

from maskgen.data_home import dataset_dir
from maskgen.eval.api import evaluate
from maskgen.eval.report import markdown_table

REFERENCES = """\
Published references (other pipelines, for orientation):
- dlib ResNet descriptor, LFW unmasked: 99.38% (dlib's model card); ~98.3% on the first 3,000 pairs.
- ArcFace-R50-style models: ~99.6% on LFW -> 94.8% on MaskTheFace-masked LFW.
"""


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="out/eval_lfw_dlib", help="results + embedding cache folder")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--max-folds", type=int, default=None, help="first N folds only (subset run)")
    ap.add_argument("--cases", default="1,2,3")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--mask-type", default="random",
                    help="'random' (maskgen's default mix of types and wear modes) or one type")
    ap.add_argument("--cache-dir", default=None, help="default: <out>/cache")
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args(argv)
    lfw = dataset_dir("lfw")
    if not (lfw / "pairs.txt").is_file():
        raise SystemExit(f"LFW not found in {lfw} (set MASKGEN_DATA_HOME)")
    t0 = time.perf_counter()
    res = evaluate(model="dlib", pairs=str(lfw / "pairs.txt"), images=str(lfw), out=args.out,
                   cases=tuple(int(c) for c in args.cases.split(",")), seed=args.seed,
                   mask_type=args.mask_type, workers=args.workers, batch_size=args.batch_size,
                   max_folds=args.max_folds, cache_dir=args.cache_dir)
    wall = time.perf_counter() - t0
    print()
    print(f"dlib ResNet descriptor on LFW View 2: {res['pairs']} pairs, {res['folds']} folds, "
          f"{res['images']['n']} images, masks {args.mask_type!r} seed {args.seed}, "
          f"{args.workers} workers")
    print(markdown_table(res), end="")
    t = res["timing"]
    rate = f"{t['images_per_s']:.1f} images/s" if t.get("images_per_s") else "all from cache"
    print(f"\nembedding: {t['images_embedded']} images in {t['seconds']:.0f} s ({rate}); "
          f"total wall {wall:.0f} s")
    if args.max_folds is None or args.max_folds > 5:
        # the reference figure for dlib is on the first 3,000 pairs: same cache, folds 1-5
        first = evaluate(model="dlib", pairs=str(lfw / "pairs.txt"), images=str(lfw),
                         out=f"{args.out}/first3000", cases=(1,), max_folds=5,
                         cache_dir=args.cache_dir or f"{args.out}/cache", identification=False)
        a = first["verification"]["case1"]
        print(f"Case 1 on the first 3,000 pairs (folds 1-5, 5-fold thresholds): "
              f"cosine {100 * a['accuracy_cosine']['mean']:.2f} ± {100 * a['accuracy_cosine']['std']:.2f}%, "
              f"L2 {100 * a['accuracy_l2']['mean']:.2f} ± {100 * a['accuracy_l2']['std']:.2f}%")
    print(REFERENCES, end="")
    print(json.dumps({k: res["verification"][k]["accuracy_cosine"]["mean"]
                      for k in res["verification"] if "accuracy_cosine" in res["verification"][k]}))
    return res


if __name__ == "__main__":
    main()
