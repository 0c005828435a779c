"""FaceNet-style transfer (Sharma et al.): a pretrained backbone, an added Dense + BatchNorm
layer on top of its embedding, and a triplet loss with margin 0.5 on L2-normalised embeddings.

The paper got its "best results with freezing all but the last layer": the config trains only
the added layer (``freeze: [neck]``). Without a pretrained backbone the embeddings are random and
the loss sits at the margin, so the trainer refuses to start without ``init_from``
(``needs_pretrained``).

Triplets are formed inside each batch of original + masked twins (``needs_pairs``): every image
is an anchor; its positive is another image of its identity (its own twin at least), its
negative an image of another identity. "A new random Negative to triplets after each epoch": the
choice is a hash of (seed, epoch, anchor key, candidate key), so it changes at each epoch
(``set_epoch``, called by the trainer) and not between the steps of one epoch, and a rerun or a
resumed run draws the same ones. The draw runs on the host from the sample keys and labels the
loader already has, so the step never waits for the device.
"""

from __future__ import annotations

import hashlib
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from maskgen.training.methods.base import Method, register_method

_MIX = np.uint64(0x9E3779B97F4A7C15)


def _key_hashes(keys: Sequence[str], seed: int, epoch: int) -> np.ndarray:
    return np.array([int.from_bytes(hashlib.blake2b(f"{seed}|{epoch}|{k}".encode(), digest_size=8).digest(), "little")
                     for k in keys], dtype=np.uint64)


def pair_scores(keys: Sequence[str], seed: int, epoch: int) -> np.ndarray:
    """(n, n) pseudo-random scores in [0, 1), a pure function of (seed, epoch, key a, key b)."""
    h = _key_hashes(keys, seed, epoch)
    with np.errstate(over="ignore"):
        x = h[:, None] * _MIX ^ (h[None, :] + _MIX)
        x ^= x >> np.uint64(31)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(29)
    return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def sample_triplets(labels: np.ndarray | torch.Tensor, keys: Sequence[str], seed: int, epoch: int
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(positive index, negative index, valid) per anchor: the best-scoring other image of the
    same identity and of another identity; anchors lacking either are not valid."""
    labels = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)
    n = len(labels)
    same = labels[:, None] == labels[None, :]
    pos_ok = same & ~np.eye(n, dtype=bool)
    neg_ok = ~same
    score = pair_scores(keys, seed, epoch)
    pos = np.where(pos_ok, score, -1.0).argmax(1)
    neg = np.where(neg_ok, score, -1.0).argmax(1)
    return pos, neg, pos_ok.any(1) & neg_ok.any(1)


def triplet_loss(anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, margin: float,
                 valid: torch.Tensor | None = None) -> torch.Tensor:
    """FaceNet: mean over valid anchors of max(0, |a-p|^2 - |a-n|^2 + margin) on unit vectors."""
    d_pos = (anchor - positive).pow(2).sum(1)
    d_neg = (anchor - negative).pow(2).sum(1)
    hinge = F.relu(d_pos - d_neg + margin)
    if valid is None:
        return hinge.mean()
    w = valid.to(hinge.dtype)
    return (hinge * w).sum() / w.sum().clamp_min(1.0)


@register_method("triplet")
class Triplet(Method):
    """Options: ``margin`` (0.5 in the paper), ``seed`` (triplet draws), ``extra_layer``
    (the added Dense + BatchNorm layer, on by default as in the paper)."""

    needs_pairs = True
    needs_pretrained = True

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        embedding_size: int = 512,
        margin: float = 0.5,
        seed: int = 0,
        extra_layer: bool = True,
        **options: Any,
    ) -> None:
        super().__init__(backbone, num_classes, embedding_size, **options)
        if margin <= 0:
            raise ValueError(f"margin must be positive, got {margin}")
        self.margin = float(margin)
        self.seed = int(seed)
        self.epoch = 0
        self.neck = (nn.Sequential(nn.Linear(embedding_size, embedding_size), nn.BatchNorm1d(embedding_size))
                     if extra_layer else nn.Identity())

    def set_epoch(self, epoch: int) -> None:
        """New epoch: new negatives (and positives) for every anchor."""
        self.epoch = int(epoch)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return self.neck(self.backbone(images).float())

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        images = torch.cat([batch["image_orig"], batch["image_masked"]])
        keys = [f"{k}.orig" for k in batch["key"]] + [f"{k}.masked" for k in batch["key"]]
        host = batch.get("label_host", batch["label"])  # the loader's CPU copy: no device read
        pos, neg, valid = sample_triplets(torch.cat([host, host]), keys, self.seed, self.epoch)
        emb = F.normalize(self.embed(images), dim=1)
        device = emb.device

        def upload(a: np.ndarray) -> torch.Tensor:  # pinned, so the copy does not block the host
            t = torch.from_numpy(a)
            return t.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else t

        pos_t, neg_t, valid_t = upload(pos), upload(neg), upload(valid)
        loss = triplet_loss(emb, emb[pos_t], emb[neg_t], self.margin, valid_t)
        with torch.no_grad():
            d_pos = (emb - emb[pos_t]).pow(2).sum(1)
            d_neg = (emb - emb[neg_t]).pow(2).sum(1)
            w = valid_t.float()
            n = w.sum().clamp_min(1.0)
            active = ((d_pos - d_neg + self.margin > 0).float() * w).sum() / n
            correct = ((d_pos < d_neg).float() * w).sum() / n
        return {"loss": loss, "active": active, "triplet_acc": correct, "triplets": w.sum()}
