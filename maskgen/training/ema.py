"""Exponential moving average of a model's weights (kept in fp32 on the training device)."""

from __future__ import annotations

import copy

import torch
from torch import nn


class ModelEma:
    """``ema = decay * ema + (1 - decay) * weights`` after every step, with the usual warm-up
    ``min(decay, (1 + n) / (10 + n))`` so early averages are not dominated by the random init."""

    def __init__(self, model: nn.Module, decay: float = 0.999):
        self.decay = float(decay)
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        ema_state = self.module.state_dict()
        ema_float, src_float = [], []
        for name, value in model.state_dict().items():
            target = ema_state[name]
            if target.dtype.is_floating_point:
                ema_float.append(target)
                src_float.append(value.detach())
            else:
                target.copy_(value)
        if ema_float:
            torch._foreach_lerp_(ema_float, src_float, 1.0 - d)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor], updates: int = 0) -> None:
        self.module.load_state_dict(state)
        self.updates = updates
