"""The training config: defaults, YAML file, overrides; validated up front, saved with the run.

Keys are the keyword arguments of ``maskgen.training.train`` and the flags of ``maskgen train``
(``--batch-size`` = ``batch_size``); nested option dicts (``model_options``, ``method_options``,
``augment``) are set from the command line with ``--set model_options.dropout=0.2``.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import yaml

DEFAULTS: dict[str, Any] = {
    # data
    "shards": None,  # glob, brace pattern, "::"-joined string or list; local paths or URLs
    "dataset_json": None,  # default: dataset.json next to the shards or one folder up
    "num_classes": None,  # default: from dataset.json
    "samples_per_epoch": None,  # default: from dataset.json
    "batch_size": 128,  # per rank
    "num_workers": 4,  # loader processes per rank (decode + augment)
    "shuffle_buffer": 2000,  # samples held by each worker's shuffle buffer (0: shard order)
    "resampled": False,  # draw shards with replacement (open_clip's --dataset-resampled)
    "train_mask_ratio": None,  # twins builds: probability of the masked twin per sample
    "mask_choice_per_epoch": False,  # redraw that choice every epoch instead of once per sample
    "augment": {"flip": 0.5},  # see maskgen.training.augment.AugmentConfig
    "image_size": 112,  # decoded images are resized to this side (112 for every standard model)
    # model and objective
    "model": "iresnet50",  # backbone name in the model registry (maskgen.training.models)
    "model_options": {},  # keyword options of the backbone factory
    "embedding_size": 512,  # embedding dimension
    "method": "arcface",  # training objective (maskgen.training.methods): arcface, cosface, combined, ...
    "method_options": {},  # keyword options of the method (s, m2, sample_rate, ...)
    "init_from": None,  # checkpoint or state dict file to initialise the backbone from
    "freeze": None,  # list of name prefixes: train ONLY parameters matching them, freeze the rest
    "freeze_bn": False,  # with freeze: keep batch-norm statistics of frozen modules fixed
    # optimisation
    "optimizer": "sgd",  # sgd | adamw
    "lr": 0.1,  # peak learning rate (per rank batch; scale it with the global batch yourself)
    "momentum": 0.9,  # SGD momentum
    "weight_decay": 5e-4,  # weight decay (decoupled for AdamW)
    "betas": [0.9, 0.999],  # AdamW betas
    "schedule": "cosine",  # cosine | poly | step | sgdr | constant
    "warmup_steps": None,  # linear warm-up steps (overrides warmup_epochs)
    "warmup_epochs": 0.0,  # linear warm-up length in epochs
    "min_lr": 0.0,  # floor of cosine / poly / sgdr
    "poly_power": 2.0,  # exponent of the polynomial schedule
    "milestones": [],  # step schedule: epochs (floats allowed) at which lr *= gamma
    "gamma": 0.1,  # step schedule factor
    "cycle_steps": None,  # sgdr: first cycle length in steps (default: one epoch)
    "cycle_mult": 1.0,  # sgdr: each cycle is this much longer than the previous one
    "epochs": 20,  # epochs of samples_per_epoch samples
    "max_steps": None,  # stop after this many steps (the schedule spans them) instead of epochs
    "stop_after": None,  # end this invocation at this global step (time-sliced jobs; resume later)
    "grad_clip": 5.0,  # max gradient norm; 0 or null disables
    "ema": None,  # e.g. 0.999: keep an exponential moving average of the backbone weights
    # hardware
    "device": "auto",  # auto | cpu | cuda | cuda:N
    "precision": "auto",  # auto (bf16 if supported, else fp16 on GPU; fp32 on CPU) | bf16 | fp16 | fp32
    "channels_last": "auto",  # auto = on for GPUs
    "compile": False,  # torch.compile the method
    "find_unused_parameters": False,  # DDP option for methods with branches unused in a step
    "threads": None,  # torch.set_num_threads on CPU
    # run
    "seed": 0,  # seeds model init, shard order, shuffles, augmentation and mask choice
    "output": "runs",  # folder holding run folders
    "name": None,  # default: <model>-<method>
    "resume": None,  # latest | path of a checkpoint
    "log_every": 50,  # steps between log lines (console + log.jsonl)
    "save_every": 1000,  # steps; a checkpoint is also written at the end of every epoch
    "keep_checkpoints": 3,  # newest checkpoints kept in <run>/checkpoints
}

CHOICES = {
    "optimizer": {"sgd", "adamw"},
    "schedule": {"cosine", "poly", "step", "sgdr", "constant"},
    "precision": {"auto", "bf16", "fp16", "fp32"},
}


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    data = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a training config is a mapping of keys to values")
    return data


def parse_value(text: str) -> Any:
    """A ``--set`` value, read as YAML (numbers, booleans, lists, null)."""
    return yaml.safe_load(text)


def set_dotted(config: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.replace("-", "_").split(".")
    d = config
    for k in keys[:-1]:
        d = d.setdefault(k, {})
        if not isinstance(d, dict):
            raise ValueError(f"{dotted}: {k} is not a mapping")
    d[keys[-1]] = value


def resolve_config(config: dict[str, Any] | str | os.PathLike | None = None, **overrides: Any) -> dict[str, Any]:
    """Defaults <- YAML file or dict <- overrides (``None`` overrides are ignored); validated."""
    resolved = copy.deepcopy(DEFAULTS)
    if config is not None:
        base = load_yaml(config) if isinstance(config, (str, os.PathLike)) else copy.deepcopy(config)
        resolved.update(base)
    for key, value in overrides.items():
        if value is None:
            continue
        if "." in key:
            set_dotted(resolved, key, value)
        else:
            resolved[key] = value
    validate(resolved)
    return resolved


def validate(config: dict[str, Any]) -> None:
    unknown = set(config) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown config keys {sorted(unknown)}")
    if not config.get("shards"):
        raise ValueError("no training data: set shards (a glob, brace pattern or list of tars)")
    for key, allowed in CHOICES.items():
        if config[key] not in allowed:
            raise ValueError(f"{key} must be one of {sorted(allowed)}, got {config[key]!r}")
    if int(config["batch_size"]) < 1:
        raise ValueError("batch_size must be >= 1")
    ratio = config.get("train_mask_ratio")
    if ratio is not None and not 0.0 <= float(ratio) <= 1.0:
        raise ValueError(f"train_mask_ratio must be in [0, 1], got {ratio}")
    ema = config.get("ema")
    if ema is not None and not 0.0 < float(ema) < 1.0:
        raise ValueError(f"ema must be in (0, 1), got {ema}")
    for key in ("model_options", "method_options", "augment"):
        if not isinstance(config.get(key) or {}, dict):
            raise ValueError(f"{key} must be a mapping")
    freeze = config.get("freeze")
    if freeze is not None and not isinstance(freeze, (list, tuple, str)):
        raise ValueError("freeze is a list of parameter-name prefixes")


def save_config(config: dict[str, Any], path: str | os.PathLike) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(config, sort_keys=False))
    os.replace(tmp, path)
