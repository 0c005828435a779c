"""Training: backbones, margin heads, streaming WebDataset loader, trainer, checkpoints, export.

Heavy modules load on first use so that ``import maskgen.training`` stays cheap::

    from maskgen.training import train, load_model, export_onnx
    result = train("configs/train_iresnet50_arcface.yaml", shards="out/shards/*.tar")
    model, config = load_model(result.run_dir)
"""

from __future__ import annotations

from typing import Any

_LAZY = {
    "train": "maskgen.training.trainer",
    "TrainResult": "maskgen.training.trainer",
    "load_model": "maskgen.training.checkpoint",
    "export_onnx": "maskgen.training.export",
    "create_model": "maskgen.training.models",
    "list_models": "maskgen.training.models",
    "create_method": "maskgen.training.methods",
    "list_methods": "maskgen.training.methods",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'maskgen.training' has no attribute {name!r}")
