"""ONNX export of a trained model (fp32, dynamic batch) through torch's dynamo-based exporter,
checked against torch.

Outputs: ``embedding`` (N, D) always; ``mask_logits`` (N, 2) as a second output when the method
has a mask-usage head (Multi-Task ArcFace, BFM's classifier C). A BFM export also carries what the
routing needs, so ``maskgen eval --model onnx:...`` scores it with the routed protocol: its
``embedding`` is ``[E_F/|E_F|, E_P/|E_P|]`` and the model's metadata says
``maskgen.protocol = bfm`` and ``maskgen.route_threshold``.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from maskgen.fsio import atomic_path
from maskgen.training.checkpoint import ModelEmbedder, load_model

DEFAULT_OPSET = 18  # the dynamo exporter's own opset; lower ones go through a version converter


class _Exported(nn.Module):
    """The graph that is exported: images -> embedding[, mask logits], one backbone pass."""

    def __init__(self, embedder: ModelEmbedder) -> None:
        super().__init__()
        self.embedder = embedder

    def forward(self, images: torch.Tensor):
        return self.embedder.forward_with_mask(images) if self.embedder.has_mask_head else self.embedder(images)


def _as_embedder(checkpoint_or_model: str | os.PathLike | nn.Module) -> ModelEmbedder:
    if isinstance(checkpoint_or_model, (str, os.PathLike)):
        return load_model(checkpoint_or_model, device="cpu")[0]
    model = checkpoint_or_model
    if not isinstance(model, ModelEmbedder):
        if not hasattr(model, "embed"):
            raise TypeError("export needs a maskgen checkpoint, a ModelEmbedder or a training method")
        model = ModelEmbedder(model)
    return model


def export_onnx(
    checkpoint_or_model: str | os.PathLike | nn.Module,
    path: str | os.PathLike,
    opset: int = DEFAULT_OPSET,
    input_size: int = 112,
) -> Path:
    """Write the model as ONNX: input ``input`` (N,3,S,S) normalized float32, outputs
    ``embedding`` (N,D) and, with a mask head, ``mask_logits`` (N,2). Written to a temp name and
    renamed, so a failed export leaves nothing."""
    import onnx

    embedder = _as_embedder(checkpoint_or_model).float().cpu().eval()
    path = Path(path)
    outputs = ["embedding", "mask_logits"] if embedder.has_mask_head else ["embedding"]
    batch = torch.export.Dim("batch", min=1)
    dummy = torch.zeros(2, 3, input_size, input_size)
    quiet = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # "torchvision is not installed. Skipping torchvision::nms" x4
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # torch's own exporter internals (pytree), not our call: nothing else is silenced
            warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning)
            program = torch.onnx.export(
                _Exported(embedder).eval(), (dummy,), input_names=["input"], output_names=outputs,
                dynamic_shapes=({0: batch},), opset_version=opset, dynamo=True, verbose=False,
            )
        proto = program.model_proto
        meta = {"maskgen.protocol": embedder.protocol, "maskgen.route_threshold": str(embedder.route_threshold),
                "maskgen.model": str(embedder.config.get("model", "")),
                "maskgen.method": str(embedder.config.get("method", ""))}
        for key, value in meta.items():
            prop = proto.metadata_props.add()
            prop.key, prop.value = key, value
        with atomic_path(path, fsync=False) as tmp:
            onnx.save(proto, str(tmp))
    finally:
        quiet.setLevel(level)
    return path


def onnx_outputs(onnx_path: str | os.PathLike, images: torch.Tensor) -> list[np.ndarray]:
    """ONNX Runtime outputs (CPU provider) for ``images``."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: images.float().numpy()})


def _row_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)


def onnx_cosine(onnx_path: str | os.PathLike, model: nn.Module, images: torch.Tensor) -> np.ndarray:
    """Per-image cosine similarity of the ONNX Runtime and torch embeddings of ``images``."""
    embedder = _as_embedder(model).float().cpu().eval()
    got = onnx_outputs(onnx_path, images)[0]
    with torch.no_grad():
        ref = embedder(images.float()).numpy()
    return _row_cosine(got, ref)


def onnx_check(onnx_path: str | os.PathLike, model: nn.Module, images: torch.Tensor) -> dict[str, float]:
    """Agreement of ONNX Runtime with torch: minimum embedding cosine and, with a mask head, the
    largest absolute difference of the mask probabilities."""
    embedder = _as_embedder(model).float().cpu().eval()
    outs = onnx_outputs(onnx_path, images)
    with torch.no_grad():
        ref = embedder.forward_with_mask(images.float()) if embedder.has_mask_head else (embedder(images.float()),)
    result = {"cosine_min": float(_row_cosine(outs[0], ref[0].numpy()).min())}
    if embedder.has_mask_head:
        p_onnx = torch.softmax(torch.from_numpy(outs[1]).float(), 1)[:, 1]
        p_ref = torch.softmax(ref[1].float(), 1)[:, 1]
        result["mask_prob_max_diff"] = float((p_onnx - p_ref).abs().max())
    return result
