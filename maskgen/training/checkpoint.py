"""Checkpoints: atomic writes, ``latest`` resolution, and rebuilding an embedder from a run.

A checkpoint holds the method's state (backbone and heads), the EMA weights when kept, optimizer
and scaler states, the position in the data stream (epoch, step in epoch), RNG states and the
resolved config, so ``load_embedder`` needs nothing but the file.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

CHECKPOINT_DIR = "checkpoints"
_STEP_RE = re.compile(r"^step_(\d+)\.pt$")


def checkpoint_path(run_dir: str | os.PathLike, step: int) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR / f"step_{step:09d}.pt"


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Checkpoints of a run folder (or of a ``checkpoints/`` folder), oldest first."""
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
            raise ValueError("'latest' needs the run folder")
        path = run_dir
    p = Path(path)
    if p.is_file():
        return p
    if p.is_dir():
        found = list_checkpoints(p)
        if found:
            return found[-1]
        raise FileNotFoundError(f"no checkpoint in {p}")
    raise FileNotFoundError(f"checkpoint not found: {p}")


def save_checkpoint(state: dict[str, Any], run_dir: str | os.PathLike, step: int, keep: int = 3) -> Path:
    """Write ``state`` atomically (temp file + os.replace) and keep only the ``keep`` newest."""
    path = checkpoint_path(run_dir, step)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    if keep and keep > 0:
        for old in list_checkpoints(run_dir)[:-keep]:
            old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    return torch.load(resolve_checkpoint(path), map_location=map_location, weights_only=False)


class Embedder(nn.Module):
    """Wraps a method so that ``forward(images)`` is its inference embedding (for eval and ONNX)."""

    def __init__(self, method: nn.Module):
        super().__init__()
        self.method = method

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.method.embed(images)


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


def load_embedder(
    path: str | os.PathLike, device: str | torch.device = "cpu", use_ema: bool = True
) -> tuple[nn.Module, dict[str, Any]]:
    """(embedder in eval mode: normalized (B,3,112,112) -> (B,D), resolved config) of a checkpoint.

    ``path`` is a checkpoint file or a run folder (its newest checkpoint). EMA weights are used
    when the run kept them, unless ``use_ema`` is false.
    """
    ckpt = load_checkpoint(path)
    config = ckpt["config"]
    method = build_method(config)
    state = ckpt["ema"] if use_ema and ckpt.get("ema") is not None else ckpt["model"]
    method.load_state_dict(state)
    embedder = Embedder(method).to(device).eval()
    return embedder, config


def backbone_state(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Backbone weights from a maskgen checkpoint (EMA when kept) or a plain state-dict file
    (e.g. an insightface arcface_torch ``backbone.pth``)."""
    obj = torch.load(resolve_checkpoint(path), map_location="cpu", weights_only=False)
    if isinstance(obj, dict) and "model" in obj and "config" in obj:
        state = obj["ema"] if obj.get("ema") is not None else obj["model"]
        return {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    if isinstance(obj, dict) and "state_dict" in obj:
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: not a state dict or maskgen checkpoint")
    return {k.removeprefix("module.").removeprefix("backbone."): v for k, v in obj.items()}
