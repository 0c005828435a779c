"""Pair scoring of balanced feature matching (Huang et al.) at inference time.

(Qi et al.'s feature concatenation of several models is ``maskgen.eval.embedders.ConcatEmbedder``,
what ``maskgen eval --model ckpt:a+ckpt:b`` builds; the inference view of a trained method is
``maskgen.training.checkpoint.ModelEmbedder``.)

- ``bfm_pair_scores`` (Huang et al.): a pair is compared with the full-face features when the
  mask classifier says neither face wears a mask, with the partial-face features otherwise.
  Routing is per pair, not per image: the two images of a pair must be compared in one
  feature space. That cannot be expressed by a single per-image vector and a cosine, so the
  BFM embedding carries both routes and this function does the pair-level choice.
"""

from __future__ import annotations

import numpy as np


def split_bfm(embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(full, partial) halves of BFM embeddings [E_F/|E_F|, E_P/|E_P|]."""
    e = np.asarray(embeddings, dtype=np.float64)
    if e.ndim != 2 or e.shape[1] % 2:
        raise ValueError(f"BFM embeddings have an even number of columns, got shape {e.shape}")
    d = e.shape[1] // 2
    return e[:, :d], e[:, d:]


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return np.sum(a * b, axis=1)


def bfm_pair_scores(
    emb_a: np.ndarray,
    emb_b: np.ndarray,
    mask_prob_a: np.ndarray,
    mask_prob_b: np.ndarray,
    threshold: float = 0.5,
) -> tuple[np.ndarray, np.ndarray]:
    """Cosine scores of pairs routed by the mask classifier, and the route of each pair
    (True = partial-face extractor, taken when either image has P(mask) >= threshold)."""
    fa, pa = split_bfm(emb_a)
    fb, pb = split_bfm(emb_b)
    pa_prob = np.asarray(mask_prob_a, dtype=np.float64).ravel()
    pb_prob = np.asarray(mask_prob_b, dtype=np.float64).ravel()
    if not (len(fa) == len(fb) == len(pa_prob) == len(pb_prob)):
        raise ValueError("one embedding and one mask probability per image of every pair expected")
    partial = (pa_prob >= threshold) | (pb_prob >= threshold)
    scores = np.where(partial, _cos(pa, pb), _cos(fa, fb))
    return scores, partial
