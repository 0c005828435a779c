"""ArcFace, CosFace and the combined margin (insightface) as training methods.

Options: ``s`` (scale), ``m1``/``m2``/``m3`` (margins; defaults per method), ``sample_rate``
(partial FC: fraction of each rank's classes in each step's softmax, positives always kept).
The classifier is a ``PartialFC``: sharded across ranks under DDP.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from maskgen.training.heads import CombinedMarginLoss, PartialFC
from maskgen.training.methods.base import Method, register_method


class MarginMethod(Method):
    default_margins: tuple[float, float, float] = (1.0, 0.5, 0.0)

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        embedding_size: int = 512,
        s: float = 64.0,
        m1: float | None = None,
        m2: float | None = None,
        m3: float | None = None,
        sample_rate: float = 1.0,
        **options: Any,
    ) -> None:
        super().__init__(backbone, num_classes, embedding_size, **options)
        d1, d2, d3 = self.default_margins
        margin = CombinedMarginLoss(
            s, d1 if m1 is None else m1, d2 if m2 is None else m2, d3 if m3 is None else m3
        )
        self.head = PartialFC(embedding_size, num_classes, margin, sample_rate)

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        loss, acc = self.head(self.backbone(batch["image"]), batch["label"])
        return {"loss": loss, "acc": acc}


@register_method("arcface")
class ArcFace(MarginMethod):
    """Additive angular margin: cos(theta + 0.5), s = 64."""

    default_margins = (1.0, 0.5, 0.0)


@register_method("cosface")
class CosFace(MarginMethod):
    """Additive cosine margin: cos(theta) - 0.4, s = 64."""

    default_margins = (1.0, 0.0, 0.4)


@register_method("combined")
class CombinedMargin(MarginMethod):
    """insightface combined margin: cos(m1*theta + m2) - m3 with (1.0, 0.3, 0.2)."""

    default_margins = (1.0, 0.3, 0.2)
