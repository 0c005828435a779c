"""The training config: one options schema (:data:`TRAIN`, a :class:`maskgen.options.Schema`:
type, default, help, choices, range per key) from which the defaults, the ``maskgen train``
flags and the validation all come.

Keys are the keyword arguments of ``maskgen.training.train`` and the flags of ``maskgen train``
(``--batch-size`` = ``batch_size``); nested option dicts (``model_options``, ``method_options``,
``augment``) are set from the command line with ``--set model_options.dropout=0.2``. Every value
is checked against its key's type up front, so ``--set lr=abc`` fails before anything is built.
"""

from __future__ import annotations

import json
import os
from typing import Any

import yaml

from maskgen.errors import OptionError
from maskgen.fsio import write_atomic
from maskgen.options import CONFIG, OUT, QUIET, SEED, Alias, Config, Field, Schema


class ConfigError(OptionError, ValueError):
    """A training config value that is missing, unknown or of the wrong type (one line)."""


def _auto_or_bool(value: Any) -> str | None:
    return None if isinstance(value, bool) or value == "auto" else f"expected auto, true or false, got {value!r}"


def _compile_value(value: Any) -> str | None:
    if isinstance(value, bool) or (isinstance(value, str) and value):
        return None
    return "expected true, false or a torch.compile backend name (inductor, eager, aot_eager)"


def _two(value: list[float]) -> str | None:
    return None if len(value) == 2 else f"expected two numbers, got {value}"


def _plain_values(cfg: Config) -> str | None:
    try:
        json.dumps(cfg.to_dict(), allow_nan=False)
    except (TypeError, ValueError) as exc:
        return f"config values must be plain YAML values (numbers, strings, lists, mappings): {exc}"
    return None


def _has_shards(cfg: Config) -> str | None:
    return None if cfg.shards else "no training data: set shards (a glob, brace pattern or list of tars)"


TRAIN = Schema("train", [
    CONFIG.with_(help="YAML training config, or the name of one shipped with maskgen (train_tiny_cpu, "
              "methods/huang_bfm); flags and --set override its values."),
    # data
    Field("shards", str | list[str] | None, None,
          "glob, brace pattern, '::'-joined string or list; local paths or URLs", split=None),
    Field("dataset_json", str | None, None, "dataset.json of the build (default: next to the shards or one folder up)"),
    Field("num_classes", int | None, None, "number of identities (default: from dataset.json)", min=1),
    Field("samples_per_epoch", int | None, None, "samples per epoch (default: from dataset.json)", min=1),
    Field("batch_size", int, 128, "samples per step on each rank", min=1),
    Field("num_workers", int, 4, "loader processes per rank (decode + augment); they live for the whole run", min=0),
    Field("shuffle_buffer", int, 2000, "samples held by each worker's shuffle buffer (0: shard order)", min=0),
    Field("resampled", bool, False, "draw shards with replacement (open_clip's --dataset-resampled)"),
    Field("train_mask_ratio", float | None, None,
          "twins builds: probability of showing the masked twin of a sample", min=0.0, max=1.0),
    Field("mask_choice_per_epoch", bool, False,
          "redraw the masked/original choice every time a sample is read (every epoch) instead of once"),
    Field("augment", dict, {"flip": 0.5}, "augmentation probabilities (maskgen.training.augment.AugmentConfig)",
          flags=()),
    Field("image_size", int, 112, "side that decoded images are resized to (112 for every standard model)",
          min=16),
    # model and objective
    Field("model", str, "iresnet50", "backbone name in the model registry (maskgen.training.models)"),
    Field("model_options", dict, {}, "keyword options of the backbone factory", flags=()),
    Field("embedding_size", int, 512, "embedding dimension", min=1),
    Field("method", str, "arcface", "training objective (maskgen.training.methods): arcface, cosface, bfm, ..."),
    Field("method_options", dict, {}, "keyword options of the method (s, m2, sample_rate, ...)", flags=()),
    Field("init_from", str | None, None, "checkpoint or state-dict file the backbone starts from"),
    Field("freeze", list[str] | None, None,
          "train ONLY the parameters whose names start with one of these prefixes"),
    Field("freeze_bn", bool, False, "with freeze: keep the batch-norm statistics of frozen modules fixed"),
    # optimisation
    Field("optimizer", str, "sgd", "sgd or adamw", choices=("sgd", "adamw")),
    Field("lr", float, 0.1, "peak learning rate (scale it with the global batch yourself)", min=0.0),
    Field("momentum", float, 0.9, "SGD momentum", min=0.0, max=1.0),
    Field("weight_decay", float, 5e-4, "weight decay (decoupled for AdamW)", min=0.0),
    Field("betas", list[float], [0.9, 0.999], "AdamW betas", min=0.0, max=1.0, validator=_two),
    Field("schedule", str, "cosine", "learning-rate schedule after the warm-up",
          choices=("cosine", "poly", "step", "sgdr", "constant")),
    Field("warmup_steps", int | None, None, "linear warm-up steps (overrides warmup_epochs)", min=0),
    Field("warmup_epochs", float, 0.0, "linear warm-up length in epochs", min=0.0),
    Field("decay_epochs", float | None, None,
          "cosine/poly: reach min_lr at this epoch and stay there (default: at the end of training)",
          min=0.0, min_open=True),
    Field("min_lr", float, 0.0, "floor of cosine, poly and sgdr", min=0.0),
    Field("poly_power", float, 2.0, "exponent of the polynomial schedule", min=0.0),
    Field("milestones", list[float], [], "step schedule: epochs (fractions allowed) at which lr *= gamma", min=0.0),
    Field("gamma", float, 0.1, "step schedule factor", min=0.0),
    Field("cycle_steps", int | None, None,
          "sgdr: first cycle length in steps (default: cycle_epochs, else one epoch)", min=1),
    Field("cycle_epochs", float | None, None, "sgdr: first cycle length in epochs", min=0.0, min_open=True),
    Field("cycle_mult", float, 1.0, "sgdr: each cycle is this much longer than the previous one", min=1.0),
    Field("epochs", int, 20, "epochs of samples_per_epoch samples", min=1),
    Field("max_steps", int | None, None,
          "stop after this many steps (the schedule spans them) instead of epochs", min=1),
    Field("stop_after", int | None, None,
          "end this invocation at this global step (time-sliced jobs; resume later)", min=1),
    Field("grad_clip", float, 5.0, "max gradient norm (over all ranks' classifier shards too); 0: no clip",
          min=0.0),
    Field("ema", float | None, None,
          "e.g. 0.999: keep an exponential moving average of the weights (never the classifier)",
          min=0.0, max=1.0, min_open=True, max_open=True),
    # hardware
    Field("device", str, "auto", "auto, cpu, cuda or cuda:N"),
    Field("precision", str, "auto", "auto (bf16 if supported, else fp16 on GPU; fp32 on CPU), bf16, fp16 or fp32",
          choices=("auto", "bf16", "fp16", "fp32")),
    Field("channels_last", bool | str, "auto", "channels-last memory format (auto: on for GPUs)",
          validator=_auto_or_bool, metavar="auto|true|false"),
    Field("compile", bool | str, False, "torch.compile the model (true, or a backend name such as eager)",
          validator=_compile_value, metavar="false|true|BACKEND"),
    Field("find_unused_parameters", bool, False, "DDP option for methods with branches unused in a step"),
    Field("threads", int | None, None, "torch.set_num_threads on the CPU", min=1),
    # run
    SEED.with_(help="seeds model init, shard order, shuffles, augmentation and mask choice"),
    OUT.with_(default="runs", help="folder holding run folders",
          aliases=(Alias(flags=("--output",), key="output"),)),
    Field("name", str | None, None, "run folder name (default: <model>-<method>)"),
    Field("resume", str | None, None, "latest, or the path of a checkpoint"),
    Field("log_every", int, 50, "steps between loss reads and log lines (console + log.jsonl)", min=1),
    Field("save_every", int, 1000,
          "steps between checkpoints (one is also written at every epoch end; 0: only then)", min=0),
    Field("keep_checkpoints", int, 3, "newest checkpoints kept in <run>/checkpoints (0: all)", min=0),
    QUIET.with_(yaml=False),
], checks=[_has_shards, _plain_values], error=ConfigError)
"""Every key of the training config: the keyword arguments of ``maskgen.training.train``, the
keys of its YAML files and the flags of ``maskgen train`` (mappings are set with ``--set``)."""

def resolve_config(config: dict[str, Any] | str | os.PathLike | None = None, **overrides: Any) -> dict[str, Any]:
    """Defaults <- YAML file or dict <- overrides (``None`` overrides are ignored; dotted keys
    set one entry of a mapping option), validated by :data:`TRAIN`: the plain dict the trainer
    and its checkpoints keep."""
    given = {k: v for k, v in overrides.items() if v is not None}
    return TRAIN.resolve(config, **given).to_dict()


def to_json(config: dict[str, Any]) -> str:
    """The resolved config as the JSON string stored in checkpoints (plain values only)."""
    return json.dumps(config, sort_keys=True)


def save_config(config: dict[str, Any], path: str | os.PathLike) -> None:
    write_atomic(path, yaml.safe_dump(config, sort_keys=False), fsync=False)
