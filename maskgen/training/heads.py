"""Margin-based classification heads: a class-centre matrix sharded across ranks (Partial FC).

``CombinedMarginLoss`` gives the margin logits of ArcFace (m2), CosFace (m3) and insightface's
combined margin cos(m1*theta + m2) - m3. ``PartialFC`` holds the class centres and returns the
loss: under DDP each rank keeps only ``num_classes / world`` rows (as insightface's Partial FC
does), the embeddings and labels of the whole global batch are all-gathered, each rank computes
the margin logits of its own classes, and the softmax cross-entropy is reduced across ranks. With
one process it is the plain full classifier. ``sample_rate < 1`` keeps every positive class of
the batch plus random negatives on each rank, a fixed number per step (no host sync).

Why sharded: replicated, the 2 M x 512 classifier of WebFace42M (4 GB, plus its gradient and
momentum) does not fit next to the backbone on one GPU; sharded over 8 GPUs it is 1/8 of that,
and each rank's logits are (global batch x classes/world).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

# (rank, world size) that a PartialFC built now is sharded for; the trainer sets it around
# building the method, everything else (inference, export, tests) gets the full classifier.
_SHARDING: ContextVar[tuple[int, int]] = ContextVar("classifier_sharding", default=(0, 1))


@contextmanager
def classifier_sharding(rank: int, world_size: int) -> Iterator[None]:
    """Build PartialFC heads inside this block as shard ``rank`` of ``world_size``."""
    token = _SHARDING.set((int(rank), int(world_size)))
    try:
        yield
    finally:
        _SHARDING.reset(token)


def shard_range(num_classes: int, rank: int, world_size: int) -> tuple[int, int]:
    """[start, stop) of the classes held by ``rank``: the first ``num_classes % world`` ranks
    hold one class more."""
    base, extra = divmod(int(num_classes), int(world_size))
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


class CombinedMarginLoss(nn.Module):
    """s * (cos(m1*theta + m2) - m3) for the target class, s * cos otherwise.

    Labels of -1 mark samples whose class is not among the logits (another rank holds it): their
    row is only scaled.
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
        """Cross-entropy of one process holding every class."""
        return F.cross_entropy(self.margin_logits(cosine, labels), labels, ignore_index=-1)


class _AllGather(torch.autograd.Function):
    """All-gather along dim 0 whose backward hands each rank the gradient of its own rows,
    summed over the ranks that used them.

    The result is multiplied by the world size: DDP averages the backbone's gradients over ranks,
    and the loss behind this gather is already the global mean, so without the factor the
    backbone would get 1/world of its gradient (insightface's AllGather does the same).
    """

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        world = dist.get_world_size()
        parts = [torch.empty_like(tensor) for _ in range(world)]
        dist.all_gather(parts, tensor.contiguous())
        ctx.rank, ctx.rows = dist.get_rank(), tensor.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous()
        dist.all_reduce(grad)
        own = grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows]
        return own * dist.get_world_size()


def _gather_labels(labels: torch.Tensor) -> torch.Tensor:
    parts = [torch.empty_like(labels) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, labels.contiguous())
    return torch.cat(parts)


class _ShardedCrossEntropy(torch.autograd.Function):
    """Mean softmax cross-entropy over the global batch when each rank holds some columns of the
    logits; labels are local column indices, -1 where another rank holds the target."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        logits = logits.float()
        row_max = logits.max(dim=1, keepdim=True)[0]
        dist.all_reduce(row_max, dist.ReduceOp.MAX)
        exp = (logits - row_max).exp_()
        total = exp.sum(dim=1, keepdim=True)
        dist.all_reduce(total)
        prob = exp.div_(total)
        valid = labels >= 0
        safe = labels.clamp_min(0).unsqueeze(1)
        target = prob.gather(1, safe).squeeze(1) * valid
        dist.all_reduce(target)
        ctx.save_for_backward(prob, safe, valid)
        return -target.clamp_min(1e-30).log().mean()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        prob, safe, valid = ctx.saved_tensors
        g = prob.clone()
        g.scatter_add_(1, safe, -valid.to(g.dtype).unsqueeze(1))
        return g * (grad / prob.shape[0]), None


class PartialFC(nn.Module):
    """Normalised class centres and their margin loss; ``forward`` returns (loss, accuracy).

    ``weight`` holds the rows ``[class_start, class_start + num_local)`` of the full
    ``num_classes x embedding_size`` matrix: all of it with one process, 1/world of it under the
    trainer's DDP. The loss is the mean cross-entropy over the global batch on every rank.
    """

    def __init__(self, embedding_size: int, num_classes: int, margin: CombinedMarginLoss,
                 sample_rate: float = 1.0) -> None:
        super().__init__()
        if not 0.0 < sample_rate <= 1.0:
            raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate}")
        self.rank, self.world_size = _SHARDING.get()
        self.num_classes = int(num_classes)
        self.class_start, stop = shard_range(self.num_classes, self.rank, self.world_size)
        self.num_local = stop - self.class_start
        if self.num_local < 1:
            raise ValueError(f"{num_classes} classes cannot be sharded over {self.world_size} ranks")
        self.sample_rate = float(sample_rate)
        self.num_sample = max(1, int(round(self.sample_rate * self.num_local)))
        self.margin = margin
        self.weight = nn.Parameter(torch.normal(0, 0.01, (self.num_local, int(embedding_size))))

    @property
    def sharded(self) -> bool:
        return self.world_size > 1

    def sample(self, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows used this step, labels remapped to them): every local positive plus random
        negatives. The count is fixed (``num_sample``, raised to the global batch so every
        positive fits), so no step waits on the host for the number of distinct labels."""
        k = min(self.num_local, max(self.num_sample, labels.numel()))
        score = torch.rand(self.num_local, device=labels.device)
        valid = labels >= 0
        safe = labels.clamp_min(0)
        # positives score 2 (above any rand); amax leaves the rows of -1 labels untouched
        score.scatter_reduce_(0, safe, torch.where(valid, 2.0, 0.0), reduce="amax")
        index = torch.topk(score, k=k, sorted=False)[1].sort()[0]
        remapped = torch.searchsorted(index, safe)
        return index, torch.where(valid, remapped, labels)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.sharded:
            embeddings = _AllGather.apply(embeddings)
            labels = _gather_labels(labels)
        local = labels - self.class_start
        local = torch.where((local >= 0) & (local < self.num_local), local, torch.full_like(local, -1))
        weight = self.weight
        if self.training and self.sample_rate < 1.0:
            index, local = self.sample(local)
            weight = weight[index]
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            cosine = F.linear(F.normalize(embeddings.float()), F.normalize(weight.float()))
            logits = self.margin.margin_logits(cosine, local)
            if self.sharded:
                loss = _ShardedCrossEntropy.apply(logits, local)
            else:
                loss = F.cross_entropy(logits, local, ignore_index=-1)
        with torch.no_grad():
            acc = self._accuracy(cosine.detach(), local)
        return loss, acc

    def _accuracy(self, cosine: torch.Tensor, local: torch.Tensor) -> torch.Tensor:
        """Share of samples whose own class has the highest cosine over all ranks' classes."""
        best = cosine.max(dim=1)[0]
        own = cosine.gather(1, local.clamp_min(0).unsqueeze(1)).squeeze(1)
        own = torch.where(local >= 0, own, torch.full_like(own, -2.0))
        if self.sharded:
            both = torch.stack([best, own])
            dist.all_reduce(both, dist.ReduceOp.MAX)
            best, own = both[0], both[1]
        return (own >= best).float().mean()


def classifier_prefixes(model: nn.Module) -> list[str]:
    """Names of the PartialFC submodules of ``model``: the parameters the EMA skips, DDP leaves
    alone (they differ per rank) and inference never needs."""
    return [name for name, m in model.named_modules() if isinstance(m, PartialFC)]


def is_classifier_key(key: str, prefixes: list[str]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)
