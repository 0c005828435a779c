"""Verification metrics: LFW-style 10-fold accuracy, ROC, TAR at fixed FAR.

Everything works on *similarity* scores (higher = more alike). L2 distances are passed as
negative distances so one code path serves both metrics. Implemented with numpy only, so the
numbers do not depend on scikit-learn's version.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

DEFAULT_FARS: tuple[float, ...] = (1e-1, 1e-2, 1e-3, 1e-4)


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)


def cosine_scores(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two (N, D) arrays."""
    return np.sum(l2_normalize(a) * l2_normalize(b), axis=1)


def l2_scores(a: np.ndarray, b: np.ndarray, normalize: bool = True) -> np.ndarray:
    """Negative row-wise Euclidean distance (higher = more alike).

    With ``normalize`` the embeddings are L2-normalised first, as in insightface's LFW protocol;
    dlib's descriptor is compared un-normalised (its 0.6 threshold is on raw distances).
    """
    if normalize:
        a, b = l2_normalize(a), l2_normalize(b)
    return -np.linalg.norm(np.asarray(a, np.float64) - np.asarray(b, np.float64), axis=1)


def _validate(scores: np.ndarray, issame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(issame, dtype=bool).ravel()
    if s.shape != y.shape:
        raise ValueError(f"scores ({s.shape}) and labels ({y.shape}) differ in length")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores contain NaN or inf")
    return s, y


def candidate_thresholds(scores: np.ndarray) -> np.ndarray:
    """Midpoints between consecutive distinct scores plus both ends: every distinct decision."""
    u = np.unique(scores)
    if u.size == 0:
        return np.array([0.0])
    mids = (u[:-1] + u[1:]) / 2.0
    return np.concatenate([[u[0] - 1.0], mids, [u[-1] + 1.0]])


def accuracy_at(scores: np.ndarray, issame: np.ndarray, threshold: float) -> float:
    """Fraction of pairs decided right when 'same' means score > threshold."""
    s, y = _validate(scores, issame)
    if s.size == 0:
        return float("nan")
    return float(np.mean((s > threshold) == y))


def best_threshold(scores: np.ndarray, issame: np.ndarray) -> tuple[float, float]:
    """The threshold of highest accuracy on these pairs (ties: the middle one of the best run).

    Exact over all distinct decisions in O(n log n): sort once, count correct decisions for a
    threshold placed after every distinct score.
    """
    s, y = _validate(scores, issame)
    thr = candidate_thresholds(s)
    order = np.argsort(s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    # number of pairs with score <= t for each candidate t
    n_le = np.searchsorted(s_sorted, thr, side="right")
    neg_cum = np.concatenate([[0], np.cumsum(~y_sorted)])
    pos_total = int(y.sum())
    pos_cum = np.concatenate([[0], np.cumsum(y_sorted)])
    correct = neg_cum[n_le] + (pos_total - pos_cum[n_le])
    best = np.flatnonzero(correct == correct.max())
    i = int(best[len(best) // 2])
    return float(thr[i]), float(correct[i] / max(s.size, 1))


@dataclass
class KFoldResult:
    """Per-fold accuracy and the threshold each fold was tested at (chosen on the others)."""

    accuracies: list[float]
    thresholds: list[float]
    mean: float = field(init=False)
    std: float = field(init=False)

    def __post_init__(self) -> None:
        self.mean = float(np.mean(self.accuracies)) if self.accuracies else float("nan")
        self.std = float(np.std(self.accuracies)) if self.accuracies else float("nan")

    def to_dict(self) -> dict:
        return {"mean": self.mean, "std": self.std, "fold_accuracies": self.accuracies,
                "thresholds": self.thresholds}


def kfold_accuracy(scores: np.ndarray, issame: np.ndarray, folds: np.ndarray | None = None,
                   n_folds: int = 10) -> KFoldResult:
    """LFW View 2 accuracy: each fold is tested at the threshold that is best on the other folds.

    ``folds`` gives the fold index of every pair (LFW's pairs.txt order); without it the pairs
    are cut into ``n_folds`` contiguous folds, as insightface does for its ``.bin`` sets.
    """
    s, y = _validate(scores, issame)
    if folds is None:
        folds = np.repeat(np.arange(n_folds), int(np.ceil(s.size / n_folds)))[: s.size]
    folds = np.asarray(folds).ravel()
    if folds.shape != s.shape:
        raise ValueError("folds must give one fold index per pair")
    accs, thrs = [], []
    for f in np.unique(folds):
        test = folds == f
        train = ~test
        if not train.any():  # a single fold: threshold chosen on itself
            train = test
        t, _ = best_threshold(s[train], y[train])
        accs.append(accuracy_at(s[test], y[test], t))
        thrs.append(t)
    return KFoldResult(accs, thrs)


def predictions_kfold(scores: np.ndarray, issame: np.ndarray, folds: np.ndarray,
                      thresholds: list[float]) -> np.ndarray:
    """Per-pair decisions of a k-fold run (used for per-group accuracy)."""
    s, _ = _validate(scores, issame)
    folds = np.asarray(folds)
    pred = np.zeros(s.shape, dtype=bool)
    for f, t in zip(np.unique(folds), thresholds):
        m = folds == f
        pred[m] = s[m] > t
    return pred


def roc_curve(scores: np.ndarray, issame: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(FAR, TAR, threshold) at every distinct score, FAR increasing; 'same' is score >= t."""
    s, y = _validate(scores, issame)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    last_of_run = np.r_[np.flatnonzero(np.diff(s_sorted) != 0), s_sorted.size - 1]
    tp = np.cumsum(y_sorted)[last_of_run]
    fp = np.cumsum(~y_sorted)[last_of_run]
    tar = np.r_[0.0, tp / max(n_pos, 1)]
    far = np.r_[0.0, fp / max(n_neg, 1)]
    thr = np.r_[np.inf, s_sorted[last_of_run]]
    return far, tar, thr


def auc(far: np.ndarray, tar: np.ndarray) -> float:
    return float(np.trapezoid(tar, far)) if hasattr(np, "trapezoid") else float(np.trapz(tar, far))


def tar_at_far(scores: np.ndarray, issame: np.ndarray,
               fars: tuple[float, ...] = DEFAULT_FARS) -> dict[str, dict[str, float | None]]:
    """TAR at each target FAR: the threshold is the strictest one whose FAR does not exceed it.

    As in the ICCV 2021 masked face recognition challenge, the threshold is taken from the
    impostor scores directly. A FAR below ``1 / n_impostors`` cannot be measured and is reported
    as ``None`` instead of an extrapolated number.
    """
    s, y = _validate(scores, issame)
    neg = np.sort(s[~y])[::-1]
    pos = s[y]
    out: dict[str, dict[str, float | None]] = {}
    for far in fars:
        key = f"{far:.0e}"
        k = int(np.floor(far * neg.size))  # impostors allowed above the threshold
        if neg.size == 0 or pos.size == 0 or k < 1:
            out[key] = {"tar": None, "threshold": None, "far": None}
            continue
        # accept strictly above the (k+1)-th highest impostor score: at most k impostors pass
        thr = float(neg[k]) if k < neg.size else float(neg[-1]) - 1.0
        real_far = float(np.mean(neg > thr))
        out[key] = {"tar": float(np.mean(pos > thr)), "threshold": thr, "far": real_far}
    return out
