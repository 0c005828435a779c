"""``evaluate``: one call (= one ``maskgen eval``) from a model and a pair set to a results folder."""

from __future__ import annotations

import hashlib
import logging
import time
from collections import Counter
from pathlib import Path

import numpy as np

from maskgen.eval.binfile import read_bin
from maskgen.eval.cache import EmbeddingCache
from maskgen.eval.embedders import embedder_tag, model_protocol
from maskgen.eval.extract import ORIG, ExtractConfig, ImageJob, check_mask_type, masked_variant
from maskgen.eval.groups import breakdown, labels_for, read_group_labels
from maskgen.eval.identification import knn_accuracy, ranks_per_probe, split_gallery_probes
from maskgen.eval.mask_usage import mask_usage_accuracy
from maskgen.eval.metrics import DEFAULT_FARS, predictions_kfold, roc_curve
from maskgen.eval.pairs import PairSet, identity_of, read_pairs
from maskgen.eval.report import plot_roc, write_json, write_markdown
from maskgen.eval.runner import embed_images
from maskgen.eval.verification import CASE_NAMES, CASES, case_scores, embedding_of, verification_metrics

log = logging.getLogger(__name__)


def _dataset(pairs: str | None, images: str | None, bin_file: str | None, max_folds: int | None,
             max_pairs: int | None) -> tuple[PairSet, list[ImageJob], str, str]:
    """(pairs, one job per distinct image, landmark backend, dataset tag)."""
    if bin_file:
        blobs, issame = read_bin(bin_file)
        n = len(issame)
        stem = Path(bin_file).stem
        keys = [f"{stem}/{i:06d}" for i in range(2 * n)]
        folds = np.minimum(np.arange(n) * 10 // max(n, 1), 9)
        ps = PairSet(keys[0::2], keys[1::2], issame, folds, str(bin_file))
        if max_folds is not None:
            ps = ps.subset(np.flatnonzero(ps.folds < max_folds))
        if max_pairs is not None and max_pairs < len(ps):
            ps = ps.subset(np.arange(max_pairs))
        idx = {k: i for i, k in enumerate(keys)}
        jobs = [ImageJob(k, data=blobs[idx[k]]) for k in ps.keys()]
        tag = hashlib.sha1(str(Path(bin_file).resolve()).encode()).hexdigest()[:8]
        return ps, jobs, "aligned", f"{stem}-{tag}"
    if pairs is None:
        from maskgen.data_home import dataset_dir

        lfw = dataset_dir("lfw")
        pairs, images = str(lfw / "pairs.txt"), images or str(lfw)
    ps = read_pairs(pairs, max_folds=max_folds, max_pairs=max_pairs)
    root = Path(images) if images else Path(pairs).parent
    jobs = [ImageJob(k, path=str(root / k)) for k in ps.keys()]
    tag = hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:8]
    return ps, jobs, "auto", f"{root.name}-{tag}"


def evaluate(model: str = "dlib", pairs: str | None = None, images: str | None = None,
             bin_file: str | None = None, out: str = "eval-results", cases: tuple[int, ...] = (1, 2, 3),
             seed: int = 0, mask_type: str = "random", flip: bool = False, workers: int = 1,
             batch_size: int = 32, cache_dir: str | None = None, max_folds: int | None = None,
             max_pairs: int | None = None, identification: bool = True, knn_k: int = 1,
             labels: str | None = None, skin_tone: bool = False, landmarks: str | None = None,
             device: str = "auto", fars: tuple[float, ...] = DEFAULT_FARS,
             quiet: bool = False) -> dict:
    """Evaluate ``model`` on a pair set and write ``results.json``, ``results.md``, ``roc.png``.

    ``pairs``/``images``: an LFW-format or generic pair list and its image folder (default: LFW
    View 2 from the data home); ``bin_file``: an insightface ``.bin`` instead. ``cases``: which of
    Case 1 (unmasked-unmasked), 2 (masked-unmasked) and 3 (masked-masked) to report; masks are
    made by maskgen with ``seed`` (one mask per image, the same in every case). Progress
    lines go to stderr unless ``quiet``.
    """
    t0 = time.perf_counter()
    cases = tuple(sorted(set(int(c) for c in cases)))
    for c in cases:
        if c not in CASES:
            raise ValueError(f"unknown case {c}: use 1, 2 or 3")
    if any(c > 1 for c in cases):
        check_mask_type(mask_type)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    ps, jobs, lm_backend, ds_tag = _dataset(pairs, images, bin_file, max_folds, max_pairs)
    lm_backend = landmarks or lm_backend
    masked = masked_variant(seed, mask_type)
    need_mask = any(c > 1 for c in cases)
    variants = (ORIG, masked) if need_mask else (ORIG,)
    for j in jobs:
        j.variants = variants
    cfg = ExtractConfig(landmarks=lm_backend, seed=seed, mask_type=mask_type, flip=flip,
                        attributes=skin_tone, mask_head=True)
    tag = f"{embedder_tag(model)}{'-flip' if flip else ''}-{lm_backend}-{ds_tag}"
    cache = EmbeddingCache(Path(cache_dir or out_dir / "cache") / f"{tag}.npz")
    timing = embed_images(jobs, model, cfg, cache, workers=workers, chunk_size=batch_size,
                          device=device, quiet=quiet)
    normalize_l2 = model != "dlib"
    protocol, route_threshold = model_protocol(model)
    route = route_threshold if protocol == "bfm" else None

    results: dict = {
        "model": model, "dataset": ps.source, "pairs": len(ps), "folds": int(len(np.unique(ps.folds))),
        "config": {"cases": list(cases), "seed": seed, "mask_type": mask_type, "flip": flip,
                   "landmarks": lm_backend, "workers": workers, "max_folds": max_folds,
                   "max_pairs": max_pairs, "knn_k": knn_k, "fars": list(fars),
                   "l2_on_normalized": normalize_l2, "case2_rule": "second image of each pair masked",
                   "protocol": protocol, **({"route_threshold": route_threshold} if route is not None else {}),
                   "mask_failure_rule": "image compared unmasked and counted"},
        "images": _image_counts(jobs, cache, masked if need_mask else None),
        "timing": timing,
    }
    ver: dict = {}
    curves: dict = {}
    decisions: dict = {}
    for c in cases:
        cs = case_scores(ps, cache, c, masked, normalize_l2=normalize_l2, route_threshold=route)
        m = verification_metrics(cs, fars)
        ver[f"case{c}"] = m
        if "accuracy_cosine" in m:
            far, tar, _ = roc_curve(cs.cosine, cs.issame)
            curves[f"Case {c} ({CASE_NAMES[c]})"] = (far, tar)
            pred = predictions_kfold(cs.cosine, cs.issame, cs.folds, m["accuracy_cosine"]["thresholds"])
            decisions[c] = (cs.keep, pred == cs.issame)
    results["verification"] = ver
    if curves:
        plot_roc(curves, out_dir / "roc.png", title=f"{model} on {Path(ps.source).name}")
        results["figures"] = ["roc.png"]

    keys = ps.keys()
    ids = [identity_of(k) for k in keys] if not bin_file else []
    probe_ranks: dict = {}
    if identification and ids:
        results["identification"], probe_ranks = _identification(keys, ids, cache, cases, masked, knn_k)
    mu = _mask_usage(keys, cache, masked) if need_mask else None
    if mu is not None:
        results["mask_usage"] = mu

    group_cols: dict[str, list[str | None]] = {}
    if labels:
        join, table = read_group_labels(labels)
        group_cols.update(labels_for(keys, ids or keys, join, table))
    if skin_tone:
        group_cols["skin_tone"] = [cache.meta.get(k, {}).get("attributes", {}).get("skin_tone") for k in keys]
    if group_cols:
        results["groups"] = _groups(ps, keys, group_cols, decisions, probe_ranks, cache,
                                    masked if need_mask else None)
    results["timing"]["total_seconds"] = time.perf_counter() - t0
    write_json(results, out_dir / "results.json")
    write_markdown(results, out_dir / "results.md")
    return results


def _image_counts(jobs: list[ImageJob], cache: EmbeddingCache, masked: str | None) -> dict:
    status = Counter()
    lms = Counter()
    masking = Counter()
    for j in jobs:
        m = cache.meta.get(j.key, {})
        s = m.get("status", "missing")
        status["ok" if s == "ok" else s] += 1
        if m.get("landmark_status"):
            lms[m["landmark_status"]] += 1
        if masked is not None and s == "ok":
            masking[cache.mask_status.get((j.key, masked), "not run")] += 1
    return {"n": len(jobs), "status": dict(status), "landmarks": dict(lms), "masking": dict(masking)}


def _variant_pair(case: int, masked: str) -> tuple[str, str]:
    g, p = CASES[case]
    return (masked if g else ORIG), (masked if p else ORIG)


def _embeddings(keys: list[str], cache: EmbeddingCache, variant: str) -> tuple[np.ndarray, list[int], int]:
    """(stacked embeddings, indices of keys that have one, number that fell back to unmasked)."""
    vecs, idx, fell = [], [], 0
    for i, k in enumerate(keys):
        e, fb = embedding_of(cache, k, variant)
        if e is not None:
            vecs.append(e)
            idx.append(i)
            fell += int(fb)
    return (np.asarray(vecs, np.float64).reshape(len(vecs), -1), idx, fell)


def _identification(keys: list[str], ids: list[str], cache: EmbeddingCache, cases: tuple[int, ...],
                    masked: str, knn_k: int) -> tuple[dict, dict]:
    ok = [i for i, k in enumerate(keys) if (k, ORIG) in cache.vectors]
    keys_ok = [keys[i] for i in ok]
    ids_ok = [ids[i] for i in ok]
    split = split_gallery_probes(keys_ok, ids_ok)
    n_multi = len(set(split.probe_ids))
    out: dict = {"gallery_size": len(split.gallery), "identities_with_probes": n_multi,
                 "distractors": len(split.gallery) - n_multi, "probes": len(split.probes),
                 "knn_k": knn_k, "protocol": "first image (sorted key) of each identity in the gallery, "
                 "other images as probes; single-image identities are distractors", "cases": {}}
    probe_ranks: dict = {}
    if not split.probes:
        return out, probe_ranks
    for c in cases:
        gv, pv = _variant_pair(c, masked)
        g, _, _ = _embeddings(split.gallery, cache, gv)
        p, _, fell = _embeddings(split.probes, cache, pv)
        ranks = ranks_per_probe(g, split.gallery_ids, p, split.probe_ids)
        # kNN: every image of a multi-image identity queried (probe variant) against all other
        # photos (gallery variant)
        multi = set(split.probe_ids)
        q_idx = [i for i, x in enumerate(ids_ok) if x in multi]
        qk = [keys_ok[i] for i in q_idx]
        q, _, _ = _embeddings(qk, cache, pv)
        r, _, _ = _embeddings(keys_ok, cache, gv)
        knn = knn_accuracy(q, [ids_ok[i] for i in q_idx], qk, r, ids_ok, keys_ok, k=knn_k)
        out["cases"][f"case{c}"] = {"gallery_variant": "masked" if gv != ORIG else "unmasked",
                                    "probe_variant": "masked" if pv != ORIG else "unmasked",
                                    "rank1": float(np.mean(ranks < 1)), "rank5": float(np.mean(ranks < 5)),
                                    "knn": knn, "probes_mask_failed": fell}
        probe_ranks[c] = (split.probes, ranks)
    return out, probe_ranks


def _mask_usage(keys: list[str], cache: EmbeddingCache, masked: str) -> dict | None:
    probs, truth = [], []
    for k in keys:
        p0 = cache.mask_probs.get((k, ORIG))
        if p0 is not None:
            probs.append(p0)
            truth.append(False)
        p1 = cache.mask_probs.get((k, masked))
        if p1 is not None and cache.mask_status.get((k, masked)) == "ok":
            probs.append(p1)
            truth.append(True)
    if not probs:
        return None
    return mask_usage_accuracy(np.asarray(probs), np.asarray(truth))


def _groups(ps: PairSet, keys: list[str], cols: dict[str, list[str | None]], decisions: dict,
            probe_ranks: dict, cache: EmbeddingCache, masked: str | None) -> dict:
    """Every metric per group of every label column."""
    out: dict = {}
    for col, values in cols.items():
        by_key = dict(zip(keys, values))
        res: dict = {}
        for c, (keep, correct) in decisions.items():
            grp = [by_key.get(a) for a, kept in zip(ps.a, keep) if kept]
            res[f"case{c}_accuracy"] = breakdown(correct.astype(float), grp)
        for c, (probes, ranks) in probe_ranks.items():
            res[f"case{c}_rank1"] = breakdown((ranks < 1).astype(float), [by_key.get(k) for k in probes])
        if masked is not None:
            ok_keys = [k for k in keys if cache.meta.get(k, {}).get("status") == "ok"]
            res["mask_success"] = breakdown(
                np.asarray([cache.mask_status.get((k, masked)) == "ok" for k in ok_keys], float),
                [by_key.get(k) for k in ok_keys])
        out[col] = res
    return out
