"""Learning-rate schedules as multipliers of the base lr, per optimisation step.

Linear warm-up, then cosine, polynomial, step, SGDR (cosine with warm restarts) or constant.
A pure function of the step, so resuming needs no scheduler state.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence


def lr_factor(
    step: int,
    total_steps: int,
    schedule: str = "cosine",
    warmup_steps: int = 0,
    base_lr: float = 1.0,
    min_lr: float = 0.0,
    poly_power: float = 2.0,
    milestones: Sequence[int] = (),
    gamma: float = 0.1,
    cycle_steps: int | None = None,
    cycle_mult: float = 1.0,
    decay_steps: int | None = None,
) -> float:
    """lr(step) / base_lr. ``milestones`` are step numbers; ``min_lr`` is absolute;
    ``decay_steps``: cosine and poly reach the floor at this step and stay there."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    floor = min_lr / base_lr if base_lr > 0 else 0.0
    t = step - warmup_steps
    span = max(1, (decay_steps or total_steps) - warmup_steps)
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        p = min(1.0, t / span)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * p))
    if schedule == "poly":
        p = min(1.0, t / span)
        return floor + (1 - floor) * (1 - p) ** poly_power
    if schedule == "step":
        return gamma ** sum(1 for m in milestones if step >= m)
    if schedule == "sgdr":
        length = max(1, int(cycle_steps or span))
        while t >= length:
            t -= length
            length = max(1, int(round(length * cycle_mult)))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t / length))
    raise ValueError(f"unknown schedule {schedule!r}")


def build_schedule(config: dict, steps_per_epoch: int, total_steps: int) -> Callable[[int], float]:
    """The step -> lr function of a resolved training config."""
    warmup = config.get("warmup_steps")
    if warmup is None:
        warmup = int(round(float(config.get("warmup_epochs") or 0.0) * steps_per_epoch))
    milestones = [int(round(float(e) * steps_per_epoch)) for e in config.get("milestones") or []]
    cycle = config.get("cycle_steps") or (
        int(round(float(config["cycle_epochs"]) * steps_per_epoch)) if config.get("cycle_epochs") else steps_per_epoch)
    decay = config.get("decay_epochs")
    decay_steps = int(round(float(decay) * steps_per_epoch)) if decay else None
    base = float(config["lr"])

    def lr_at(step: int) -> float:
        return base * lr_factor(
            step, total_steps, config["schedule"], int(warmup), base, float(config.get("min_lr") or 0.0),
            float(config.get("poly_power", 2.0)), milestones, float(config.get("gamma", 0.1)),
            int(cycle), float(config.get("cycle_mult") or 1.0), decay_steps,
        )

    return lr_at
