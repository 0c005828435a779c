"""Pair verification of one matching case (1: unmasked-unmasked, 2: masked-unmasked,
3: masked-masked) from cached embeddings.

Case rules: Case 2 masks the *second* image of every pair, Case 3 both. An image whose masking
failed is compared unmasked and counted (``pairs_with_mask_failure``); a pair with an image that
could not be read at all is left out of the figures and counted (``pairs_skipped``).
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


def lookup(cache: EmbeddingCache, key: str, variant: str) -> tuple[np.ndarray | None, bool]:
    """(embedding, fell_back_to_unmasked) of an image in a variant."""
    if variant != ORIG:
        e = cache.vectors.get((key, variant))
        if e is not None:
            return e, False
    return cache.vectors.get((key, ORIG)), variant != ORIG


def case_scores(pairs: PairSet, cache: EmbeddingCache, case: int, masked: str,
                normalize_l2: bool = True) -> CaseScores:
    mask_a, mask_b = CASES[case]
    keep = np.zeros(len(pairs), bool)
    ea, eb = [], []
    failed_pairs = 0
    failed_images: set[str] = set()
    for i, (a, b) in enumerate(zip(pairs.a, pairs.b)):
        va, fa = lookup(cache, a, masked if mask_a else ORIG)
        vb, fb = lookup(cache, b, masked if mask_b else ORIG)
        if va is None or vb is None:
            continue
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
    return CaseScores(case, keep, cosine_scores(ea_arr, eb_arr),
                      l2_scores(ea_arr, eb_arr, normalize=normalize_l2),
                      pairs.issame[keep], pairs.folds[keep], failed_pairs, len(failed_images))


def verification_metrics(cs: CaseScores, fars: tuple[float, ...] = DEFAULT_FARS) -> dict:
    """10-fold accuracy (cosine and L2), ROC AUC and TAR@FAR (cosine) of one case."""
    n = int(cs.keep.sum())
    out: dict = {"case": cs.case, "name": CASE_NAMES[cs.case], "pairs": n,
                 "pairs_skipped": int((~cs.keep).sum()),
                 "pairs_with_mask_failure": cs.mask_failed_pairs,
                 "images_mask_failed": cs.mask_failed_images}
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
