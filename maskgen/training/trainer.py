"""The training loop: streaming shards -> method (backbone + heads) -> optimizer, on 1..N devices.

``train(config, **overrides)`` is the whole program behind ``maskgen train`` and is callable from
tests. bf16 autocast on GPUs that have it, fp16 with a GradScaler otherwise, fp32 on the CPU;
channels-last; optional torch.compile; DDP when started by torchrun.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from collections import Counter
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from maskgen.training.augment import AugmentConfig
from maskgen.training.checkpoint import (
    backbone_state,
    build_method,
    list_checkpoints,
    load_checkpoint,
    resolve_checkpoint,
    save_checkpoint,
)
from maskgen.training.config import resolve_config, save_config
from maskgen.training.distributed import DistInfo, all_reduce_mean, cleanup, gather_counts, init_distributed
from maskgen.training.ema import ModelEma
from maskgen.training.loader import LoaderConfig, expand_shards, make_loader, read_dataset_info, to_device
from maskgen.training.methods import method_class
from maskgen.training.schedules import build_schedule

log = logging.getLogger("maskgen.train")
_MAX_NONFINITE = 50  # consecutive non-finite losses before giving up


@dataclass
class TrainResult:
    run_dir: Path
    checkpoint: Path | None
    step: int
    epoch: int
    history: list[dict[str, Any]] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)


def pick_precision(request: str, device: torch.device) -> str:
    if device.type != "cuda":
        if request == "fp16":
            raise ValueError("fp16 training needs a GPU; use fp32 or bf16 on the CPU")
        return "fp32" if request == "auto" else request
    if request == "auto":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return request


def apply_freeze(method: nn.Module, prefixes: list[str] | str | None) -> list[str]:
    """Train only parameters whose names start with one of ``prefixes``; returns their names."""
    if not prefixes:
        return [n for n, p in method.named_parameters() if p.requires_grad]
    prefixes = [prefixes] if isinstance(prefixes, str) else list(prefixes)
    trained = []
    for name, p in method.named_parameters():
        keep = any(name.startswith(pre) for pre in prefixes)
        p.requires_grad_(keep and p.requires_grad)
        if keep:
            trained.append(name)
    if not trained:
        raise ValueError(f"freeze prefixes {prefixes} match no parameter of the model")
    return trained


def _frozen_bn_modules(method: nn.Module) -> list[nn.Module]:
    return [
        m for m in method.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not any(p.requires_grad for p in m.parameters())
    ]


def build_optimizer(config: dict[str, Any], params: list[nn.Parameter]) -> torch.optim.Optimizer:
    if config["optimizer"] == "sgd":
        return torch.optim.SGD(
            params, lr=float(config["lr"]), momentum=float(config["momentum"]),
            weight_decay=float(config["weight_decay"]),
        )
    return torch.optim.AdamW(
        params, lr=float(config["lr"]), betas=tuple(config["betas"]), weight_decay=float(config["weight_decay"])
    )


def _rng_state(device: torch.device) -> dict[str, Any]:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


class JsonLog:
    """Append-only JSON-lines log (one object per logging step)."""

    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled = path, enabled

    def write(self, row: dict[str, Any]) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(row) + "\n")


def train_step(
    model: nn.Module,
    batch: dict[str, Any],
    optimizer: torch.optim.Optimizer,
    params: list[nn.Parameter],
    scaler: torch.amp.GradScaler | None = None,
    amp_dtype: torch.dtype | None = None,
    grad_clip: float | None = None,
) -> tuple[dict[str, torch.Tensor], bool]:
    """One optimisation step (forward under autocast, backward, clip, update).

    Returns the method's outputs and whether the update was applied: with bf16/fp32 a step whose
    gradient norm is not finite is skipped (one host sync per step); with fp16 the GradScaler
    skips it and lowers its scale.
    """
    device_type = batch["label"].device.type
    with torch.autocast(device_type, dtype=amp_dtype) if amp_dtype else nullcontext():
        out = model(batch)
    loss = out["loss"]
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
    else:
        loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(params, float(grad_clip)) if grad_clip else None
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
        return out, True
    if norm is not None and not torch.isfinite(norm):
        optimizer.zero_grad(set_to_none=True)
        return out, False
    optimizer.step()
    return out, True


def train(config: dict[str, Any] | str | os.PathLike | None = None, **overrides: Any) -> TrainResult:
    """Train a method on shards. ``config``: a dict or YAML path; ``overrides``: config keys
    (dotted for nested options). Returns the run folder, last checkpoint and logged rows."""
    cfg = resolve_config(config, **overrides)
    dist_info = init_distributed(cfg["device"])
    try:
        return _train(cfg, dist_info)
    finally:
        cleanup(dist_info)


def _train(cfg: dict[str, Any], di: DistInfo) -> TrainResult:
    device = di.device
    if cfg.get("threads") and device.type == "cpu":
        torch.set_num_threads(int(cfg["threads"]))
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    precision = pick_precision(cfg["precision"], device)
    channels_last = device.type == "cuda" if cfg["channels_last"] == "auto" else bool(cfg["channels_last"])

    # -- data -----------------------------------------------------------------------------------
    shards = expand_shards(cfg["shards"])
    if cfg.get("num_classes") is not None and cfg.get("samples_per_epoch") is not None:
        info = None  # nothing to look up (remote shards without a local dataset.json)
    else:
        info = read_dataset_info(shards, cfg.get("dataset_json"))
    if cfg.get("num_classes") is None:
        if info.num_classes is None:
            raise ValueError("num_classes is unknown: set it, or give a dataset.json with num_classes")
        cfg["num_classes"] = info.num_classes
    if cfg.get("samples_per_epoch") is None:
        cfg["samples_per_epoch"] = info.num_samples
    batch_size, world = int(cfg["batch_size"]), di.world_size
    steps_per_epoch = max(1, int(cfg["samples_per_epoch"]) // (batch_size * world))
    total_steps = int(cfg["max_steps"]) if cfg.get("max_steps") else int(cfg["epochs"]) * steps_per_epoch
    num_epochs = math.ceil(total_steps / steps_per_epoch)
    needs_pairs = bool(getattr(method_class(cfg["method"]), "needs_pairs", False))
    lcfg = LoaderConfig(
        shards=shards, batch_size=batch_size, steps_per_epoch=steps_per_epoch,
        num_classes=int(cfg["num_classes"]), seed=int(cfg["seed"]), shuffle_buffer=int(cfg["shuffle_buffer"]),
        resampled=bool(cfg["resampled"]), train_mask_ratio=cfg.get("train_mask_ratio"),
        mask_choice_per_epoch=bool(cfg["mask_choice_per_epoch"]), pairs=needs_pairs,
        augment=AugmentConfig.from_options(cfg.get("augment")), image_size=int(cfg["image_size"]),
        rank=di.rank, world_size=world, num_workers=int(cfg["num_workers"]),
    )
    loader, stream = make_loader(lcfg, pin_memory=device.type == "cuda")

    # -- model ----------------------------------------------------------------------------------
    torch.manual_seed(int(cfg["seed"]))
    method = build_method(cfg)
    if cfg.get("init_from"):
        state = backbone_state(cfg["init_from"])
        result = method.backbone.load_state_dict(state, strict=False)
        if len(result.missing_keys) == len(method.backbone.state_dict()):
            raise ValueError(f"init_from {cfg['init_from']}: no weight matches the backbone {cfg['model']}")
        if di.is_main:
            log.info("init_from %s: %d missing, %d unexpected keys", cfg["init_from"],
                     len(result.missing_keys), len(result.unexpected_keys))
    trained = apply_freeze(method, cfg.get("freeze"))
    frozen_bn = _frozen_bn_modules(method) if cfg.get("freeze") and cfg.get("freeze_bn") else []
    method.to(device)
    if channels_last:
        method.to(memory_format=torch.channels_last)
    ema = ModelEma(method, float(cfg["ema"])) if cfg.get("ema") else None
    params = [p for p in method.parameters() if p.requires_grad]
    optimizer = build_optimizer(cfg, params)
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
    lr_at = build_schedule(cfg, steps_per_epoch, total_steps)

    # -- run folder and resume ------------------------------------------------------------------
    name = cfg.get("name") or f"{cfg['model']}-{cfg['method']}"
    cfg["name"] = name
    run_dir = Path(cfg["output"]) / name
    step, skipped = 0, Counter()
    if cfg.get("resume"):
        ckpt = load_checkpoint(resolve_checkpoint(cfg["resume"], run_dir), map_location="cpu")
        method.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        if ema is not None and ckpt.get("ema") is not None:
            ema.load_state_dict(ckpt["ema"], int(ckpt.get("ema_updates", 0)))
        step = int(ckpt["step"])
        skipped.update(ckpt.get("skipped") or {})
        _set_rng_state(ckpt["rng"][min(di.rank, len(ckpt["rng"]) - 1)], device)
        if di.is_main:
            log.info("resumed %s at step %d", run_dir, step)
    else:
        if list_checkpoints(run_dir):
            raise FileExistsError(f"{run_dir} already has checkpoints: pass resume='latest' or another name")
        torch.manual_seed(int(cfg["seed"]) * 1000 + di.rank + 1)  # dropout/sampling differ per rank
    if di.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
    jlog = JsonLog(run_dir / "log.jsonl", di.is_main)

    model: nn.Module = method
    if cfg.get("compile"):
        model = torch.compile(model)
    if world > 1:
        model = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=bool(cfg["find_unused_parameters"]),
        )
    if di.is_main:
        n_params = sum(p.numel() for p in method.parameters())
        log.info("%s/%s: %.1fM parameters (%d tensors trained), %d classes, %d steps/epoch x %d epochs, "
                 "global batch %d, %s on %s%s", cfg["model"], cfg["method"], n_params / 1e6, len(trained),
                 cfg["num_classes"], steps_per_epoch, num_epochs, batch_size * world, precision, device,
                 f" x{world}" if world > 1 else "")

    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    history: list[dict[str, Any]] = []
    stop_at = min(total_steps, int(cfg["stop_after"])) if cfg.get("stop_after") else total_steps
    log_every, save_every = max(1, int(cfg["log_every"])), int(cfg["save_every"] or 0)
    last_ckpt: Path | None = None
    nonfinite = 0

    def checkpoint_state(epoch: int) -> dict[str, Any]:
        rngs = [_rng_state(device)]
        if world > 1:
            gathered: list[Any] = [None] * world
            torch.distributed.all_gather_object(gathered, rngs[0])
            rngs = gathered
        return {
            "step": step, "epoch": epoch, "model": method.state_dict(),
            "ema": ema.state_dict() if ema is not None else None,
            "ema_updates": ema.updates if ema is not None else 0,
            "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict() if scaler else None,
            "rng": rngs, "skipped": gather_counts(skipped, di) if world > 1 else dict(skipped),
            "config": cfg, "version": 1,
        }

    def save(epoch: int) -> None:
        nonlocal last_ckpt
        state = checkpoint_state(epoch)
        if di.is_main:
            last_ckpt = save_checkpoint(state, run_dir, step, int(cfg["keep_checkpoints"]))

    # interval accumulators (device tensors: no host sync except at logging steps)
    acc: dict[str, torch.Tensor] = {}
    t_last, n_last, wait = time.perf_counter(), 0, 0.0
    epoch = step // steps_per_epoch
    while step < stop_at:
        epoch = step // steps_per_epoch
        stream.set_position(epoch, step - epoch * steps_per_epoch)
        model.train()
        for m in frozen_bn:
            m.eval()
        t_wait = time.perf_counter()
        for raw in loader:
            wait += time.perf_counter() - t_wait
            for k, v in raw.get("_skipped", {}).items():
                skipped[k] += int(v)
            batch = to_device(raw, device, channels_last)
            for g in optimizer.param_groups:
                g["lr"] = lr_at(step)
            out, ok = train_step(model, batch, optimizer, params, scaler, amp_dtype, cfg.get("grad_clip"))
            if ok:
                nonfinite = 0
            else:
                nonfinite += 1
                skipped["nonfinite_steps"] += 1
                if nonfinite >= _MAX_NONFINITE:
                    raise FloatingPointError(f"{nonfinite} consecutive non-finite gradient norms at step {step}")
            if ema is not None:
                ema.update(method)
            for k, v in out.items():
                if isinstance(v, torch.Tensor) and v.numel() == 1:
                    v = v.detach().float()
                    acc[k] = acc[k] + v if k in acc else v
            step += 1
            n_last += 1
            if step % log_every == 0 or step == stop_at:
                vals = torch.stack([acc[k] for k in sorted(acc)]) / n_last
                vals = all_reduce_mean(vals, di).tolist()
                now = time.perf_counter()
                row = {"step": step, "epoch": epoch, "lr": lr_at(step - 1)}
                row.update({k: v for k, v in zip(sorted(acc), vals)})
                row["samples_per_s"] = n_last * batch_size * world / max(now - t_last, 1e-9)
                row["data_wait"] = wait / max(now - t_last, 1e-9)
                counts = gather_counts(skipped, di)
                if counts:
                    row["skipped"] = counts
                if di.is_main:
                    history.append(row)
                    jlog.write(row)
                    log.info("step %d/%d epoch %d loss %.4f lr %.5f %.0f samples/s data-wait %.0f%%%s",
                             step, total_steps, epoch, row.get("loss", float("nan")), row["lr"],
                             row["samples_per_s"], 100 * row["data_wait"],
                             f" skipped {counts}" if counts else "")
                acc.clear()
                t_last, n_last, wait = time.perf_counter(), 0, 0.0
            end_of_epoch = step % steps_per_epoch == 0
            if (save_every and step % save_every == 0) or end_of_epoch or step == stop_at:
                save(epoch)
            if step >= stop_at or end_of_epoch:
                break
            t_wait = time.perf_counter()
    if last_ckpt is None and di.is_main:
        found = list_checkpoints(run_dir)
        last_ckpt = found[-1] if found else None
    return TrainResult(run_dir, last_ckpt, step, epoch, history, gather_counts(skipped, di), cfg)
