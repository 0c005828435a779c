"""Exponential moving average of a model's weights (kept in fp32 on the training device).

Only the weights inference uses are averaged: the classifier (``PartialFC`` class centres,
possibly millions of rows and sharded across ranks) is never copied, so the EMA costs one
backbone, not one backbone plus one classifier.
"""

from __future__ import annotations

import torch
from torch import nn

from maskgen.training.heads import classifier_prefixes, is_classifier_key


class ModelEma:
    """``ema = decay * ema + (1 - decay) * weights`` after every step, with the usual warm-up
    ``min(decay, (1 + n) / (10 + n))`` so early averages are not dominated by the random init.

    ``state_dict()`` holds the averaged entries of ``model.state_dict()`` (classifier excluded);
    loading it over a model's own state gives the EMA model.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999):
        self.decay = float(decay)
        skip = classifier_prefixes(model)
        self.shadow: dict[str, torch.Tensor] = {
            k: v.detach().clone() for k, v in model.state_dict().items() if not is_classifier_key(k, skip)
        }
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        ema_float, src_float = [], []
        state = model.state_dict()
        for name, target in self.shadow.items():
            value = state[name].detach()
            if target.dtype.is_floating_point:
                ema_float.append(target)
                src_float.append(value)
            else:
                target.copy_(value)
        if ema_float:
            torch._foreach_lerp_(ema_float, src_float, 1.0 - d)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.shadow)

    def load_state_dict(self, state: dict[str, torch.Tensor], updates: int = 0) -> None:
        """Load averaged weights; entries of older checkpoints that averaged the classifier too
        are ignored."""
        for name, target in self.shadow.items():
            if name not in state:
                raise KeyError(f"EMA state lacks {name}")
            target.copy_(state[name])
        self.updates = updates
