"""Backbone registry (timm style): a factory registers under a name; configs pick it by name."""

from __future__ import annotations

import fnmatch
from typing import Any, Callable

from torch import nn

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: register a factory (function or class) that builds a backbone from options."""

    def wrap(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _MODELS and _MODELS[name] is not factory:
            raise ValueError(f"model {name!r} is already registered")
        _MODELS[name] = factory
        return factory

    return wrap


def create_model(name: str, **options: Any) -> nn.Module:
    """Build backbone ``name``; options are passed to its factory (e.g. ``embedding_size``)."""
    try:
        factory = _MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; registered: {', '.join(list_models())}") from None
    return factory(**options)


def list_models(pattern: str | None = None) -> list[str]:
    """Registered model names, sorted; ``pattern`` is a shell-style filter (``iresnet*``)."""
    names = sorted(_MODELS)
    return [n for n in names if pattern is None or fnmatch.fnmatch(n, pattern)]


def model_factory(name: str) -> Callable[..., nn.Module]:
    """The factory registered under ``name`` (to inspect which options it accepts)."""
    return _MODELS[name]
