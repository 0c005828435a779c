"""Training objectives ("methods"): a backbone plus whatever heads and losses a paper uses.

The trainer only knows this interface: ``forward(batch) -> {"loss": ..., other scalars}`` and
``embed(images)`` for evaluation/export. A method that needs the original and the masked image of
one sample in the same batch sets ``needs_pairs = True`` and the loader adds ``image_orig`` and
``image_masked`` to every batch.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

_METHODS: dict[str, Callable[..., "Method"]] = {}


class Method(nn.Module):
    """Base class: holds ``self.backbone``; subclasses add heads and implement ``forward``."""

    needs_pairs: bool = False

    def __init__(self, backbone: nn.Module, num_classes: int, embedding_size: int = 512, **options: Any):
        super().__init__()
        if options:
            raise TypeError(f"{type(self).__name__} got unknown options: {sorted(options)}")
        self.backbone = backbone
        self.num_classes = int(num_classes)
        self.embedding_size = int(embedding_size)

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Inference embedding of normalized (B,3,112,112) images."""
        return self.backbone(images)


def register_method(name: str) -> Callable[[Callable[..., Method]], Callable[..., Method]]:
    """Decorator: register a Method subclass (or factory) under ``name``."""

    def wrap(factory: Callable[..., Method]) -> Callable[..., Method]:
        if name in _METHODS and _METHODS[name] is not factory:
            raise ValueError(f"method {name!r} is already registered")
        _METHODS[name] = factory
        return factory

    return wrap


def create_method(
    name: str, backbone: nn.Module, num_classes: int, embedding_size: int = 512, **options: Any
) -> Method:
    """Build method ``name`` around ``backbone`` for ``num_classes`` identities."""
    try:
        factory = _METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; registered: {', '.join(list_methods())}") from None
    return factory(backbone, num_classes, embedding_size=embedding_size, **options)


def list_methods() -> list[str]:
    return sorted(_METHODS)


def method_class(name: str) -> Callable[..., Method]:
    """The registered factory of ``name`` (the trainer reads ``needs_pairs`` from it)."""
    return _METHODS[name]
