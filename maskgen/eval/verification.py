"""Pair verification of one matching case (1: unmasked-unmasked, 2: masked-unmasked,
3: masked-masked) from cached embeddings.

Case rules: Case 2 masks the *second* image of every pair, Case 3 both. An image whose masking
failed is compared unmasked and counted (``pairs_with_mask_failure``); a pair with an image that
could not be read at all is left out of the figures and counted (``pairs_skipped``).

A BFM model (Huang et al.) is scored with its routed protocol: a pair is compared with the
full-face features E_F when the mask classifier says neither image wears a mask, with the
partial-face features E_P otherwise (``route_threshold``); the share routed to E_P is reported.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from maskgen.eval.cache import EmbeddingCache
from maskgen.eval.extract import ORIG
from maskgen.eval.metrics import (DEFAULT_FARS, auc, cosine_scores, kfold_accuracy, l2_scores,
                                  roc_curve, tar_at_far)
from maskgen.eval.pairs import PairSet

CASES: dict[int, tuple[bool, bool]] = {1: (False, False), 2: (False, True), 3: (True, True)}
CASE_NAMES = {1: "unmasked-unmasked", 2: "masked-unmasked", 3: "masked-masked"}


@dataclass
class CaseScores:
    case: int
    keep: np.ndarray  # bool (N,) pairs that could be scored
    cosine: np.ndarray  # scores of kept pairs
    l2: np.ndarray  # negative distances of kept pairs
    issame: np.ndarray
    folds: np.ndarray
    mask_failed_pairs: int
    mask_failed_images: int
    routed_partial: np.ndarray | None = None  # BFM: True where the pair went to E_P


def embedding_of(cache: EmbeddingCache, key: str, variant: str) -> tuple[np.ndarray | None, bool]:
    """(embedding, fell_back_to_unmasked) of an image in a variant."""
    if variant != ORIG:
        e = cache.vectors.get((key, variant))
        if e is not None:
            return e, False
    return cache.vectors.get((key, ORIG)), variant != ORIG


def mask_prob(cache: EmbeddingCache, key: str, variant: str) -> float | None:
    """The mask classifier's P(mask) of an image in a variant (unmasked when masking failed)."""
    if variant != ORIG and (key, variant) in cache.vectors:
        return cache.mask_probs.get((key, variant))
    return cache.mask_probs.get((key, ORIG))


def case_scores(pairs: PairSet, cache: EmbeddingCache, case: int, masked: str,
                normalize_l2: bool = True, route_threshold: float | None = None) -> CaseScores:
    """Scores of one case; with ``route_threshold`` (BFM) each pair is routed to E_F or E_P."""
    mask_a, mask_b = CASES[case]
    keep = np.zeros(len(pairs), bool)
    ea, eb, pa, pb = [], [], [], []
    failed_pairs = 0
    failed_images: set[str] = set()
    for i, (a, b) in enumerate(zip(pairs.a, pairs.b)):
        va, fa = embedding_of(cache, a, masked if mask_a else ORIG)
        vb, fb = embedding_of(cache, b, masked if mask_b else ORIG)
        if va is None or vb is None:
            continue
        if route_threshold is not None:
            qa = mask_prob(cache, a, masked if mask_a else ORIG)
            qb = mask_prob(cache, b, masked if mask_b else ORIG)
            if qa is None or qb is None:
                continue
            pa.append(qa)
            pb.append(qb)
        keep[i] = True
        ea.append(va)
        eb.append(vb)
        if fa:
            failed_images.add(a)
        if fb:
            failed_images.add(b)
        failed_pairs += int(fa or fb)
    ea_arr = np.asarray(ea, np.float64).reshape(len(ea), -1)
    eb_arr = np.asarray(eb, np.float64).reshape(len(eb), -1)
    if route_threshold is None:
        return CaseScores(case, keep, cosine_scores(ea_arr, eb_arr),
                          l2_scores(ea_arr, eb_arr, normalize=normalize_l2),
                          pairs.issame[keep], pairs.folds[keep], failed_pairs, len(failed_images))
    from maskgen.training.inference import bfm_pair_scores, split_bfm

    cos, routed = bfm_pair_scores(ea_arr, eb_arr, np.asarray(pa), np.asarray(pb), route_threshold)
    (fa, qa), (fb, qb) = split_bfm(ea_arr), split_bfm(eb_arr)
    l2 = np.where(routed, l2_scores(qa, qb), l2_scores(fa, fb))
    return CaseScores(case, keep, cos, l2, pairs.issame[keep], pairs.folds[keep], failed_pairs,
                      len(failed_images), routed)


def verification_metrics(cs: CaseScores, fars: tuple[float, ...] = DEFAULT_FARS) -> dict:
    """10-fold accuracy (cosine and L2), ROC AUC and TAR@FAR (cosine) of one case."""
    n = int(cs.keep.sum())
    out: dict = {"case": cs.case, "name": CASE_NAMES[cs.case], "pairs": n,
                 "pairs_skipped": int((~cs.keep).sum()),
                 "pairs_with_mask_failure": cs.mask_failed_pairs,
                 "images_mask_failed": cs.mask_failed_images}
    if cs.routed_partial is not None:
        out["protocol"] = "bfm routed (E_F when neither image is masked, E_P otherwise)"
        out["pairs_routed_to_partial"] = float(cs.routed_partial.mean()) if n else None
    if n == 0:
        return out
    k_cos = kfold_accuracy(cs.cosine, cs.issame, cs.folds)
    k_l2 = kfold_accuracy(cs.l2, cs.issame, cs.folds)
    far, tar, _ = roc_curve(cs.cosine, cs.issame)
    out.update({
        "threshold_from": "other folds" if len(np.unique(cs.folds)) > 1 else
                          "the same pairs (a single fold: an optimistic estimate)",
        "accuracy_cosine": k_cos.to_dict(),
        "accuracy_l2": {**k_l2.to_dict(),
                        "thresholds": [-t for t in k_l2.thresholds]},  # as distances
        "auc": auc(far, tar) if 0 < cs.issame.sum() < cs.issame.size else None,
        "tar_at_far": tar_at_far(cs.cosine, cs.issame, fars),
    })
    return out
