"""Verification and identification protocols for masked and unmasked faces.

``evaluate`` runs a model (dlib's descriptor, an ONNX face model, a ``maskgen train`` checkpoint)
on LFW-format pairs or an insightface ``.bin``, in Cases 1/2/3 (unmasked-unmasked,
masked-unmasked, masked-masked), and writes ``results.json``, ``results.md`` and ROC plots.
"""

from __future__ import annotations

from maskgen.eval.binfile import read_bin, write_bin
from maskgen.eval.identification import knn_accuracy, rank_k_accuracy, split_gallery_probes
from maskgen.eval.mask_usage import evaluate_mask_classifier, mask_usage_accuracy
from maskgen.eval.metrics import (best_threshold, kfold_accuracy, roc_curve, tar_at_far)
from maskgen.eval.pairs import PairSet, read_pairs, write_pairs

__all__ = [
    "PairSet", "best_threshold", "evaluate", "evaluate_mask_classifier", "kfold_accuracy",
    "knn_accuracy", "load_embedder", "make_bin", "mask_usage_accuracy", "rank_k_accuracy",
    "read_bin", "read_pairs", "roc_curve", "split_gallery_probes", "tar_at_far", "write_bin",
    "write_pairs",
]


def __getattr__(name: str):  # heavy parts (dlib, masks, Ray) load on first use
    if name == "evaluate":
        from maskgen.eval.api import evaluate

        return evaluate
    if name == "make_bin":
        from maskgen.eval.makebin import make_bin

        return make_bin
    if name == "load_embedder":
        from maskgen.eval.embedders import load_embedder

        return load_embedder
    raise AttributeError(name)
