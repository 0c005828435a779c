"""The training config: one declarative table of keys (type, default, help, choices, range)
from which the defaults, the ``maskgen train`` flags and the validation all come.

Keys are the keyword arguments of ``maskgen.training.train`` and the flags of ``maskgen train``
(``--batch-size`` = ``batch_size``); nested option dicts (``model_options``, ``method_options``,
``augment``) are set from the command line with ``--set model_options.dropout=0.2``. Every value
is checked against its key's type up front, so ``--set lr=abc`` fails before anything is built.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from maskgen.errors import InputError, OptionError
from maskgen.fsio import write_atomic


class ConfigError(OptionError, ValueError):
    """A training config value that is missing, unknown or of the wrong type (one line)."""


# value kinds: how a key's value is checked and how its flag parses
INT, FLOAT, BOOL, STR = "int", "float", "bool", "str"
FLOATS, STRS, MAPPING = "floats", "strs", "mapping"  # lists and nested option dicts
SHARDS = "shards"  # a string or a list of strings
AUTO_BOOL = "auto_bool"  # "auto" or a boolean
COMPILE = "compile"  # false, true, or a torch.compile backend name


@dataclass(frozen=True)
class Key:
    """One config key: its value kind, default, one-line help, and optional limits."""

    name: str
    kind: str
    default: Any
    help: str
    group: str
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    exclusive: bool = False  # minimum/maximum excluded (an open interval)
    nullable: bool = False  # None allowed (also implied by a None default)

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def check(self, value: Any) -> Any:
        """The value, typed (ints for floats, lists for tuples), or ConfigError."""
        if value is None:
            if self.nullable or self.default is None:
                return None
            raise ConfigError(f"{self.name} may not be null")
        value = _coerce(self, value)
        if self.choices and value not in self.choices:
            raise ConfigError(f"{self.name} must be one of {list(self.choices)}, got {value!r}")
        for v in value if self.kind == FLOATS else [value]:
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                lo, hi = self.minimum, self.maximum
                if lo is not None and (v <= lo if self.exclusive else v < lo):
                    raise ConfigError(f"{self.name} must be {'>' if self.exclusive else '>='} {lo}, got {v}")
                if hi is not None and (v >= hi if self.exclusive else v > hi):
                    raise ConfigError(f"{self.name} must be {'<' if self.exclusive else '<='} {hi}, got {v}")
        return value


def _coerce(key: Key, value: Any) -> Any:
    name, kind = key.name, key.kind

    def bad(expected: str) -> ConfigError:
        return ConfigError(f"{name}: expected {expected}, got {value!r}")

    if kind == INT:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise bad("an integer")
        return value
    if kind == FLOAT:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("a number")
        return float(value)
    if kind == BOOL:
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if kind == STR:
        if not isinstance(value, (str, os.PathLike)):
            raise bad("a string")
        return str(value)
    if kind == FLOATS:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)) or any(isinstance(v, bool) or not isinstance(v, (int, float))
                                                       for v in value):
            raise bad("a list of numbers")
        return [float(v) for v in value]
    if kind == STRS:
        if isinstance(value, str):
            return [value]
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise bad("a list of strings")
        return list(value)
    if kind == MAPPING:
        if not isinstance(value, dict):
            raise bad("a mapping of option names to values")
        return copy.deepcopy(value)
    if kind == SHARDS:
        if isinstance(value, (str, os.PathLike)):
            return str(value)
        if not isinstance(value, (list, tuple)) or not value or not all(isinstance(v, (str, os.PathLike)) for v in value):
            raise bad("a shard pattern or a list of shard paths")
        return [str(v) for v in value]
    if kind == AUTO_BOOL:
        if value == "auto" or isinstance(value, bool):
            return value
        raise bad("auto, true or false")
    if kind == COMPILE:
        if isinstance(value, bool) or (isinstance(value, str) and value):
            return value
        raise bad("true, false or a torch.compile backend name (inductor, eager, aot_eager)")
    raise AssertionError(f"unknown kind {kind}")


_D, _M, _O, _H, _R = "data", "model and objective", "optimisation", "hardware", "run"
KEYS: tuple[Key, ...] = (
    Key("shards", SHARDS, None, "glob, brace pattern, '::'-joined string or list; local paths or URLs", _D),
    Key("dataset_json", STR, None, "dataset.json of the build (default: next to the shards or one folder up)", _D),
    Key("num_classes", INT, None, "number of identities (default: from dataset.json)", _D, minimum=1),
    Key("samples_per_epoch", INT, None, "samples per epoch (default: from dataset.json)", _D, minimum=1),
    Key("batch_size", INT, 128, "samples per step on each rank", _D, minimum=1),
    Key("num_workers", INT, 4, "loader processes per rank (decode + augment); they live for the whole run", _D,
        minimum=0),
    Key("shuffle_buffer", INT, 2000, "samples held by each worker's shuffle buffer (0: shard order)", _D, minimum=0),
    Key("resampled", BOOL, False, "draw shards with replacement (open_clip's --dataset-resampled)", _D),
    Key("train_mask_ratio", FLOAT, None, "twins builds: probability of showing the masked twin of a sample", _D,
        minimum=0.0, maximum=1.0),
    Key("mask_choice_per_epoch", BOOL, False,
        "redraw the masked/original choice every time a sample is read (every epoch) instead of once", _D),
    Key("augment", MAPPING, {"flip": 0.5}, "augmentation probabilities (maskgen.training.augment.AugmentConfig)", _D),
    Key("image_size", INT, 112, "side that decoded images are resized to (112 for every standard model)", _D,
        minimum=16),
    Key("model", STR, "iresnet50", "backbone name in the model registry (maskgen.training.models)", _M),
    Key("model_options", MAPPING, {}, "keyword options of the backbone factory", _M),
    Key("embedding_size", INT, 512, "embedding dimension", _M, minimum=1),
    Key("method", STR, "arcface", "training objective (maskgen.training.methods): arcface, cosface, bfm, ...", _M),
    Key("method_options", MAPPING, {}, "keyword options of the method (s, m2, sample_rate, ...)", _M),
    Key("init_from", STR, None, "checkpoint or state-dict file the backbone starts from", _M),
    Key("freeze", STRS, None, "train ONLY the parameters whose names start with one of these prefixes", _M),
    Key("freeze_bn", BOOL, False, "with freeze: keep the batch-norm statistics of frozen modules fixed", _M),
    Key("optimizer", STR, "sgd", "sgd or adamw", _O, choices=("sgd", "adamw")),
    Key("lr", FLOAT, 0.1, "peak learning rate (scale it with the global batch yourself)", _O, minimum=0.0),
    Key("momentum", FLOAT, 0.9, "SGD momentum", _O, minimum=0.0, maximum=1.0),
    Key("weight_decay", FLOAT, 5e-4, "weight decay (decoupled for AdamW)", _O, minimum=0.0),
    Key("betas", FLOATS, [0.9, 0.999], "AdamW betas", _O, minimum=0.0, maximum=1.0),
    Key("schedule", STR, "cosine", "learning-rate schedule after the warm-up", _O,
        choices=("cosine", "poly", "step", "sgdr", "constant")),
    Key("warmup_steps", INT, None, "linear warm-up steps (overrides warmup_epochs)", _O, minimum=0),
    Key("warmup_epochs", FLOAT, 0.0, "linear warm-up length in epochs", _O, minimum=0.0),
    Key("decay_epochs", FLOAT, None,
        "cosine/poly: reach min_lr at this epoch and stay there (default: at the end of training)", _O,
        minimum=0.0, exclusive=True),
    Key("min_lr", FLOAT, 0.0, "floor of cosine, poly and sgdr", _O, minimum=0.0),
    Key("poly_power", FLOAT, 2.0, "exponent of the polynomial schedule", _O, minimum=0.0),
    Key("milestones", FLOATS, [], "step schedule: epochs (fractions allowed) at which lr *= gamma", _O, minimum=0.0),
    Key("gamma", FLOAT, 0.1, "step schedule factor", _O, minimum=0.0),
    Key("cycle_steps", INT, None, "sgdr: first cycle length in steps (default: cycle_epochs, else one epoch)", _O,
        minimum=1),
    Key("cycle_epochs", FLOAT, None, "sgdr: first cycle length in epochs", _O, minimum=0.0, exclusive=True),
    Key("cycle_mult", FLOAT, 1.0, "sgdr: each cycle is this much longer than the previous one", _O, minimum=1.0),
    Key("epochs", INT, 20, "epochs of samples_per_epoch samples", _O, minimum=1),
    Key("max_steps", INT, None, "stop after this many steps (the schedule spans them) instead of epochs", _O,
        minimum=1),
    Key("stop_after", INT, None, "end this invocation at this global step (time-sliced jobs; resume later)", _O,
        minimum=1),
    Key("grad_clip", FLOAT, 5.0, "max gradient norm (over all ranks' classifier shards too); 0 or null: no clip",
        _O, minimum=0.0),
    Key("ema", FLOAT, None, "e.g. 0.999: keep an exponential moving average of the weights (never the classifier)",
        _O, minimum=0.0, maximum=1.0, exclusive=True),
    Key("device", STR, "auto", "auto, cpu, cuda or cuda:N", _H),
    Key("precision", STR, "auto", "auto (bf16 if supported, else fp16 on GPU; fp32 on CPU), bf16, fp16 or fp32",
        _H, choices=("auto", "bf16", "fp16", "fp32")),
    Key("channels_last", AUTO_BOOL, "auto", "channels-last memory format (auto: on for GPUs)", _H),
    Key("compile", COMPILE, False, "torch.compile the model (true, or a backend name such as eager)", _H),
    Key("find_unused_parameters", BOOL, False, "DDP option for methods with branches unused in a step", _H),
    Key("threads", INT, None, "torch.set_num_threads on the CPU", _H, minimum=1),
    Key("seed", INT, 0, "seeds model init, shard order, shuffles, augmentation and mask choice", _R, minimum=0),
    Key("output", STR, "runs", "folder holding run folders", _R),
    Key("name", STR, None, "run folder name (default: <model>-<method>)", _R),
    Key("resume", STR, None, "latest, or the path of a checkpoint", _R),
    Key("log_every", INT, 50, "steps between loss reads and log lines (console + log.jsonl)", _R, minimum=1),
    Key("save_every", INT, 1000, "steps between checkpoints (one is also written at every epoch end; 0: only then)",
        _R, minimum=0),
    Key("keep_checkpoints", INT, 3, "newest checkpoints kept in <run>/checkpoints (0: all)", _R, minimum=0),
)
KEY_BY_NAME: dict[str, Key] = {k.name: k for k in KEYS}
DEFAULTS: dict[str, Any] = {k.name: k.default for k in KEYS}


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """A training config file: ``path`` itself, or the config shipped with maskgen of that name
    (``train_tiny_cpu``, ``methods/huang_bfm``, ``configs/train_tiny_cpu.yaml``)."""
    from maskgen.options import find_config

    try:
        path = find_config(path)
    except OptionError as exc:  # one line: what was looked for, the closest shipped name
        raise ConfigError(str(exc)) from None
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except OSError as exc:
        raise InputError(f"cannot read config {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a training config is a mapping of keys to values")
    return data


def parse_value(text: str) -> Any:
    """A ``--set`` value, read as YAML (numbers, booleans, lists, null); the key's type is
    checked afterwards."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def set_dotted(config: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.replace("-", "_").split(".")
    if keys[0] not in KEY_BY_NAME:
        raise ConfigError(f"unknown config key {keys[0]!r}")
    if len(keys) > 1 and KEY_BY_NAME[keys[0]].kind != MAPPING:
        raise ConfigError(f"{dotted}: {keys[0]} is not a mapping of options")
    d = config
    for k in keys[:-1]:
        d = d.setdefault(k, {})
        if not isinstance(d, dict):
            raise ConfigError(f"{dotted}: {k} is not a mapping")
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
    """Type-check every key in place (ints become floats where a number is asked, tuples lists),
    then the rules that span keys."""
    unknown = set(config) - set(KEY_BY_NAME)
    if unknown:
        raise ConfigError(f"unknown config keys {sorted(unknown)}")
    for key in KEYS:
        config[key.name] = key.check(config.get(key.name, key.default))
    if not config.get("shards"):
        raise ConfigError("no training data: set shards (a glob, brace pattern or list of tars)")
    if len(config["betas"]) != 2:
        raise ConfigError(f"betas: expected two numbers, got {config['betas']}")
    try:
        json.dumps(config, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"config values must be plain YAML values (numbers, strings, lists, mappings): {exc}") from None


def to_json(config: dict[str, Any]) -> str:
    """The resolved config as the JSON string stored in checkpoints (plain values only)."""
    return json.dumps(config, sort_keys=True)


def save_config(config: dict[str, Any], path: str | os.PathLike) -> None:
    write_atomic(path, yaml.safe_dump(config, sort_keys=False), fsync=False)
