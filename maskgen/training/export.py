"""ONNX export of the embedding model (fp32, dynamic batch), checked against torch."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from maskgen.training.checkpoint import Embedder, load_embedder


def _as_embedder(checkpoint_or_model: str | os.PathLike | nn.Module) -> nn.Module:
    if isinstance(checkpoint_or_model, (str, os.PathLike)):
        return load_embedder(checkpoint_or_model, device="cpu")[0]
    model = checkpoint_or_model
    if hasattr(model, "embed") and not isinstance(model, Embedder):
        model = Embedder(model)
    return model


def export_onnx(
    checkpoint_or_model: str | os.PathLike | nn.Module,
    path: str | os.PathLike,
    opset: int = 17,
    input_size: int = 112,
) -> Path:
    """Write the embedder as ONNX: input ``input`` (N,3,S,S) normalized float32, output
    ``embedding`` (N,D). Written to a temp name and renamed, so a failed export leaves nothing."""
    model = _as_embedder(checkpoint_or_model).float().cpu().eval()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    dummy = torch.zeros(2, 3, input_size, input_size)
    with torch.no_grad():
        torch.onnx.export(
            model, (dummy,), str(tmp), input_names=["input"], output_names=["embedding"],
            dynamic_axes={"input": {0: "batch"}, "embedding": {0: "batch"}},
            opset_version=opset, dynamo=False,
        )
    os.replace(tmp, path)
    return path


def onnx_cosine(
    onnx_path: str | os.PathLike, model: nn.Module, images: torch.Tensor
) -> np.ndarray:
    """Per-image cosine similarity of the ONNX Runtime and torch embeddings of ``images``."""
    import onnxruntime as ort

    model = _as_embedder(model).float().cpu().eval()
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = sess.run(["embedding"], {"input": images.float().numpy()})[0]
    with torch.no_grad():
        ref = model(images.float()).numpy()
    num = (got * ref).sum(1)
    return num / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1) + 1e-12)
