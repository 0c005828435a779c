"""Margin-based classification heads: normalized (optionally sampled) classifier + margin loss.

``CombinedMarginLoss`` covers ArcFace (m2), CosFace (m3) and the combined margin
cos(m1*theta + m2) - m3 of insightface. ``NormalizedClassifier`` gives cosine logits; with
``sample_rate < 1`` it keeps every positive class of the batch plus random negatives (partial FC),
so a step with hundreds of thousands of identities costs a fraction of the full softmax.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class CombinedMarginLoss(nn.Module):
    """Cross-entropy on s * (cos(m1*theta + m2) - m3) for the target class, s * cos otherwise.

    Labels of -1 (a positive outside the sampled classes cannot happen, but the option is kept for
    callers that mask samples) are ignored.
    """

    def __init__(self, s: float = 64.0, m1: float = 1.0, m2: float = 0.5, m3: float = 0.0):
        super().__init__()
        self.s, self.m1, self.m2, self.m3 = float(s), float(m1), float(m2), float(m3)
        # easy-margin guard of insightface: beyond theta > pi - m2 use the CosFace-like fallback
        self.th = math.cos(math.pi - self.m2)
        self.mm = math.sin(math.pi - self.m2) * self.m2

    def margin_logits(self, cosine: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cosine = cosine.float().clamp(-1.0, 1.0)
        # gather/scatter with a validity mask instead of boolean indexing: no host sync per step
        valid = labels >= 0
        safe = labels.clamp_min(0).unsqueeze(1)
        target = cosine.gather(1, safe).squeeze(1)
        if self.m1 == 1.0 and self.m3 == 0.0 and self.m2 > 0:  # ArcFace
            sin = torch.sqrt((1.0 - target * target).clamp_min(1e-7))
            cos_m = target * math.cos(self.m2) - sin * math.sin(self.m2)
            final = torch.where(target > self.th, cos_m, target - self.mm)
        elif self.m1 == 1.0 and self.m2 == 0.0:  # CosFace
            final = target - self.m3
        else:  # combined
            theta = torch.acos(target.clamp(-1.0 + 1e-7, 1.0 - 1e-7))
            final = torch.cos(theta * self.m1 + self.m2) - self.m3
        final = torch.where(valid, final, target)
        return cosine.scatter(1, safe, final.unsqueeze(1)) * self.s

    def forward(self, cosine: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.margin_logits(cosine, labels), labels, ignore_index=-1)


class NormalizedClassifier(nn.Module):
    """Class centres on the unit sphere; ``forward`` returns cosine logits and (remapped) labels."""

    def __init__(self, embedding_size: int, num_classes: int, sample_rate: float = 1.0):
        super().__init__()
        if not 0.0 < sample_rate <= 1.0:
            raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate}")
        self.num_classes = int(num_classes)
        self.sample_rate = float(sample_rate)
        self.num_sample = max(1, int(round(self.sample_rate * self.num_classes)))
        self.weight = nn.Parameter(torch.normal(0, 0.01, (self.num_classes, embedding_size)))

    def sample(self, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Indices of the classes used this step (all positives + random negatives), new labels."""
        positive = torch.unique(labels[labels >= 0], sorted=True)
        if self.num_sample <= positive.numel():
            index = positive
        else:
            score = torch.rand(self.num_classes, device=labels.device)
            score[positive] = 2.0
            index = torch.topk(score, k=self.num_sample)[1].sort()[0]
        new_labels = labels.clone()
        valid = labels >= 0
        new_labels[valid] = torch.searchsorted(index, labels[valid])
        return index, new_labels

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        weight = self.weight
        if self.training and self.sample_rate < 1.0:
            index, labels = self.sample(labels)
            weight = weight[index]
        cosine = F.linear(F.normalize(embeddings), F.normalize(weight))
        return cosine, labels
