"""Mask-usage classification accuracy: does the model know when a face wears a mask?

Works from any callable that returns mask probabilities, so the head of a Multi-Task ArcFace
model, an ONNX model's second output, or a separate classifier are measured the same way.
"""

from __future__ import annotations

from typing import Callable

import numpy as np


def mask_usage_accuracy(probs: np.ndarray, is_masked: np.ndarray, threshold: float = 0.5) -> dict:
    """Accuracy at ``threshold``, plus the rate on masked and unmasked faces separately."""
    p = np.asarray(probs, dtype=np.float64).ravel()
    y = np.asarray(is_masked, dtype=bool).ravel()
    if p.shape != y.shape:
        raise ValueError("one probability per label expected")
    if p.size == 0:
        return {"accuracy": None, "n": 0}
    pred = p >= threshold
    return {
        "accuracy": float(np.mean(pred == y)),
        "masked_recall": float(np.mean(pred[y])) if y.any() else None,
        "unmasked_specificity": float(np.mean(~pred[~y])) if (~y).any() else None,
        "n": int(p.size), "n_masked": int(y.sum()), "threshold": threshold,
    }


def evaluate_mask_classifier(predict: Callable[[list[np.ndarray]], np.ndarray],
                             images: list[np.ndarray], is_masked: list[bool],
                             batch_size: int = 64, threshold: float = 0.5) -> dict:
    """Run ``predict`` (images -> mask probabilities) in batches and score it."""
    probs = [np.asarray(predict(images[i:i + batch_size]), dtype=np.float64).ravel()
             for i in range(0, len(images), batch_size)]
    p = np.concatenate(probs) if probs else np.zeros(0)
    return mask_usage_accuracy(p, np.asarray(is_masked, bool), threshold)
