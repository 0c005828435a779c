"""Multi-Task ArcFace (Montero et al.): ArcFace plus a parallel 2-way mask-usage classifier.

The mask head reads the backbone's flattened feature map after the dropout, in parallel with
the embedding FC, so mask detection does not have to be encoded in the identity embedding.
The total loss is ``arcface + log(mask_loss + 1)``: the log keeps the easy auxiliary task
from dominating once identity loss is small. Twins with p = 0.5 come from the trainer
(``train_mask_ratio: 0.5`` on a ``--twins`` build).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from maskgen.training.heads import CombinedMarginLoss, PartialFC
from maskgen.training.methods.base import Method, register_method


class PreFCFeatures:
    """Captures the input of ``backbone.fc`` (flattened features after the dropout) with a
    forward pre-hook, so the backbone's own forward (autocast, fp32 head) stays untouched.

    Backbones without an ``fc`` Linear (MobileFaceNet's GDC head) have no such tensor; the
    mask head then reads the embedding instead (``source == "embedding"``).
    """

    def __init__(self, backbone: nn.Module) -> None:
        fc = getattr(backbone, "fc", None)
        self.value: torch.Tensor | None = None
        self.source = "pre_fc" if isinstance(fc, nn.Linear) else "embedding"
        self.in_features = fc.in_features if isinstance(fc, nn.Linear) else None
        if isinstance(fc, nn.Linear):
            fc.register_forward_pre_hook(self._hook)

    def _hook(self, module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        self.value = args[0]

    def pop(self, embeddings: torch.Tensor) -> torch.Tensor:
        if self.source == "embedding":
            return embeddings
        value, self.value = self.value, None
        if value is None:
            raise RuntimeError("backbone.fc did not run in this forward pass")
        return value


@register_method("multitask_arcface")
class MultiTaskArcFace(Method):
    """ArcFace on identities + cross-entropy on mask usage; ``predict_mask`` gives P(mask).

    Options: ``s``, ``m`` (ArcFace scale and angular margin), ``sample_rate`` (partial FC),
    ``mask_weight`` (multiplies the log term; 1.0 in the paper).
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        embedding_size: int = 512,
        s: float = 64.0,
        m: float = 0.5,
        sample_rate: float = 1.0,
        mask_weight: float = 1.0,
        **options: Any,
    ) -> None:
        super().__init__(backbone, num_classes, embedding_size, **options)
        self.head = PartialFC(embedding_size, num_classes, CombinedMarginLoss(s, 1.0, m, 0.0), sample_rate)
        # not a submodule attribute: the hook object holds no parameters
        self._features = PreFCFeatures(backbone)
        in_features = self._features.in_features or embedding_size
        self.mask_head = nn.Linear(in_features, 2)
        self.mask_weight = float(mask_weight)

    @property
    def mask_head_source(self) -> str:
        """``pre_fc`` (the paper's place) or ``embedding`` (backbones without an fc layer)."""
        return self._features.source

    def _forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embeddings = self.backbone(images)
        feats = self._features.pop(embeddings)
        with torch.autocast(device_type=feats.device.type, enabled=False):
            mask_logits = self.mask_head(feats.float())
        return embeddings, mask_logits

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        embeddings, mask_logits = self._forward(batch["image"])
        id_loss, acc = self.head(embeddings, batch["label"])
        masked = batch["masked"].long().to(mask_logits.device)
        mask_loss = F.cross_entropy(mask_logits, masked)
        loss = id_loss + self.mask_weight * torch.log(mask_loss + 1.0)
        with torch.no_grad():
            mask_acc = (mask_logits.argmax(dim=1) == masked).float().mean()
        return {
            "loss": loss,
            "id_loss": id_loss.detach(),
            "mask_loss": mask_loss.detach(),
            "acc": acc,
            "mask_acc": mask_acc,
        }

    def mask_logits(self, images: torch.Tensor) -> torch.Tensor:
        """Two logits per image: (no mask, mask)."""
        return self._forward(images)[1]

    def embed_with_mask(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(embedding, mask logits) from one backbone pass (what the ONNX export holds)."""
        return self._forward(images)

    @torch.no_grad()
    def predict_mask(self, images: torch.Tensor) -> torch.Tensor:
        """Probability that each face wears a mask."""
        return torch.softmax(self.mask_logits(images).float(), dim=1)[:, 1]
