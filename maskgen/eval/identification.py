"""Closed-set identification (rank-k) and kNN classification on embeddings.

Protocol built from any set of image keys with identities (LFW: the folder name): identities with
at least two images put their first image (sorted key) in the gallery and the others are probes;
identities with a single image join the gallery as distractors. The gallery is embedded in one
variant (e.g. unmasked) and the probes in another (e.g. masked), so rank-1 says how often a
masked face finds its unmasked enrolment among everyone.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from maskgen.eval.metrics import l2_normalize


@dataclass
class IdentSplit:
    gallery: list[str]
    gallery_ids: list[str]
    probes: list[str]
    probe_ids: list[str]


def split_gallery_probes(keys: list[str], identities: list[str]) -> IdentSplit:
    by_id: dict[str, list[str]] = defaultdict(list)
    for k, i in zip(keys, identities):
        by_id[i].append(k)
    g, gi, p, pi = [], [], [], []
    for ident in sorted(by_id):
        ks = sorted(set(by_id[ident]))
        g.append(ks[0])
        gi.append(ident)
        for k in ks[1:]:
            p.append(k)
            pi.append(ident)
    return IdentSplit(g, gi, p, pi)


def _best_per_identity(gallery: np.ndarray, gallery_ids: list[str],
                       probes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(identities, probe x identity best cosine similarity)."""
    sims = l2_normalize(probes) @ l2_normalize(gallery).T
    ids = np.asarray(gallery_ids)
    order = np.argsort(ids, kind="stable")
    uniq, starts = np.unique(ids[order], return_index=True)
    per_id = np.maximum.reduceat(sims[:, order], starts, axis=1) if len(uniq) else sims[:, :0]
    return uniq, per_id


def ranks_per_probe(gallery: np.ndarray, gallery_ids: list[str], probes: np.ndarray,
                    probe_ids: list[str]) -> np.ndarray:
    """0-based rank of each probe's true identity among gallery identities (cosine; with several
    gallery images per identity, an identity ranks by its best image). A probe whose identity is
    not enrolled gets the number of identities (never counted as found)."""
    uniq, per_id = _best_per_identity(gallery, gallery_ids, probes)
    pids = np.asarray(probe_ids)
    pos = np.minimum(np.searchsorted(uniq, pids), max(len(uniq) - 1, 0))
    known = (uniq[pos] == pids) if len(uniq) else np.zeros(len(pids), bool)
    true_sim = per_id[np.arange(len(pids)), pos] if len(uniq) else np.zeros(len(pids))
    rank = (per_id > true_sim[:, None]).sum(axis=1)
    return np.where(known, rank, len(uniq))


def rank_k_accuracy(gallery: np.ndarray, gallery_ids: list[str], probes: np.ndarray,
                    probe_ids: list[str], ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """Fraction of probes whose identity is among the k most similar gallery identities."""
    if len(probe_ids) == 0:
        return {f"rank{k}": float("nan") for k in ks}
    rank = ranks_per_probe(gallery, gallery_ids, probes, probe_ids)
    return {f"rank{k}": float(np.mean(rank < k)) for k in ks}


def knn_accuracy(queries: np.ndarray, query_ids: list[str], query_keys: list[str],
                 refs: np.ndarray, ref_ids: list[str], ref_keys: list[str], k: int = 5) -> float:
    """kNN classification accuracy: each query takes the majority identity of its k most similar
    references, excluding the reference made from the same photo (ties: highest summed
    similarity). Queries whose identity has no other reference image are not counted."""
    if len(query_ids) == 0 or len(ref_ids) == 0:
        return float("nan")
    sims = l2_normalize(queries) @ l2_normalize(refs).T
    rk = np.asarray(ref_keys)
    rids = np.asarray(ref_ids)
    correct = total = 0
    for i, (qk, qid) in enumerate(zip(query_keys, query_ids)):
        s = sims[i].copy()
        s[rk == qk] = -np.inf
        if not np.any((rids == qid) & np.isfinite(s)):
            continue
        top = np.argsort(-s, kind="stable")[:k]
        top = top[np.isfinite(s[top])]
        votes: dict[str, tuple[int, float]] = {}
        for j in top:
            c, w = votes.get(rids[j], (0, 0.0))
            votes[rids[j]] = (c + 1, w + float(s[j]))
        pred = max(votes.items(), key=lambda kv: kv[1])[0]
        correct += int(pred == qid)
        total += 1
    return correct / total if total else float("nan")
