"""Balanced feature matching (Huang et al.): a mask classifier routes each pair to a full-face
extractor (no mask) or a partial-face extractor (any mask).

Training uses the original and the masked image of every sample (``needs_pairs``):

- C, the mask classifier: cross-entropy, originals labelled 0 and masked twins 1;
- E_F, the full-face extractor (the configured backbone): ArcFace on the originals only;
- E_P, the partial-face extractor (a second copy of the backbone): ArcFace on both images with
  its own class centres, plus the guided loss
  ``|| E_P(x)/|E_P(x)| - E_P(x_masked)/|E_P(x_masked)| ||^2`` that pulls the masked feature
  onto the unmasked one.

Gradient: Eq. 4 of the paper has no stop-gradient, so by default both sides of the guided loss
move (``guided_stop_grad: false``). ``guided_stop_grad: true`` detaches the unmasked side, so only
the masked feature is pulled towards it (a variant, not the paper's).

``embed`` returns the routing-ready concatenation [E_F(x)/|E_F(x)|, E_P(x)/|E_P(x)|] and
``mask_logits`` the classifier's output; ``maskgen.training.inference.bfm_pair_scores``
routes pairs from them.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from maskgen.training.heads import CombinedMarginLoss, PartialFC
from maskgen.training.methods.base import Method, register_method


class MaskClassifier(nn.Module):
    """A small CNN for mask / no mask: a mask covers the lower half of an aligned face, a
    coarse and easy cue, so four strided conv blocks and a linear layer are enough."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 3
        for i in range(4):
            out_ch = width * 2**i
            layers += [
                nn.Conv2d(in_ch, out_ch, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(out_ch),
                nn.PReLU(out_ch),
            ]
            in_ch = out_ch
        self.body = nn.Sequential(*layers)
        self.fc = nn.Linear(in_ch, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x).mean(dim=(2, 3)))


def guided_loss(partial_orig: torch.Tensor, partial_masked: torch.Tensor, stop_grad: bool = True) -> torch.Tensor:
    """Mean over the batch of || f(x)/|f(x)| - f(x^)/|f(x^)| ||^2 (in [0, 4])."""
    target = F.normalize(partial_orig.float(), dim=1)
    if stop_grad:
        target = target.detach()
    return (target - F.normalize(partial_masked.float(), dim=1)).pow(2).sum(dim=1).mean()


@register_method("bfm")
class BalancedFeatureMatching(Method):
    """Options: ``s``, ``m`` (ArcFace of both extractors), ``sample_rate`` (partial FC),
    ``guided_weight``, ``guided_stop_grad``, ``classifier_width``, ``route_threshold``
    (P(mask) at or above which an image counts as masked)."""

    needs_pairs = True

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        embedding_size: int = 512,
        s: float = 64.0,
        m: float = 0.5,
        sample_rate: float = 1.0,
        guided_weight: float = 1.0,
        guided_stop_grad: bool = False,
        classifier_width: int = 16,
        route_threshold: float = 0.5,
        **options: Any,
    ) -> None:
        super().__init__(backbone, num_classes, embedding_size, **options)
        # E_P has E_F's architecture; it starts from E_F's weights as they are at the first
        # training step, i.e. after the trainer's init_from has loaded pretrained weights
        # into the backbone. The flag is saved with the weights, so a resumed run keeps E_P.
        self.partial = copy.deepcopy(backbone)
        self.register_buffer("partial_synced", torch.zeros((), dtype=torch.uint8))
        self.classifier = MaskClassifier(classifier_width)
        self.full_head = PartialFC(embedding_size, num_classes, CombinedMarginLoss(s, 1.0, m, 0.0), sample_rate)
        self.partial_head = PartialFC(embedding_size, num_classes, CombinedMarginLoss(s, 1.0, m, 0.0), sample_rate)
        self._synced: bool | None = None  # host copy of partial_synced: read once, not per step
        self.guided_weight = float(guided_weight)
        self.guided_stop_grad = bool(guided_stop_grad)
        self.route_threshold = float(route_threshold)

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        self._synced = None  # a loaded flag is read again at the next forward
        super()._load_from_state_dict(*args, **kwargs)

    @property
    def full(self) -> nn.Module:
        """E_F is the configured backbone (so ``freeze``/``init_from`` address it as usual)."""
        return self.backbone

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        if self._synced is None:
            self._synced = bool(self.partial_synced)
        if self.training and not self._synced:
            self.partial.load_state_dict(self.backbone.state_dict())
            self.partial_synced.fill_(1)
            self._synced = True
        orig, masked_img, labels = batch["image_orig"], batch["image_masked"], batch["label"]
        n = orig.shape[0]
        both = torch.cat([orig, masked_img])
        mask_target = torch.arange(2 * n, device=orig.device) >= n  # 0 originals, 1 masked twins
        mask_target = mask_target.long()
        with torch.autocast(device_type=orig.device.type, enabled=False):
            mask_logits = self.classifier(both.float())
        mask_loss = F.cross_entropy(mask_logits, mask_target)

        full_loss, acc = self.full_head(self.backbone(orig), labels)

        partial_emb = self.partial(both)
        partial_loss, partial_acc = self.partial_head(partial_emb, torch.cat([labels, labels]))
        g_loss = guided_loss(partial_emb[:n], partial_emb[n:], self.guided_stop_grad)

        loss = mask_loss + self.guided_weight * g_loss + full_loss + partial_loss
        with torch.no_grad():
            mask_acc = (mask_logits.argmax(1) == mask_target).float().mean()
        return {
            "loss": loss,
            "mask_loss": mask_loss.detach(),
            "guided_loss": g_loss.detach(),
            "full_loss": full_loss.detach(),
            "partial_loss": partial_loss.detach(),
            "acc": acc,
            "partial_acc": partial_acc,
            "mask_acc": mask_acc,
        }

    def mask_logits(self, images: torch.Tensor) -> torch.Tensor:
        """C's two logits per image: (no mask, mask)."""
        return self.classifier(images)

    @torch.no_grad()
    def predict_mask(self, images: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.mask_logits(images).float(), dim=1)[:, 1]

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """[E_F(x)/|E_F(x)|, E_P(x)/|E_P(x)|]: both routes, split by ``bfm_pair_scores``."""
        return torch.cat(
            [F.normalize(self.backbone(images).float(), dim=1), F.normalize(self.partial(images).float(), dim=1)],
            dim=1,
        )
