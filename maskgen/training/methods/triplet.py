"""FaceNet-style transfer (Sharma et al.): triplet loss with a margin on L2-normalised
embeddings, fine-tuning the last layers of a pretrained backbone (trainer ``init_from`` +
``freeze``).

Triplets are mined inside each batch of original + masked twins (``needs_pairs``): every image
is an anchor; its positive is drawn at random among the other images of its identity (its own
twin at least, so the loss teaches mask invariance), its negative at random among images of
other identities. The draws come from a generator seeded by (seed, epoch, step), so every
epoch gives each anchor a fresh negative and a rerun gives the same ones. The epoch and step
counters are buffers saved with the weights, so a resumed run continues the same sequence; a
trainer may call ``set_epoch`` at each epoch start, and without it the step counter alone keeps
the draws fresh.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from maskgen.training.methods.base import Method, register_method


def sample_triplets(
    labels: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(anchor, positive, negative) indices: one random positive and one random negative per
    anchor that has both; anchors without a positive or a negative are left out."""
    labels = labels.cpu()
    n = labels.numel()
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(n, dtype=torch.bool)
    pos_ok = same & ~eye
    neg_ok = ~same
    valid = pos_ok.any(1) & neg_ok.any(1)
    # uniform choice among allowed columns: argmax of random scores where allowed
    noise = torch.rand((2, n, n), generator=generator)
    pos = torch.where(pos_ok, noise[0], torch.full_like(noise[0], -1.0)).argmax(1)
    neg = torch.where(neg_ok, noise[1], torch.full_like(noise[1], -1.0)).argmax(1)
    anchors = torch.nonzero(valid).flatten()
    return anchors, pos[anchors], neg[anchors]


def triplet_loss(anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, margin: float) -> torch.Tensor:
    """FaceNet: mean of max(0, |a-p|^2 - |a-n|^2 + margin) on unit vectors."""
    d_pos = (anchor - positive).pow(2).sum(1)
    d_neg = (anchor - negative).pow(2).sum(1)
    return F.relu(d_pos - d_neg + margin).mean()


@register_method("triplet")
class Triplet(Method):
    """Options: ``margin`` (0.2 as in FaceNet), ``seed`` (triplet draws)."""

    needs_pairs = True

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        embedding_size: int = 512,
        margin: float = 0.2,
        seed: int = 0,
        **options: Any,
    ) -> None:
        super().__init__(backbone, num_classes, embedding_size, **options)
        if margin <= 0:
            raise ValueError(f"margin must be positive, got {margin}")
        self.margin = float(margin)
        self.seed = int(seed)
        self.register_buffer("epoch", torch.zeros((), dtype=torch.long))
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def set_epoch(self, epoch: int) -> None:
        """New epoch: new negatives (the step counter restarts)."""
        self.epoch.fill_(int(epoch))
        self.step.zero_()

    def _generator(self) -> torch.Generator:
        g = torch.Generator()
        g.manual_seed((self.seed * 1_000_003 + int(self.epoch)) * 1_000_003 + int(self.step))
        return g

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        images = torch.cat([batch["image_orig"], batch["image_masked"]])
        labels = torch.cat([batch["label"], batch["label"]])
        anchors, pos, neg = sample_triplets(labels, self._generator())
        if self.training:
            self.step += 1  # in place on the buffer
        emb = F.normalize(self.backbone(images).float(), dim=1)
        if anchors.numel() == 0:  # a batch of one identity: nothing to contrast, zero loss
            zero = emb.sum() * 0.0
            return {"loss": zero, "active": zero.detach(), "triplets": zero.detach()}
        idx = [t.to(emb.device) for t in (anchors, pos, neg)]
        loss = triplet_loss(emb[idx[0]], emb[idx[1]], emb[idx[2]], self.margin)
        with torch.no_grad():
            d_pos = (emb[idx[0]] - emb[idx[1]]).pow(2).sum(1)
            d_neg = (emb[idx[0]] - emb[idx[2]]).pow(2).sum(1)
            active = (d_pos - d_neg + self.margin > 0).float().mean()
            correct = (d_pos < d_neg).float().mean()
        return {
            "loss": loss,
            "active": active,
            "triplet_acc": correct,
            "triplets": torch.tensor(float(anchors.numel())),
        }
