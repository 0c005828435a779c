"""Checkpoints: atomic writes, ``latest`` resolution, safe loading, and models rebuilt from a run.

A checkpoint holds only tensors and plain values, and is always read with
``torch.load(weights_only=True)``: a file a user is handed can never run code. The resolved
config travels as a JSON string (``config_json``). Contents: the method's weights (backbone and
heads), the EMA weights when kept (never the classifier), optimizer and scaler states, the step,
RNG states and skip counters.

Under DDP the classifier is sharded (``PartialFC``): rank r also writes
``step_N.rank<r>of<W>.pt`` with its class-centre rows and its optimizer state, before rank 0
writes ``step_N.pt``; the main file, written last, marks the step complete. Inference never needs
the classifier, so ``load_model`` reads the main file only.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from maskgen.errors import InputError
from maskgen.fsio import atomic_open
from maskgen.training.heads import classifier_prefixes, is_classifier_key

log = logging.getLogger("maskgen.train")
CHECKPOINT_DIR = "checkpoints"
FORMAT = "maskgen-checkpoint"
VERSION = 2
_STEP_RE = re.compile(r"^step_(\d+)\.pt$")


class UnsafeCheckpointError(InputError):
    """The file holds Python objects beyond tensors and plain values (loading could run code)."""


class CorruptCheckpointError(InputError):
    """The file is truncated or otherwise unreadable."""


def checkpoint_path(run_dir: str | os.PathLike, step: int) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR / f"step_{step:09d}.pt"


def shard_path(main: str | os.PathLike, rank: int, world_size: int) -> Path:
    """The per-rank classifier file that belongs to the main checkpoint ``main``."""
    main = Path(main)
    return main.with_name(f"{main.stem}.rank{rank}of{world_size}.pt")


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints (main files) of a run folder or a ``checkpoints/`` folder, oldest first."""
    run_dir = Path(run_dir)
    folder = run_dir / CHECKPOINT_DIR if (run_dir / CHECKPOINT_DIR).is_dir() else run_dir
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _STEP_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def resolve_checkpoint(path: str | os.PathLike, run_dir: str | os.PathLike | None = None) -> Path:
    """A checkpoint file from a file path, a run folder (its newest), or ``latest`` of ``run_dir``."""
    if str(path) == "latest":
        if run_dir is None:
            raise InputError("'latest' needs the run folder")
        path = run_dir
    p = Path(path)
    if p.is_file():
        return p
    if p.is_dir():
        found = list_checkpoints(p)
        if found:
            return found[-1]
        raise InputError(f"no checkpoint in {p} (expected {CHECKPOINT_DIR}/step_*.pt)")
    raise InputError(f"checkpoint not found: {p}")


def _write(obj: Any, path: Path) -> None:
    with atomic_open(path, "wb") as f:  # flushed to disk, then renamed
        torch.save(obj, f)


def save_checkpoint(state: dict[str, Any], run_dir: str | os.PathLike, step: int, keep: int = 3,
                    shard: dict[str, Any] | None = None, rank: int = 0, world_size: int = 1,
                    barrier: Any = None) -> Path:
    """Write a checkpoint atomically (temp file, fsync, ``os.replace``) and keep the ``keep`` newest.

    ``state`` (rank 0's) goes to ``step_N.pt``; with a sharded classifier every rank passes its
    ``shard`` and a ``barrier`` callable, and the main file is written only after every shard is.
    """
    path = checkpoint_path(run_dir, step)
    path.parent.mkdir(parents=True, exist_ok=True)
    if shard is not None:
        _write(shard, shard_path(path, rank, world_size))
        if barrier is not None:
            barrier()
    if rank == 0:
        _write(state, path)
        if keep and keep > 0:
            for old in list_checkpoints(run_dir)[:-keep]:
                for p in [old, *old.parent.glob(f"{old.stem}.rank*of*.pt")]:
                    p.unlink(missing_ok=True)
    return path


def safe_load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(weights_only=True)`` with one-line errors: refused (unsafe) or unreadable."""
    path = Path(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        detail = str(exc).split("WeightsUnpickler error:")[-1].strip().splitlines()
        raise UnsafeCheckpointError(
            f"{path}: refused: it holds Python objects beyond tensors and plain values "
            f"({detail[0] if detail else 'unsupported object'}), and loading those could run code; "
            "a checkpoint from an older maskgen or another program must be re-saved as a plain "
            "state dict by someone who trusts it") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CorruptCheckpointError(f"{path}: truncated or unreadable ({reason})") from None


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A maskgen checkpoint as a dict, with its config decoded (``ckpt["config"]``)."""
    path = resolve_checkpoint(path)
    ckpt = safe_load(path, map_location)
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise InputError(f"{path}: not a maskgen checkpoint (no model weights)")
    if "config_json" in ckpt:
        ckpt["config"] = json.loads(ckpt["config_json"])
    elif not isinstance(ckpt.get("config"), dict):
        raise InputError(f"{path}: not a maskgen checkpoint (no config)")
    return ckpt


def load_latest(run_dir: str | os.PathLike, map_location: str | torch.device = "cpu",
                world_size: int = 1) -> tuple[Path, dict[str, Any]]:
    """The newest checkpoint of ``run_dir`` that can be read, newest first; a truncated or
    unreadable one (or one missing a rank's classifier file) is skipped with a warning that
    names it. An unsafe file stops the search: it was not written by this trainer."""
    found = list_checkpoints(run_dir)
    if not found:
        raise InputError(f"nothing to resume: no checkpoint in {Path(run_dir) / CHECKPOINT_DIR}")
    skipped: list[str] = []
    for path in reversed(found):
        try:
            ckpt = load_checkpoint(path, map_location)
            shards = int(ckpt.get("classifier_shards", 1))
            if shards > 1:
                for r in range(shards):
                    if not shard_path(path, r, shards).is_file():
                        raise CorruptCheckpointError(f"{shard_path(path, r, shards)} is missing")
        except CorruptCheckpointError as exc:
            skipped.append(str(exc))
            log.warning("checkpoint skipped: %s", exc)
            continue
        if skipped:
            log.warning("resuming from %s, the newest readable checkpoint (%d newer unreadable)",
                        path.name, len(skipped))
        return path, ckpt
    raise InputError(f"no readable checkpoint in {Path(run_dir) / CHECKPOINT_DIR}: {'; '.join(skipped)}")


def build_method(config: dict[str, Any]) -> nn.Module:
    """The method of a resolved config, with freshly initialised weights."""
    from maskgen.training.methods import create_method
    from maskgen.training.models import create_model

    backbone = create_model(
        config["model"], embedding_size=int(config["embedding_size"]), **(config.get("model_options") or {})
    )
    return create_method(
        config["method"], backbone, int(config["num_classes"]),
        embedding_size=int(config["embedding_size"]), **(config.get("method_options") or {}),
    )


def load_weights(method: nn.Module, state: dict[str, torch.Tensor], overlay: dict[str, torch.Tensor] | None = None,
                 need_classifier: bool = False, source: str = "checkpoint") -> None:
    """Load ``state`` (then ``overlay``, e.g. EMA weights) into ``method``. Without
    ``need_classifier`` the class centres may be absent (sharded runs, inference)."""
    merged = dict(state)
    if overlay:
        merged.update(overlay)
    prefixes = classifier_prefixes(method)
    own = method.state_dict()
    if not need_classifier:
        merged = {k: v for k, v in merged.items() if not is_classifier_key(k, prefixes)}
        merged.update({k: v for k, v in own.items() if is_classifier_key(k, prefixes)})
    result = method.load_state_dict(merged, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise InputError(f"{source}: weights do not match the model "
                         f"(missing {result.missing_keys[:3]}, unexpected {result.unexpected_keys[:3]})")


class ModelEmbedder(nn.Module):
    """A trained method seen as an inference model: ``forward(images)`` is its embedding and
    ``mask_logits(images)`` its mask-usage head when it has one (Multi-Task ArcFace, BFM).
    ``protocol`` says how pairs are scored: ``cosine``, or ``bfm`` (per-pair routing)."""

    def __init__(self, method: nn.Module, config: dict[str, Any] | None = None):
        super().__init__()
        self.method = method
        self.config = dict(config or {})
        self.has_mask_head = callable(getattr(method, "mask_logits", None))
        self.protocol = "bfm" if hasattr(method, "partial") and hasattr(method, "route_threshold") else "cosine"
        self.route_threshold = float(getattr(method, "route_threshold", 0.5))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.method.embed(images)

    def mask_logits(self, images: torch.Tensor) -> torch.Tensor:
        if not self.has_mask_head:
            raise AttributeError(f"{type(self.method).__name__} has no mask-usage head")
        return self.method.mask_logits(images)

    def forward_with_mask(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(embedding, mask logits) in one pass where the method shares its backbone."""
        both = getattr(self.method, "embed_with_mask", None)
        if callable(both):
            return both(images)
        return self.method.embed(images), self.mask_logits(images)


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu",
               use_ema: bool = True) -> tuple[ModelEmbedder, dict[str, Any]]:
    """(inference model in eval mode: normalized (B,3,S,S) -> (B,D), resolved config) of a
    checkpoint file or a run folder (its newest checkpoint). EMA weights are used when the run
    kept them, unless ``use_ema`` is false. The classifier is not loaded (inference needs none)."""
    path = resolve_checkpoint(path)
    ckpt = load_checkpoint(path)
    config = ckpt["config"]
    method = build_method(config)
    overlay = ckpt.get("ema") if use_ema else None
    load_weights(method, ckpt["model"], overlay, source=str(path))
    return ModelEmbedder(method, config).to(device).eval(), config


def backbone_state(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Backbone weights from a maskgen checkpoint (EMA when kept) or a plain state-dict file
    (e.g. an insightface arcface_torch ``backbone.pth``), read with ``weights_only=True``."""
    path = resolve_checkpoint(path)
    obj = safe_load(path)
    if isinstance(obj, dict) and "model" in obj and ("config" in obj or "config_json" in obj):
        state = dict(obj["model"])
        state.update(obj.get("ema") or {})
        return {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    if isinstance(obj, dict) and "state_dict" in obj:
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InputError(f"{path}: not a state dict or maskgen checkpoint")
    return {k.removeprefix("module.").removeprefix("backbone."): v for k, v in obj.items()}
