"""Face embedders behind one interface: dlib's ResNet descriptor, ONNX models, maskgen checkpoints.

An embedder turns (image, 68 landmarks) into a crop of its own geometry (dlib: 150x150 chip with
dlib's alignment; the others: insightface 5-point 112x112 alignment), then embeds crops in
batches. Specs are strings (``dlib``, ``onnx:<path>``, ``ckpt:<file or run folder>``, joined by
``+`` for feature concatenation) so a worker process can build its own copy of the model from
the spec alone. ``protocol`` says how a pair is scored: ``cosine``, or ``bfm`` (routed per pair
by the mask classifier, Huang et al.).
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Callable, Protocol

import numpy as np

from maskgen.masks.landmarks import dlib_model_dir


class Embedder(Protocol):
    name: str
    dim: int
    has_mask_head: bool
    normalize_l2: bool  # compare L2 distances on normalised embeddings
    protocol: str  # "cosine", or "bfm": pairs routed by the mask classifier

    def crop(self, img: np.ndarray, landmarks: np.ndarray) -> np.ndarray: ...

    def embed(self, crops: list[np.ndarray], flip: bool = False) -> np.ndarray: ...

    def mask_prob(self, crops: list[np.ndarray]) -> np.ndarray: ...


def _file_tag(path: str | os.PathLike) -> str:
    st = Path(path).stat()
    return hashlib.sha1(f"{Path(path).resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:10]


def _flip_sum(f: Callable[[np.ndarray], np.ndarray], batch: np.ndarray, flip: bool) -> np.ndarray:
    out = f(batch)
    if flip:
        out = out + f(batch[:, :, ::-1].copy())
    return out


class DlibEmbedder:
    """dlib's ``dlib_face_recognition_resnet_model_v1`` (128-d): a baseline that never saw a mask.

    Crops are dlib face chips (150x150, padding 0.25) aligned from the 68 landmarks by
    ``dlib.get_face_chip``, the alignment the descriptor was trained with. Distances are compared
    raw (dlib's same-person threshold 0.6 is on un-normalised descriptors).
    """

    name = "dlib"
    dim = 128
    has_mask_head = False
    normalize_l2 = False
    protocol = "cosine"

    def __init__(self) -> None:
        import dlib

        self._dlib = dlib
        self._model = dlib.face_recognition_model_v1(
            str(dlib_model_dir() / "dlib_face_recognition_resnet_model_v1.dat"))
        self.tag = "dlib-resnet-v1"

    def crop(self, img: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        dlib = self._dlib
        pts = np.asarray(landmarks, dtype=np.float64)
        x0, y0 = np.floor(pts.min(0)).astype(int)
        x1, y1 = np.ceil(pts.max(0)).astype(int)
        det = dlib.full_object_detection(dlib.rectangle(int(x0), int(y0), int(x1), int(y1)),
                                         [dlib.point(int(round(x)), int(round(y))) for x, y in pts])
        return np.ascontiguousarray(dlib.get_face_chip(np.ascontiguousarray(img, np.uint8), det,
                                                       size=150, padding=0.25))

    def _run(self, batch: np.ndarray) -> np.ndarray:
        chips = [np.ascontiguousarray(c) for c in batch]
        return np.asarray([np.asarray(v) for v in self._model.compute_face_descriptor(chips)],
                          dtype=np.float32).reshape(len(chips), self.dim)

    def embed(self, crops: list[np.ndarray], flip: bool = False) -> np.ndarray:
        if not crops:
            return np.zeros((0, self.dim), np.float32)
        out = _flip_sum(self._run, np.stack(crops), flip)
        return (out / 2.0 if flip else out).astype(np.float32)

    def mask_prob(self, crops: list[np.ndarray]) -> np.ndarray:
        raise NotImplementedError("dlib's descriptor has no mask-usage head")


def _to_model_input(batch: np.ndarray) -> np.ndarray:
    """uint8 (B,112,112,3) RGB -> float32 (B,3,112,112) in [-1, 1], the insightface convention."""
    x = batch.astype(np.float32) / 255.0
    x = (x - 0.5) / 0.5
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


class _AlignedEmbedder:
    """Shared 112x112 insightface alignment for ONNX and checkpoint models."""

    size = 112
    normalize_l2 = True

    def crop(self, img: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        from maskgen.masks import align_face

        return np.ascontiguousarray(align_face(img, landmarks, size=self.size))


class OnnxEmbedder(_AlignedEmbedder):
    """Any ONNX face model with a 112x112 input (NCHW or NHWC), e.g. insightface's ArcFace exports.

    If the graph has a second output with one value (or two logits) per image, it is read as a
    mask-usage head.
    """

    has_mask_head = False
    protocol = "cosine"
    route_threshold = 0.5

    def __init__(self, path: str | os.PathLike, threads: int = 1, device: str = "auto") -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise RuntimeError("the onnx embedder needs onnxruntime (pip install onnxruntime)") from exc
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        self.providers = onnx_providers(device, ort.get_available_providers())
        self._sess = ort.InferenceSession(str(path), sess_options=so, providers=self.providers)
        meta = self._sess.get_modelmeta().custom_metadata_map or {}
        if meta.get("maskgen.protocol") == "bfm":  # a maskgen BFM export: route pairs (E_F / E_P)
            self.protocol = "bfm"
            self.route_threshold = float(meta.get("maskgen.route_threshold", 0.5))
        inp = self._sess.get_inputs()[0]
        self._input = inp.name
        shape = list(inp.shape)
        self._nhwc = len(shape) == 4 and shape[-1] == 3 and shape[1] != 3
        spatial = shape[1:3] if self._nhwc else shape[2:4]
        if all(isinstance(s, int) for s in spatial) and tuple(spatial) != (112, 112):
            raise ValueError(f"{path}: expected a 112x112 input, the model takes {spatial}")
        outs = self._sess.get_outputs()
        self._outputs = [o.name for o in outs]
        emb_shape = outs[0].shape
        if len(outs) > 1:
            last = outs[1].shape[-1] if outs[1].shape else None
            self.has_mask_head = last in (1, 2)
        self._batch_fixed = inp.shape[0] if isinstance(inp.shape[0], int) else None
        self.dim = int(emb_shape[-1]) if isinstance(emb_shape[-1], int) else -1
        self.name = f"onnx:{Path(path).name}"
        self.tag = f"onnx-{Path(path).stem}-{_file_tag(path)}"

    def _forward(self, batch: np.ndarray) -> list[np.ndarray]:
        x = _to_model_input(batch)
        if self._nhwc:
            x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
        if self._batch_fixed:  # models exported with a fixed batch: run one chunk at a time
            outs = [self._sess.run(self._outputs, {self._input: x[i:i + self._batch_fixed]})
                    for i in range(0, len(x), self._batch_fixed)]
            return [np.concatenate([o[k] for o in outs]) for k in range(len(self._outputs))]
        return self._sess.run(self._outputs, {self._input: x})

    def embed(self, crops: list[np.ndarray], flip: bool = False) -> np.ndarray:
        if not crops:
            return np.zeros((0, max(self.dim, 0)), np.float32)
        out = _flip_sum(lambda b: np.asarray(self._forward(b)[0], np.float32).reshape(len(b), -1),
                        np.stack(crops), flip)
        return out.astype(np.float32)

    def mask_prob(self, crops: list[np.ndarray]) -> np.ndarray:
        if not self.has_mask_head:
            raise NotImplementedError(f"{self.name} has no mask-usage output")
        return _logits_to_prob(np.asarray(self._forward(np.stack(crops))[1]))


def onnx_providers(device: str, available: list[str]) -> list[str]:
    """ONNX Runtime providers for ``device``: the CUDA provider first when it is present and the
    device is ``auto`` or ``cuda``, the CPU provider always (as the fallback)."""
    if device != "cpu" and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device.startswith("cuda"):
        raise RuntimeError("--device cuda: onnxruntime has no CUDA provider here (pip install onnxruntime-gpu)")
    return ["CPUExecutionProvider"]


def _logits_to_prob(z: np.ndarray) -> np.ndarray:
    """Mask probability from a head's output: one logit (sigmoid) or two logits (softmax[1])."""
    z = np.asarray(z, dtype=np.float64).reshape(len(z), -1)
    if z.shape[1] == 1:
        return 1.0 / (1.0 + np.exp(-z[:, 0]))
    e = np.exp(z - z.max(1, keepdims=True))
    return (e[:, 1] / e.sum(1)).astype(np.float64)


class CheckpointEmbedder(_AlignedEmbedder):
    """A ``maskgen train`` checkpoint (file, or run folder: its newest) loaded with
    ``maskgen.training.checkpoint.load_model`` (``weights_only=True``: the file cannot run code).

    The model maps normalised (B,3,112,112) RGB to (B,D); its mask-usage head (Multi-Task
    ArcFace, BFM's classifier C) is used when it has one, and a BFM model is scored with its
    routed protocol (``protocol == "bfm"``).
    """

    def __init__(self, path: str | os.PathLike, device: str = "cpu", batch_size: int = 64) -> None:
        try:
            import torch

            from maskgen.training.checkpoint import load_model, resolve_checkpoint
        except ImportError as exc:
            raise RuntimeError("ckpt: models need maskgen.training (and torch) installed") from exc

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self._torch = torch
        self._device = device
        self._batch = batch_size
        file = resolve_checkpoint(path)
        self._model, self.config = load_model(file, device=device)
        self.has_mask_head = self._model.has_mask_head
        self.protocol = self._model.protocol
        self.route_threshold = self._model.route_threshold
        with torch.no_grad():
            probe = self._model(torch.zeros(2, 3, self.size, self.size, device=device))
        self.dim = int(probe.shape[-1])
        self.name = f"ckpt:{Path(path).name}"
        self.tag = f"ckpt-{file.stem}-{_file_tag(file)}"

    def _forward(self, batch: np.ndarray, with_mask: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        torch = self._torch
        embs, masks = [], []
        with torch.no_grad():
            for i in range(0, len(batch), self._batch):
                x = torch.from_numpy(_to_model_input(batch[i:i + self._batch])).to(self._device)
                if with_mask:
                    out, mask = self._model.forward_with_mask(x)
                    masks.append(mask.float().cpu().numpy())
                else:
                    out = self._model(x)
                embs.append(out.float().cpu().numpy())
        return np.concatenate(embs), (np.concatenate(masks) if masks else None)

    def embed(self, crops: list[np.ndarray], flip: bool = False) -> np.ndarray:
        if not crops:
            return np.zeros((0, self.dim), np.float32)
        out = _flip_sum(lambda b: self._forward(b)[0], np.stack(crops), flip)
        return out.astype(np.float32)

    def mask_prob(self, crops: list[np.ndarray]) -> np.ndarray:
        if not self.has_mask_head:
            raise NotImplementedError(f"{self.name} has no mask-usage head")
        return _logits_to_prob(self._forward(np.stack(crops), with_mask=True)[1])


class ConcatEmbedder(_AlignedEmbedder):
    """Qi et al.'s feature concatenation: the L2-normalised embeddings of several models side by
    side (``ckpt:a+ckpt:b``), so the cosine of the result is the mean of the models' cosines. The
    first model with a mask head provides it."""

    def __init__(self, parts: list) -> None:
        if len(parts) < 2:
            raise ValueError("feature concatenation needs at least two models")
        if any(isinstance(p, DlibEmbedder) for p in parts):
            raise ValueError("dlib's descriptor uses its own crop; concatenate only onnx: and ckpt: models")
        if any(getattr(p, "protocol", "cosine") != "cosine" for p in parts):
            raise ValueError("a BFM model routes pairs itself and cannot be concatenated")
        self.parts = parts
        self.dim = sum(p.dim for p in parts)
        self.name = "+".join(p.name for p in parts)
        self.tag = "+".join(p.tag for p in parts)
        heads = [p for p in parts if p.has_mask_head]
        self._head = heads[0] if heads else None
        self.has_mask_head = self._head is not None
        self.protocol = "cosine"

    def embed(self, crops: list[np.ndarray], flip: bool = False) -> np.ndarray:
        outs = []
        for p in self.parts:
            e = np.asarray(p.embed(crops, flip=flip), np.float64)
            outs.append(e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12))
        return np.concatenate(outs, axis=1).astype(np.float32) if crops else np.zeros((0, self.dim), np.float32)

    def mask_prob(self, crops: list[np.ndarray]) -> np.ndarray:
        if self._head is None:
            raise NotImplementedError(f"{self.name} has no mask-usage head")
        return self._head.mask_prob(crops)


def split_specs(spec: str) -> list[str]:
    """The model specs of a concatenation ``ckpt:a+onnx:b`` (a ``+`` inside a path stays)."""
    return [p for p in re.split(r"\+(?=(?:ckpt|onnx|dlib)(?::|$))", spec) if p]


def parse_spec(spec: str) -> tuple[str, str]:
    """(kind, path) of one model spec; a bare ``*.onnx`` path counts as ``onnx:``; a ``ckpt:``
    path may be a run folder (``ckpt:runs/<name>``, its newest checkpoint)."""
    if spec == "dlib":
        return "dlib", ""
    kind, _, path = spec.partition(":")
    if kind in ("onnx", "ckpt") and path:
        pass
    elif Path(spec).suffix == ".onnx":
        kind, path = "onnx", spec
    else:
        raise ValueError(f"unknown model spec {spec!r}: use dlib, onnx:<path>, ckpt:<file or run folder>, "
                         "or several joined by + (feature concatenation)")
    if kind == "ckpt" and Path(path).is_dir():
        return kind, path
    if not Path(path).is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    return kind, path


def load_embedder(spec: str, device: str = "auto") -> Embedder:
    """The one embedder loader: ``dlib``, ``onnx:<path>``, ``ckpt:<file or run folder>``, or
    ``a+b`` for the feature concatenation of several. ``device``: ``auto`` uses a GPU when torch
    (ckpt:) or onnxruntime's CUDA provider (onnx:) has one."""
    specs = split_specs(spec)
    if len(specs) > 1:
        return ConcatEmbedder([load_embedder(s, device) for s in specs])
    kind, path = parse_spec(spec)
    if kind == "dlib":
        return DlibEmbedder()
    if kind == "onnx":
        return OnnxEmbedder(path, device=device)
    return CheckpointEmbedder(path, device=device)


def embedder_tag(spec: str) -> str:
    """A cache tag for a spec without loading the model (file identity for model files)."""
    specs = split_specs(spec)
    if len(specs) > 1:
        return "+".join(embedder_tag(s) for s in specs)
    kind, path = parse_spec(spec)
    if kind == "dlib":
        return "dlib-resnet-v1"
    if kind == "ckpt" and Path(path).is_dir():
        from maskgen.training.checkpoint import resolve_checkpoint

        path = str(resolve_checkpoint(path))
    return f"{kind}-{Path(path).stem}-{_file_tag(path)}"


def model_protocol(spec: str) -> tuple[str, float]:
    """(pair protocol, route threshold) of a spec without building the model: ``bfm`` for a BFM
    checkpoint or a maskgen BFM ONNX export, ``cosine`` otherwise."""
    specs = split_specs(spec)
    if len(specs) > 1:
        return "cosine", 0.5
    kind, path = parse_spec(spec)
    if kind == "ckpt":
        from maskgen.training.checkpoint import load_checkpoint

        config = load_checkpoint(path)["config"]
        if config.get("method") == "bfm":
            return "bfm", float((config.get("method_options") or {}).get("route_threshold", 0.5))
    elif kind == "onnx":
        import onnx

        meta = {p.key: p.value for p in onnx.load(path, load_external_data=False).metadata_props}
        if meta.get("maskgen.protocol") == "bfm":
            return "bfm", float(meta.get("maskgen.route_threshold", 0.5))
    return "cosine", 0.5
