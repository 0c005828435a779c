"""Face recognition backbones. Every submodule is imported so its models register themselves."""

from __future__ import annotations

import importlib
import pkgutil

from maskgen.training.models.registry import create_model, list_models, register_model

for _info in pkgutil.iter_modules(__path__):
    if _info.name != "registry":
        importlib.import_module(f"{__name__}.{_info.name}")

__all__ = ["create_model", "list_models", "register_model"]
