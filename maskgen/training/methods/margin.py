"""ArcFace, CosFace and the combined margin (insightface) as training methods.

Options: ``s`` (scale), ``m1``/``m2``/``m3`` (margins; defaults per method), ``sample_rate``
(partial FC: fraction of classes in each step's softmax, positives always kept).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from maskgen.training.heads import CombinedMarginLoss, NormalizedClassifier
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
        self.head = NormalizedClassifier(embedding_size, num_classes, sample_rate)
        self.loss = CombinedMarginLoss(
            s, d1 if m1 is None else m1, d2 if m2 is None else m2, d3 if m3 is None else m3
        )

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        embeddings = self.backbone(batch["image"])
        cosine, labels = self.head(embeddings, batch["label"])
        loss = self.loss(cosine, labels)
        with torch.no_grad():
            acc = (cosine.argmax(dim=1) == labels).float().mean()
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
