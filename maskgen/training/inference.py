"""Inference-time combinations used by the masked-face papers.

- ``ConcatEmbedder`` (Qi et al.): the embeddings of several models, each L2-normalised, are
  concatenated; cosine similarity of the result is the mean of the models' cosines, so two
  models trained differently (e.g. with and without DropBlock) vote with equal weight.
- ``bfm_pair_scores`` (Huang et al.): a pair is compared with the full-face features when the
  mask classifier says neither face wears a mask, with the partial-face features otherwise.
  Routing is per pair, not per image: the two images of a pair must be compared in one
  feature space. That cannot be expressed by a single per-image vector and a cosine, so the
  BFM embedding carries both routes and this function does the pair-level choice.
- ``MethodEmbedder``: an ``nn.Module`` view of a trained method for evaluation and export:
  ``forward`` is ``method.embed`` and ``mask_logits`` is forwarded when the method has a
  mask-usage head (Multi-Task ArcFace, BFM).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class MethodEmbedder(nn.Module):
    """``forward(images) -> embeddings``; ``mask_logits(images)`` when the method has a head."""

    def __init__(self, method: nn.Module) -> None:
        super().__init__()
        self.method = method
        if callable(getattr(method, "mask_logits", None)):
            self.mask_logits = method.mask_logits  # type: ignore[method-assign]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        embed = getattr(self.method, "embed", None)
        return embed(images) if callable(embed) else self.method(images)


class ConcatEmbedder(nn.Module):
    """Feature concatenation of several embedders (nn.Modules mapping images to (B, D_i)).

    ``weights`` scale each normalised part (default equal); the output has sum(D_i) dims.
    The first model with a ``mask_logits`` method provides the mask head.
    """

    def __init__(self, models: Sequence[nn.Module], weights: Sequence[float] | None = None) -> None:
        super().__init__()
        if len(models) < 2:
            raise ValueError("feature concatenation needs at least two models")
        if weights is not None and len(weights) != len(models):
            raise ValueError("one weight per model expected")
        self.models = nn.ModuleList(models)
        self.weights = [1.0] * len(models) if weights is None else [float(w) for w in weights]
        for m in models:
            if callable(getattr(m, "mask_logits", None)):
                self.mask_logits = m.mask_logits  # type: ignore[method-assign]
                break

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        parts = [w * F.normalize(m(images).float(), dim=1) for m, w in zip(self.models, self.weights)]
        return torch.cat(parts, dim=1)


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
