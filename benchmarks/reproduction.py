"""Small-scale reproduction of the masked-face training findings on LFW.

Protocol: train on the people of 9 of the 10 ``people.txt`` folds (identities with at least
``--min-images`` images, at most ``--max-images`` each), evaluate on the pairs of the held-out
fold (LFW View 2 folds of ``people.txt`` and ``pairs.txt`` hold the same people), with the
evaluation protocol of ``maskgen.eval``: dlib landmarks, masks drawn by maskgen from the
evaluation seed, 112x112 alignment, Case 1 (unmasked-unmasked), Case 2 (second image masked),
Case 3 (both masked), accuracy with thresholds chosen on the other sub-folds, mask-usage
accuracy of models with a mask head.

Runs (one twins build shared by all):
  no_masks      ArcFace, every sample shown unmasked            (train_mask_ratio 0.0)
  mask10        ArcFace, masked twin with probability 0.1       (Qi et al.'s cap)
  multitask50   Multi-Task ArcFace, masked twin with p = 0.5,   (Montero et al.)
                redrawn every epoch
  bfm           balanced feature matching on pairs, guided loss (Huang et al.)
                without stop-gradient (Eq. 4), pairs routed by C at evaluation
  mask10_s1     mask10 with seed 1; qi_concat = features of mask10 and mask10_s1
                concatenated (Qi et al.'s inference)
  triplet       triplet transfer from the no_masks backbone: only the added Dense + BN
                layer trains, margin 0.5, lr 0.01, negatives redrawn per epoch (Sharma et al.)

Usage (prints a Markdown table and writes <out>/results.json)::

    python benchmarks/reproduction.py --out runs/reproduction --fold 0 --epochs 6

The CPU size of the recorded tables (two shared cores, about 10-30 min per fold)::

    python benchmarks/reproduction.py --out runs/repro --fold 0 --min-images 10 --max-images 10 \
        --epochs 5 --batch-size 64 --lr 0.1
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

RUNS: dict[str, dict[str, Any]] = {
    "no_masks": {"method": "arcface", "train_mask_ratio": 0.0},
    "mask10": {"method": "arcface", "train_mask_ratio": 0.1},
    # Montero et al.: the twin redrawn "for every new face image selected" (every read)
    "multitask50": {"method": "multitask_arcface", "train_mask_ratio": 0.5, "mask_choice_per_epoch": True},
    "bfm": {"method": "bfm", "train_mask_ratio": None},
    # Qi et al.'s inference: the features of two models concatenated (a second 10% run, seed 1)
    "mask10_s1": {"method": "arcface", "train_mask_ratio": 0.1, "seed": 1},
    # Sharma et al.: the no_masks run as the pretrained backbone, only the added Dense+BN trains
    "triplet": {"method": "triplet", "train_mask_ratio": None, "init_from": "no_masks"},
}
CONCATS: dict[str, tuple[str, str]] = {"qi_concat": ("mask10", "mask10_s1")}


def lfw_root() -> Path:
    from maskgen.data_home import data_home

    root = Path(data_home()) / "lfw"
    if not (root / "people.txt").is_file():
        raise SystemExit(f"LFW with people.txt not found under {root} (set MASKGEN_DATA_HOME)")
    return root


def training_names(root: Path, fold: int, min_images: int) -> list[str]:
    from maskgen.datasets.lfw import read_people

    folds = read_people(root / "people.txt")
    return sorted(n for k, f in enumerate(folds) if k != fold for n, c in f if c >= min_images)


def heldout_pairs(root: Path, fold: int, max_pairs: int | None):
    """The held-out fold's pairs with 10 balanced sub-folds (thresholds chosen on 9, tested on
    the 10th, as LFW's 10-fold protocol does across folds)."""
    from maskgen.eval.pairs import PairSet, read_pairs

    ps = read_pairs(root / "pairs.txt")
    idx = np.flatnonzero(ps.folds == fold)
    same, diff = idx[ps.issame[idx]], idx[~ps.issame[idx]]
    if max_pairs:
        same, diff = same[: max_pairs // 2], diff[: max_pairs // 2]
    keep = np.concatenate([same, diff])
    sub = np.concatenate([np.arange(len(same)) * 10 // len(same), np.arange(len(diff)) * 10 // len(diff)])
    p = ps.subset(keep)
    return PairSet(p.a, p.b, p.issame, sub, f"{ps.source} fold {fold}")


def extract_crops(root: Path, keys: list[str], seed: int, cache: Path) -> dict[str, Any]:
    """Aligned unmasked and masked 112x112 crops of every evaluation image, made once with the
    functions of ``maskgen.eval`` (the same landmarks, masks and alignment for every model)."""
    if cache.is_file():
        z = np.load(cache, allow_pickle=False)
        return {k: z[k] for k in z.files}
    from maskgen.eval.extract import ExtractConfig, find_landmarks, mask_image
    from maskgen.masks import align_face, load_image

    cfg = ExtractConfig(landmarks="dlib", seed=seed, mask_type="random")
    orig, masked, ok_mask, lm_status = [], [], [], []
    t0 = time.perf_counter()
    for i, key in enumerate(keys):
        img, reason = load_image(root / key)
        if img is None:
            raise RuntimeError(f"{key}: {reason}")
        lm, status = find_landmarks(img, "dlib")
        lm_status.append(status)
        orig.append(align_face(img, lm, size=112))
        m, mstatus = mask_image(img, lm, key, cfg)
        ok_mask.append(m is not None)
        # Case rule of maskgen.eval: an image whose masking failed is compared unmasked
        masked.append(align_face(m, lm, size=112) if m is not None else orig[-1])
        if (i + 1) % 200 == 0:
            print(f"  eval crops {i + 1}/{len(keys)} ({(i + 1) / (time.perf_counter() - t0):.1f} img/s)", flush=True)
    out = {
        "keys": np.array(keys), "orig": np.stack(orig), "masked": np.stack(masked),
        "mask_ok": np.array(ok_mask), "landmark_status": np.array(lm_status),
    }
    np.savez(cache, **out)
    return out


def build_training_set(root: Path, out: Path, names: list[str], args: argparse.Namespace):
    from maskgen.pipelines.build import build

    names_file = out / "train_names.txt"
    names_file.write_text("\n".join(names) + "\n")
    return build(
        source=f"lfw:{root}", out=out / "build", ratio=0.5, twins=True, seed=args.seed,
        include=str(names_file), min_images=2, max_images=args.max_images,
        samples_per_shard=500, workers=args.workers, progress=False,
    )


def train_run(name: str, spec: dict[str, Any], shards: str, out: Path, args: argparse.Namespace) -> Path:
    from maskgen.training import train
    from maskgen.training.checkpoint import list_checkpoints

    run_dir = out / "runs" / name
    done = run_dir / "done.json"
    if done.is_file():
        return Path(json.loads(done.read_text())["checkpoint"])
    config = {
        "shards": shards, "model": args.model,
        "model_options": {"width": args.width, "layers": [1, 1, 1, 1], "stage_strides": [2, 2, 2, 1]},
        "embedding_size": args.embedding_size, "method": spec["method"],
        "method_options": {"s": 32.0} if spec["method"] != "bfm" else {"s": 32.0, "classifier_width": 8},
        "train_mask_ratio": spec["train_mask_ratio"], "batch_size": args.batch_size,
        "mask_choice_per_epoch": bool(spec.get("mask_choice_per_epoch", False)),
        "epochs": args.epochs, "optimizer": "sgd", "lr": args.lr, "weight_decay": 5e-4,
        "schedule": "cosine", "warmup_epochs": 0.5, "seed": args.seed, "device": "cpu",
        "threads": args.threads, "num_workers": 1, "shuffle_buffer": 500, "log_every": 10,
        "save_every": 0, "output": str(out / "runs"), "name": name, "keep_checkpoints": 1,
    }
    if spec["method"] == "arcface":
        config["method_options"]["m2"] = 0.5
    elif spec["method"] == "triplet":  # the paper's settings (configs/methods/sharma_triplet.yaml)
        config["method_options"] = {"margin": 0.5, "extra_layer": True, "seed": args.seed}
        config.update(optimizer="adamw", lr=0.01, weight_decay=1e-4, schedule="constant", freeze=["neck"],
                      freeze_bn=True)
    else:
        config["method_options"]["m"] = 0.5
    if "seed" in spec:
        config["seed"] = spec["seed"]
    if spec.get("init_from"):
        base = out / "runs" / spec["init_from"] / "done.json"
        if not base.is_file():
            raise SystemExit(f"{name} starts from {spec['init_from']}: run that first (--runs order)")
        config["init_from"] = json.loads(base.read_text())["checkpoint"]
    resume = "latest" if list_checkpoints(run_dir) else None
    t0 = time.perf_counter()
    result = train(config, resume=resume)
    seconds = time.perf_counter() - t0
    last = result.history[-1] if result.history else {}
    done.write_text(json.dumps({"checkpoint": str(result.checkpoint), "seconds": seconds, "steps": result.step,
                                "last_log": last, "config": config}, indent=1, default=str))
    return Path(result.checkpoint)


def _to_input(crops: np.ndarray):
    import torch

    x = torch.from_numpy(crops).permute(0, 3, 1, 2).float()
    return (x / 255.0 - 0.5) / 0.5


def embed_run(checkpoint: Path, crops: dict[str, Any]) -> tuple[dict, dict, bool]:
    """(features per variant, mask probabilities per variant or None, is BFM) of a run."""
    import torch

    from maskgen.training.checkpoint import load_model

    embedder, _ = load_model(checkpoint)
    method = embedder.method.eval()
    feats, probs = {}, {}
    with torch.no_grad():
        for variant in ("orig", "masked"):
            x = _to_input(crops[variant])
            outs, ps = [], []
            for i in range(0, len(x), 128):
                outs.append(method.embed(x[i:i + 128]).float().numpy())
                if hasattr(method, "predict_mask"):
                    ps.append(method.predict_mask(x[i:i + 128]).float().numpy())
            feats[variant] = np.concatenate(outs)
            probs[variant] = np.concatenate(ps) if ps else None
    return feats, probs, hasattr(method, "partial")


def concat_features(*runs: dict) -> dict:
    """Qi et al.: the L2-normalised features of several runs side by side, per variant."""
    def norm(x: np.ndarray) -> np.ndarray:
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    return {v: np.concatenate([norm(r[v]) for r in runs], axis=1) for v in runs[0]}


def score_run(feats: dict, probs: dict, is_bfm: bool, crops: dict[str, Any], pairs) -> dict[str, Any]:
    from maskgen.eval.mask_usage import mask_usage_accuracy
    from maskgen.eval.metrics import kfold_accuracy
    from maskgen.training.inference import bfm_pair_scores, split_bfm

    index = {str(k): i for i, k in enumerate(crops["keys"])}
    a = np.array([index[k] for k in pairs.a])
    b = np.array([index[k] for k in pairs.b])
    cases = {1: ("orig", "orig"), 2: ("orig", "masked"), 3: ("masked", "masked")}
    res: dict[str, Any] = {}

    def cos(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        y = y / np.linalg.norm(y, axis=1, keepdims=True)
        return np.sum(x * y, 1)

    for c, (va, vb) in cases.items():
        ea, eb = feats[va][a], feats[vb][b]
        if is_bfm:
            scores, routed = bfm_pair_scores(ea, eb, probs[va][a], probs[vb][b])
            res[f"case{c}_partial_route"] = float(routed.mean())
            fa, pa = split_bfm(ea)
            fb, pb = split_bfm(eb)
            res[f"case{c}_full_only"] = kfold_accuracy(cos(fa, fb), pairs.issame, pairs.folds).mean
            res[f"case{c}_partial_only"] = kfold_accuracy(cos(pa, pb), pairs.issame, pairs.folds).mean
        else:
            scores = cos(ea, eb)
        k = kfold_accuracy(scores, pairs.issame, pairs.folds)
        res[f"case{c}"] = k.mean
        res[f"case{c}_std"] = k.std
    if probs.get("orig") is not None:
        ok = crops["mask_ok"].astype(bool)
        p = np.concatenate([probs["orig"], probs["masked"][ok]])
        y = np.concatenate([np.zeros(len(probs["orig"]), bool), np.ones(int(ok.sum()), bool)])
        res["mask_usage"] = mask_usage_accuracy(p, y)
    return res


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/reproduction")
    ap.add_argument("--fold", type=int, default=0, help="held-out people/pairs fold (0-9)")
    ap.add_argument("--runs", default=",".join(RUNS), help="comma-separated subset of " + ", ".join(RUNS))
    ap.add_argument("--min-images", type=int, default=10)
    ap.add_argument("--max-images", type=int, default=12)
    ap.add_argument("--model", default="mfr_iresnet18")
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--embedding-size", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--max-pairs", type=int, default=None, help="evaluate on the first N/2 same + N/2 different pairs")
    ap.add_argument("--eval-seed", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    root = lfw_root()
    t_all = time.perf_counter()

    names = training_names(root, args.fold, args.min_images)
    pairs = heldout_pairs(root, args.fold, args.max_pairs)
    from maskgen.eval.pairs import identity_of

    overlap = set(names) & {identity_of(k) for k in pairs.keys()}
    if overlap:
        raise SystemExit(f"held-out pairs share identities with the training folds: {sorted(overlap)[:5]}")
    print(f"fold {args.fold}: {len(names)} training identities (>= {args.min_images} images), "
          f"{len(pairs)} held-out pairs", flush=True)

    t0 = time.perf_counter()
    built = build_training_set(root, out, names, args)
    build_s = time.perf_counter() - t0
    print(f"build: {built.num_samples} samples, {built.num_classes} classes, {built.num_failed} failed "
          f"({build_s:.0f}s)", flush=True)
    shards = built.pattern

    t0 = time.perf_counter()
    crops = extract_crops(root, pairs.keys(), args.eval_seed, out / f"eval_crops_fold{args.fold}_s{args.eval_seed}.npz")
    extract_s = time.perf_counter() - t0
    print(f"eval crops: {len(crops['keys'])} images, masking failed on {int((~crops['mask_ok']).sum())} "
          f"({extract_s:.0f}s)", flush=True)

    results: dict[str, Any] = {
        "fold": args.fold, "args": vars(args), "train_identities": len(names),
        "train_samples": built.num_samples, "train_classes": built.num_classes,
        "heldout_pairs": len(pairs), "eval_images": int(len(crops["keys"])),
        "eval_mask_failed": int((~crops["mask_ok"]).sum()),
        "eval_landmarks": {str(s): int(n) for s, n in zip(*np.unique(crops["landmark_status"], return_counts=True))},
        "runs": {},
    }
    feats: dict[str, dict] = {}
    for name in [r.strip() for r in args.runs.split(",") if r.strip()]:
        spec = RUNS[name]
        t0 = time.perf_counter()
        ckpt = train_run(name, spec, shards, out, args)
        info = json.loads((out / "runs" / name / "done.json").read_text())
        feats[name], probs, is_bfm = embed_run(ckpt, crops)
        metrics = score_run(feats[name], probs, is_bfm, crops, pairs)
        metrics["train_seconds"] = info["seconds"]
        metrics["train_steps"] = info["steps"]
        metrics["final_train_log"] = info["last_log"]
        results["runs"][name] = metrics
        print(f"{name}: {json.dumps({k: v for k, v in metrics.items() if k != 'final_train_log'}, default=str)} "
              f"({time.perf_counter() - t0:.0f}s)", flush=True)
        (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    for name, parts in CONCATS.items():
        if all(p in feats for p in parts):
            metrics = score_run(concat_features(*(feats[p] for p in parts)), {}, False, crops, pairs)
            metrics.update(train_seconds=sum(results["runs"][p]["train_seconds"] for p in parts),
                           train_steps=None, concat_of=list(parts))
            results["runs"][name] = metrics
            print(f"{name}: {json.dumps(metrics, default=str)}", flush=True)
    results["seconds"] = time.perf_counter() - t_all
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    print(markdown(results))
    return results


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def markdown(results: dict[str, Any]) -> str:
    rows = ["| run | Case 1 (unmasked) | Case 2 (masked-unmasked) | Case 3 (masked-masked) "
            "| mask-head acc. | train s |", "|---|---|---|---|---|---|"]
    for name, m in results["runs"].items():
        mu = m.get("mask_usage") or {}
        cases = " | ".join(f"{_pct(m[f'case{c}'])} ± {_pct(m[f'case{c}_std'])}" for c in (1, 2, 3))
        rows.append(f"| {name} | {cases} | {_pct(mu.get('accuracy'))} | {m['train_seconds']:.0f} |")
        if "case1_full_only" in m:
            rows.append(f"| {name}: E_F only | {_pct(m['case1_full_only'])} | {_pct(m['case2_full_only'])} "
                        f"| {_pct(m['case3_full_only'])} | | |")
            rows.append(f"| {name}: E_P only | {_pct(m['case1_partial_only'])} | {_pct(m['case2_partial_only'])} "
                        f"| {_pct(m['case3_partial_only'])} | | |")
    return "\n".join(rows)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    main()
