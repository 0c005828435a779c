"""The training loop: streaming shards -> method (backbone + heads) -> optimizer, on 1..N devices.

``train(config, **overrides)`` is the whole program behind ``maskgen train`` and is callable from
tests. bf16 autocast on GPUs that have it, fp16 with a GradScaler otherwise, fp32 on the CPU;
channels-last; optional torch.compile; DDP when started by torchrun, with the classifier sharded
across ranks (``PartialFC``).

No step waits on the host: a step whose gradient norm is not finite is skipped inside the fused
optimizer (its ``found_inf`` flag), and losses, accuracies and the non-finite counters stay on the
device until a logging step reads them (every ``log_every`` steps).
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
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from maskgen.errors import InputError, OutputError
from maskgen.training.augment import AugmentConfig
from maskgen.training.checkpoint import (
    FORMAT,
    VERSION,
    backbone_state,
    build_method,
    list_checkpoints,
    load_checkpoint,
    load_latest,
    load_weights,
    resolve_checkpoint,
    safe_load,
    save_checkpoint,
    shard_path,
)
from maskgen.training.config import ConfigError, resolve_config, save_config, to_json
from maskgen.training.distributed import DistInfo, all_reduce_mean, cleanup, gather_counts, init_distributed
from maskgen.training.ema import ModelEma
from maskgen.training.heads import classifier_prefixes, classifier_sharding, is_classifier_key
from maskgen.training.loader import LoaderConfig, expand_shards, make_loader, read_dataset_info, to_device
from maskgen.training.methods import method_class
from maskgen.training.progress import format_eta
from maskgen.training.schedules import build_schedule

log = logging.getLogger("maskgen.train")
_MAX_NONFINITE = 50  # consecutive non-finite gradient norms before giving up


@dataclass
class TrainResult:
    run_dir: Path
    checkpoint: Path | None
    step: int
    epoch: int
    history: list[dict[str, Any]] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    bad_shards: dict[str, str] = field(default_factory=dict)


def pick_precision(request: str, device: torch.device) -> str:
    if device.type != "cuda":
        if request == "fp16":
            raise ConfigError("fp16 training needs a GPU; use fp32 or bf16 on the CPU")
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
        raise ConfigError(f"freeze prefixes {prefixes} match no parameter of the model")
    return trained


def _frozen_bn_modules(method: nn.Module) -> list[nn.Module]:
    return [
        m for m in method.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not any(p.requires_grad for p in m.parameters())
    ]


def build_optimizer(config: dict[str, Any], params: list[nn.Parameter]) -> torch.optim.Optimizer:
    """SGD or AdamW, fused where torch has the kernel for the device: a fused optimizer skips a
    step flagged by ``found_inf`` on the device, so a non-finite step costs no host sync."""
    common = {"lr": float(config["lr"]), "weight_decay": float(config["weight_decay"])}
    if config["optimizer"] == "sgd":
        cls, kwargs = torch.optim.SGD, {"momentum": float(config["momentum"])}
    else:
        cls, kwargs = torch.optim.AdamW, {"betas": tuple(config["betas"])}
    try:
        opt = cls(params, fused=True, **common, **kwargs)
        opt.maskgen_fused = True  # type: ignore[attr-defined]
    except (RuntimeError, ValueError):  # no fused kernel for this device or dtype
        opt = cls(params, **common, **kwargs)
        opt.maskgen_fused = False  # type: ignore[attr-defined]
    return opt


class GradClipper:
    """Total gradient norm over every trained parameter, the classifier shards of all ranks
    included (their squared norms are summed across ranks), so every rank clips by the same
    factor and replicated weights stay identical."""

    def __init__(self, params: list[nn.Parameter], sharded: list[nn.Parameter], max_norm: float | None,
                 world_size: int = 1):
        ids = {id(p) for p in sharded}
        self.replicated = [p for p in params if id(p) not in ids]
        self.sharded = [p for p in params if id(p) in ids]
        self.max_norm = float(max_norm) if max_norm else math.inf
        self.world_size = world_size

    def __call__(self) -> torch.Tensor:
        grads = [p.grad for p in self.replicated if p.grad is not None]
        total = torch.nn.utils.get_total_norm(grads).float() if grads else None
        if self.sharded:
            sgrads = [p.grad for p in self.sharded if p.grad is not None]
            device = sgrads[0].device if sgrads else (grads[0].device if grads else torch.device("cpu"))
            sq = torch.nn.utils.get_total_norm(sgrads).float().pow(2) if sgrads else torch.zeros((), device=device)
            if self.world_size > 1:
                dist.all_reduce(sq)
            total = (sq if total is None else total.pow(2) + sq).sqrt()
        if total is None:
            return torch.zeros(())
        if math.isfinite(self.max_norm):
            torch.nn.utils.clip_grads_with_norm_(self.replicated + self.sharded, self.max_norm, total)
        return total


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
    clip: GradClipper | Callable[[], torch.Tensor],
    scaler: torch.amp.GradScaler | None = None,
    amp_dtype: torch.dtype | None = None,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """One optimisation step (forward under autocast, backward, clip, update).

    Returns the method's outputs and a 0-d device tensor, 1.0 where the update was skipped for a
    non-finite gradient norm (read it at logging steps, not here). With a fused optimizer the skip
    happens on the device; otherwise this step reads the flag on the host.
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
    norm = clip()
    found_inf = (~torch.isfinite(norm)).float()
    if scaler is not None:  # the scaler skips inf steps itself (on the device when fused)
        scaler.step(optimizer)
        scaler.update()
        return out, found_inf
    if getattr(optimizer, "maskgen_fused", False):
        optimizer.found_inf = found_inf.to(norm.device)  # type: ignore[attr-defined]
        optimizer.step()
        optimizer.found_inf = None  # type: ignore[attr-defined]
    elif bool(found_inf):
        optimizer.zero_grad(set_to_none=True)
    else:
        optimizer.step()
    return out, found_inf


def wrap_model(method: nn.Module, cfg: dict[str, Any], di: DistInfo) -> nn.Module:
    """The module the loop calls: ``method.compile()`` in place first, then DDP around it — the
    order PyTorch's guide gives for compiled DDP models (compile the inner module, not the
    wrapper). DDP leaves the sharded classifier alone: its rows differ per rank by design."""
    backend = None
    if cfg.get("compile"):
        backend = cfg["compile"] if isinstance(cfg["compile"], str) else "inductor"
        method.compile(backend=backend)
    if di.world_size == 1:
        return method
    if di.is_main:
        log.info("model: %sDDP over %d ranks", f"compiled in place ({backend}), then " if backend else "",
                 di.world_size)
    prefixes = classifier_prefixes(method)
    ignore = [n for n, _ in method.named_parameters() if is_classifier_key(n, prefixes)]
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(method, ignore)
    return DistributedDataParallel(
        method, device_ids=[di.device.index] if di.device.type == "cuda" else None,
        find_unused_parameters=bool(cfg["find_unused_parameters"]),
    )


def train(config: dict[str, Any] | str | os.PathLike | None = None, **overrides: Any) -> TrainResult:
    """Train a method on shards. ``config``: a dict or YAML path; ``overrides``: config keys
    (dotted for nested options). Returns the run folder, last checkpoint and logged rows."""
    cfg = resolve_config(config, **overrides)
    dist_info = init_distributed(cfg["device"])
    try:
        return _train(cfg, dist_info)
    finally:
        cleanup(dist_info)


def _check_method_options(cfg: dict[str, Any]) -> None:
    """Build the model once on the meta device: bad model/method options fail before any data
    is read, with the factory's message on one line."""
    probe = dict(cfg, num_classes=cfg.get("num_classes") or 2)
    try:
        with torch.device("meta"):
            build_method(probe)
    except (TypeError, ValueError, KeyError) as exc:
        raise ConfigError(f"model/method options: {exc}") from None
    except (RuntimeError, NotImplementedError):
        pass  # a model that cannot be built on the meta device: the real build will tell


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
    try:
        cls = method_class(cfg["method"])
    except KeyError:
        from maskgen.training.methods import list_methods

        raise ConfigError(f"unknown method {cfg['method']!r}; registered: {', '.join(list_methods())}") from None
    if getattr(cls, "needs_pretrained", False) and not cfg.get("init_from"):
        raise ConfigError(f"method {cfg['method']} fine-tunes a pretrained backbone: set init_from "
                          "(a maskgen checkpoint or an arcface_torch backbone.pth)")
    _check_method_options(cfg)

    # -- data -----------------------------------------------------------------------------------
    shards = expand_shards(cfg["shards"])
    if cfg.get("num_classes") is not None and cfg.get("samples_per_epoch") is not None and not cfg.get("dataset_json"):
        info = None  # nothing to look up (remote shards without a local dataset.json)
    else:
        info = read_dataset_info(shards, cfg.get("dataset_json"))
    if cfg.get("num_classes") is None:
        if info.num_classes is None:
            raise InputError("num_classes is unknown: set it, or give a dataset.json with num_classes")
        cfg["num_classes"] = info.num_classes
    if cfg.get("samples_per_epoch") is None:
        cfg["samples_per_epoch"] = info.num_samples
    batch_size, world = int(cfg["batch_size"]), di.world_size
    steps_per_epoch = max(1, int(cfg["samples_per_epoch"]) // (batch_size * world))
    total_steps = int(cfg["max_steps"]) if cfg.get("max_steps") else int(cfg["epochs"]) * steps_per_epoch
    num_epochs = math.ceil(total_steps / steps_per_epoch)
    lcfg = LoaderConfig(
        shards=shards, batch_size=batch_size, steps_per_epoch=steps_per_epoch,
        num_classes=int(cfg["num_classes"]), seed=int(cfg["seed"]), shuffle_buffer=int(cfg["shuffle_buffer"]),
        resampled=bool(cfg["resampled"]), train_mask_ratio=cfg.get("train_mask_ratio"),
        mask_choice_per_epoch=bool(cfg["mask_choice_per_epoch"]), pairs=bool(getattr(cls, "needs_pairs", False)),
        augment=AugmentConfig.from_options(cfg.get("augment")), image_size=int(cfg["image_size"]),
        rank=di.rank, world_size=world, num_workers=int(cfg["num_workers"]),
        shard_lengths=dict(info.shard_lengths) if info is not None else {},
    )
    loader, stream = make_loader(lcfg, pin_memory=device.type == "cuda")

    # -- model ----------------------------------------------------------------------------------
    torch.manual_seed(int(cfg["seed"]))
    with classifier_sharding(di.rank, world):
        method = build_method(cfg)
    if cfg.get("init_from"):
        state = backbone_state(cfg["init_from"])
        result = method.backbone.load_state_dict(state, strict=False)
        if len(result.missing_keys) == len(method.backbone.state_dict()):
            raise InputError(f"init_from {cfg['init_from']}: no weight matches the backbone {cfg['model']}")
        if di.is_main:
            log.info("init_from %s: %d missing, %d unexpected keys", cfg["init_from"],
                     len(result.missing_keys), len(result.unexpected_keys))
    trained = apply_freeze(method, cfg.get("freeze"))
    frozen_bn = _frozen_bn_modules(method) if cfg.get("freeze") and cfg.get("freeze_bn") else []
    method.to(device)
    if channels_last:
        method.to(memory_format=torch.channels_last)
    ema = ModelEma(method, float(cfg["ema"])) if cfg.get("ema") else None
    prefixes = classifier_prefixes(method)
    sharded = world > 1 and bool(prefixes)
    params = [p for p in method.parameters() if p.requires_grad]
    shard_params = [p for n, p in method.named_parameters() if p.requires_grad and is_classifier_key(n, prefixes)]
    optimizer = build_optimizer(cfg, params)
    clipper = GradClipper(params, shard_params if sharded else [], cfg.get("grad_clip"), world)
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
    lr_at = build_schedule(cfg, steps_per_epoch, total_steps)

    # -- run folder and resume ------------------------------------------------------------------
    name = cfg.get("name") or f"{cfg['model']}-{cfg['method']}"
    cfg["name"] = name
    run_dir = Path(cfg["output"]) / name
    step, skipped = 0, Counter()
    if cfg.get("resume"):
        if cfg["resume"] == "latest":
            path, ckpt = load_latest(run_dir, "cpu")
        else:
            path = resolve_checkpoint(cfg["resume"])
            ckpt = load_checkpoint(path, "cpu")
        shards_in = int(ckpt.get("classifier_shards", 1))
        if shards_in != (world if sharded else 1):
            raise InputError(f"{path}: written with the classifier in {shards_in} shard(s); resume it with "
                             f"{shards_in} process(es) (this run has {world})")
        load_weights(method, ckpt["model"], need_classifier=not sharded, source=str(path))
        opt_state = ckpt["optimizer"]
        if sharded:
            part = safe_load(shard_path(path, di.rank, world))
            result = method.load_state_dict(part["classifier"], strict=False)
            if result.unexpected_keys or set(result.missing_keys) & set(part["classifier"]):
                raise InputError(f"{shard_path(path, di.rank, world)}: classifier shard does not match")
            opt_state = part["optimizer"]
        optimizer.load_state_dict(opt_state)
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        if ema is not None and ckpt.get("ema") is not None:
            ema.load_state_dict(ckpt["ema"], int(ckpt.get("ema_updates", 0)))
        step = int(ckpt["step"])
        skipped.update(ckpt.get("skipped") or {})
        _set_rng_state(ckpt["rng"][min(di.rank, len(ckpt["rng"]) - 1)], device)
        if di.is_main:
            log.info("resumed %s at step %d from %s", run_dir, step, path.name)
    else:
        if list_checkpoints(run_dir):
            raise OutputError(f"{run_dir} already has checkpoints: pass --resume latest or another --name")
        torch.manual_seed(int(cfg["seed"]) * 1000 + di.rank + 1)  # dropout/sampling differ per rank
    if di.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
    jlog = JsonLog(run_dir / "log.jsonl", di.is_main)
    model = wrap_model(method, cfg, di)
    if di.is_main:
        n_params = sum(p.numel() for p in method.parameters())
        log.info("%s/%s: %.1fM parameters (%d tensors trained), %d classes%s, %d steps/epoch x %d epochs, "
                 "global batch %d, %s on %s%s", cfg["model"], cfg["method"], n_params / 1e6, len(trained),
                 cfg["num_classes"], f" (classifier sharded over {world} ranks)" if sharded else "",
                 steps_per_epoch, num_epochs, batch_size * world, precision, device,
                 f" x{world}" if world > 1 else "")

    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    history: list[dict[str, Any]] = []
    stop_at = min(total_steps, int(cfg["stop_after"])) if cfg.get("stop_after") else total_steps
    log_every, save_every = max(1, int(cfg["log_every"])), int(cfg["save_every"] or 0)
    last_ckpt: Path | None = None
    bad_shards: dict[str, str] = {}

    def checkpoint_state(epoch: int) -> tuple[dict[str, Any], dict[str, Any] | None]:
        rngs = [_rng_state(device)]
        if world > 1:
            gathered: list[Any] = [None] * world
            dist.all_gather_object(gathered, rngs[0])
            rngs = gathered
        full = method.state_dict()
        main = {
            "format": FORMAT, "version": VERSION, "step": step, "epoch": epoch,
            "model": {k: v for k, v in full.items() if not (sharded and is_classifier_key(k, prefixes))},
            "ema": ema.state_dict() if ema is not None else None,
            "ema_updates": ema.updates if ema is not None else 0,
            "optimizer": None if sharded else optimizer.state_dict(),
            "scaler": scaler.state_dict() if scaler else None,
            "rng": rngs, "skipped": gather_counts(skipped, di) if world > 1 else dict(skipped),
            "config_json": to_json(cfg), "classifier_shards": world if sharded else 1,
        }
        part = None
        if sharded:
            part = {"format": FORMAT + "-shard", "version": VERSION, "step": step, "rank": di.rank,
                    "world_size": world, "optimizer": optimizer.state_dict(),
                    "classifier": {k: v for k, v in full.items() if is_classifier_key(k, prefixes)}}
        return main, part

    def save(epoch: int) -> None:
        nonlocal last_ckpt
        main, part = checkpoint_state(epoch)
        path = save_checkpoint(main, run_dir, step, int(cfg["keep_checkpoints"]), shard=part, rank=di.rank,
                               world_size=world, barrier=dist.barrier if world > 1 else None)
        if di.is_main:
            last_ckpt = path

    # interval accumulators stay on the device: the host reads them only at logging steps
    acc: dict[str, torch.Tensor] = {}
    nonfinite_run = torch.zeros((), device=device)  # consecutive skipped steps
    nonfinite_total = torch.zeros((), device=device)
    t_start, step_start = time.perf_counter(), step
    t_last, n_last, wait = time.perf_counter(), 0, 0.0
    epoch = step // steps_per_epoch
    set_epoch = getattr(method, "set_epoch", None)
    if step < stop_at:
        stream.set_position(epoch, step - epoch * steps_per_epoch, end_step=stop_at)
        batches = iter(loader)  # one iterator, hence one set of worker processes, for the whole run
    model.train()
    for m in frozen_bn:
        m.eval()
    while step < stop_at:
        if step % steps_per_epoch == 0 or step == step_start:
            epoch = step // steps_per_epoch
            if callable(set_epoch):
                set_epoch(epoch)
        t_wait = time.perf_counter()
        raw = next(batches)
        wait += time.perf_counter() - t_wait
        for k, v in raw.get("_skipped", {}).items():
            skipped[k] += int(v)
        for shard, reason in raw.get("_bad_shards", {}).items():
            if shard not in bad_shards:
                log.warning("shard %s cannot be read to its end: %s; counted as an error (unreadable_shard)",
                            shard, reason)
            bad_shards[shard] = reason
        batch = to_device(raw, device, channels_last)
        for g in optimizer.param_groups:
            g["lr"] = lr_at(step)
        out, found_inf = train_step(model, batch, optimizer, clipper, scaler, amp_dtype)
        nonfinite_run = (nonfinite_run + found_inf) * found_inf
        nonfinite_total = nonfinite_total + found_inf
        if ema is not None:
            ema.update(method)
        for k, v in out.items():
            if isinstance(v, torch.Tensor) and v.numel() == 1:
                v = v.detach().float().reshape(())
                acc[k] = acc[k] + v if k in acc else v
        step += 1
        n_last += 1
        if step % log_every == 0 or step == stop_at:
            names = sorted(acc)
            vals = torch.cat([torch.stack([acc[k] for k in names]) / n_last, nonfinite_run.reshape(1).float(),
                              nonfinite_total.reshape(1).float()])
            vals = all_reduce_mean(vals, di).tolist()  # the one host sync of the interval
            run, bad_steps = vals[-2], int(round(vals[-1]))
            if bad_steps:
                skipped["nonfinite_steps"] += bad_steps
                nonfinite_total.zero_()
            if run >= _MAX_NONFINITE:
                raise FloatingPointError(f"{int(run)} consecutive non-finite gradient norms at step {step}")
            now = time.perf_counter()
            row = {"step": step, "epoch": epoch, "lr": lr_at(step - 1)}
            row.update({k: v for k, v in zip(names, vals)})
            row["samples_per_s"] = n_last * batch_size * world / max(now - t_last, 1e-9)
            row["data_wait"] = wait / max(now - t_last, 1e-9)
            counts = gather_counts(skipped, di)
            if counts:
                row["skipped"] = counts
            if di.is_main:
                history.append(row)
                jlog.write(row)
                rate = (step - step_start) / max(now - t_start, 1e-9)
                log.info("step %d/%d (%.1f%%) epoch %d loss %.4f lr %.5f %.0f samples/s ETA %s data-wait %.0f%%%s",
                         step, total_steps, 100.0 * step / total_steps, epoch, row.get("loss", float("nan")),
                         row["lr"], row["samples_per_s"], format_eta((stop_at - step) / max(rate, 1e-9)),
                         100 * row["data_wait"], f" skipped {counts}" if counts else "")
            acc.clear()
            t_last, n_last, wait = time.perf_counter(), 0, 0.0
        end_of_epoch = step % steps_per_epoch == 0
        if (save_every and step % save_every == 0) or end_of_epoch or step == stop_at:
            save(epoch)
    if last_ckpt is None and di.is_main:
        found = list_checkpoints(run_dir)
        last_ckpt = found[-1] if found else None
    return TrainResult(run_dir, last_ckpt, step, epoch, history, gather_counts(skipped, di), cfg, bad_shards)
