"""Training objectives. Every submodule is imported so its methods register themselves."""

from __future__ import annotations

import importlib
import pkgutil

from maskgen.training.methods.base import (
    Method,
    create_method,
    list_methods,
    method_class,
    register_method,
)

for _info in pkgutil.iter_modules(__path__):
    if _info.name != "base":
        importlib.import_module(f"{__name__}.{_info.name}")

__all__ = ["Method", "create_method", "list_methods", "method_class", "register_method"]
