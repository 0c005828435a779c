"""ElasticFace (Boutros et al., CVPR-W 2022): ArcFace / CosFace with a margin drawn per sample.

"ElasticFace: Elastic Margin Loss for Deep Face Recognition" replaces the fixed margin of
ArcFace (``cos(theta + m)``) and CosFace (``cos(theta) - m``) by one drawn for every sample of
every step from a normal distribution N(m, sigma): the decision boundary is not pinned to one
value, which the paper finds generalises better. ElasticFace-Arc uses m = 0.5, ElasticFace-Cos
m = 0.35, both sigma = 0.05 and s = 64. The "+" variant (``plus: true``) sorts each step's
margins so that the hardest samples (lowest cosine to their own class centre) get the largest.

Options: ``s``, ``m``, ``sigma``, ``plus``, ``seed`` (the margins' own random stream, the same
on every rank so a sharded classifier agrees on each sample's margin) and ``sample_rate``
(partial FC, as for ArcFace). With ``sigma: 0`` the loss is ArcFace / CosFace exactly
(including ArcFace's easy-margin guard of insightface, applied per sample).

Adding this loss touched this file, ``configs/methods/elasticface_*.yaml`` and
``tests/test_method_elasticface.py`` only (see docs/extending.md).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from maskgen.training.heads import CombinedMarginLoss, PartialFC
from maskgen.training.methods.base import Method, register_method
from maskgen.training.methods.margin import MarginMethod


class ElasticMarginLoss(CombinedMarginLoss):
    """Margin logits with a per-sample margin m_i ~ N(m, sigma): ``s * cos(theta + m_i)``
    (``kind="arc"``) or ``s * (cos(theta) - m_i)`` (``kind="cos"``) for the target class.

    Draw ``k`` of a module uses the seed ``seed * 1_000_003 + k`` on the logits' device, so runs
    with one seed draw the same margins, and every rank of a sharded classifier draws the same
    margin for the same row of the gathered batch.
    """

    def __init__(self, kind: str = "arc", s: float = 64.0, m: float = 0.5, sigma: float = 0.05,
                 plus: bool = False, seed: int = 0) -> None:
        if kind not in ("arc", "cos"):
            raise ValueError(f"ElasticFace kind must be 'arc' or 'cos', got {kind!r}")
        if not sigma >= 0.0:
            raise ValueError(f"ElasticFace sigma must be >= 0, got {sigma}")
        m2, m3 = (m, 0.0) if kind == "arc" else (0.0, m)
        super().__init__(s, 1.0, m2, m3)
        self.kind, self.m, self.sigma, self.plus, self.seed = kind, float(m), float(sigma), bool(plus), int(seed)
        # ranks the classifier is sharded over (the PartialFC's): > 1, each holds some classes
        self.world_size = 1
        self.draws = 0  # steps drawn so far: the next draw's seed
        self._generators: dict[torch.device, torch.Generator] = {}

    def draw_margins(self, n: int, device: torch.device) -> torch.Tensor:
        """The next ``n`` margins (float32 on ``device``), sorted ascending for ``plus``."""
        gen = self._generators.get(device)
        if gen is None:
            gen = self._generators[device] = torch.Generator(device=device)
        gen.manual_seed(self.seed * 1_000_003 + self.draws)
        self.draws += 1
        noise = torch.randn(n, generator=gen, device=device, dtype=torch.float32)
        margins = self.m + self.sigma * noise
        return margins.sort()[0] if self.plus else margins

    def _target_cosines(self, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Every row's cosine to its own centre; under sharding only the rank holding the class
        knows it, so the ranks sum their known values (each row is known on exactly one)."""
        known = torch.where(valid, target, torch.zeros_like(target))
        if self.world_size > 1 and dist.is_available() and dist.is_initialized():
            known = known.clone()
            dist.all_reduce(known)
        return known

    def margin_logits(self, cosine: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cosine = cosine.float().clamp(-1.0, 1.0)
        valid = labels >= 0
        safe = labels.clamp_min(0).unsqueeze(1)
        target = cosine.gather(1, safe).squeeze(1)
        margins = self.draw_margins(target.shape[0], cosine.device)
        if self.plus:
            with torch.no_grad():  # the hardest sample (lowest cosine) gets the largest margin
                order = self._target_cosines(target.detach(), valid).argsort(descending=True)
                margins = torch.empty_like(margins).scatter_(0, order, margins)
        if self.kind == "arc":
            sin = torch.sqrt((1.0 - target * target).clamp_min(1e-7))
            cos_m = target * torch.cos(margins) - sin * torch.sin(margins)
            # insightface's guard past theta > pi - m_i, per sample (as ArcFace's here)
            th = torch.cos(math.pi - margins)
            mm = torch.sin(math.pi - margins) * margins
            final = torch.where(target > th, cos_m, target - mm)
        else:
            final = target - margins
        final = torch.where(valid, final, target)
        return cosine.scatter(1, safe, final.unsqueeze(1)) * self.s


class ElasticFaceMethod(MarginMethod):
    """ArcFace's method (backbone + partial FC head, same ``forward``) with the elastic margin."""

    kind = "arc"
    default_m = 0.5

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        embedding_size: int = 512,
        s: float = 64.0,
        m: float | None = None,
        sigma: float = 0.05,
        plus: bool = False,
        seed: int = 0,
        sample_rate: float = 1.0,
        **options: Any,
    ) -> None:
        Method.__init__(self, backbone, num_classes, embedding_size, **options)  # not MarginMethod's head
        margin = ElasticMarginLoss(self.kind, s, self.default_m if m is None else m, sigma, plus, seed)
        self.head = PartialFC(embedding_size, num_classes, margin, sample_rate)
        margin.world_size = self.head.world_size  # sharded under the trainer's DDP


@register_method("elasticface_arc")
class ElasticFaceArc(ElasticFaceMethod):
    """ElasticFace-Arc: cos(theta + m_i), m_i ~ N(0.5, 0.05), s = 64 (``plus`` for ElasticFace-Arc+)."""

    kind = "arc"
    default_m = 0.5


@register_method("elasticface_cos")
class ElasticFaceCos(ElasticFaceMethod):
    """ElasticFace-Cos: cos(theta) - m_i, m_i ~ N(0.35, 0.05), s = 64 (``plus`` for ElasticFace-Cos+)."""

    kind = "cos"
    default_m = 0.35
