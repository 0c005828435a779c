"""Pair lists for verification: LFW's ``pairs.txt`` and a plain ``path path issame [fold]`` list.

Images are named by a key relative to the images folder (LFW: ``Name/Name_0001.jpg``), so the
embedding cache and the results stay valid when the dataset moves.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class PairSet:
    """Two key columns, the ground truth and the fold of each pair."""

    a: list[str]
    b: list[str]
    issame: np.ndarray  # bool (N,)
    folds: np.ndarray  # int (N,)
    source: str = ""

    def __len__(self) -> int:
        return len(self.a)

    def subset(self, idx: np.ndarray | list[int]) -> "PairSet":
        idx = np.asarray(idx, dtype=int)
        return PairSet([self.a[i] for i in idx], [self.b[i] for i in idx], self.issame[idx],
                       self.folds[idx], self.source)

    def keys(self) -> list[str]:
        """Distinct image keys in first-seen order."""
        return list(dict.fromkeys(k for ab in zip(self.a, self.b) for k in ab))


def lfw_key(name: str, number: int | str) -> str:
    return f"{name}/{name}_{int(number):04d}.jpg"


def _is_int(tok: str) -> bool:
    try:
        int(tok)
        return True
    except ValueError:
        return False


def read_pairs(path: str | os.PathLike, max_folds: int | None = None,
               max_pairs: int | None = None) -> PairSet:
    """Read LFW-format pairs (``pairs.txt``, ``pairsDevTest.txt``) or a generic pair list.

    LFW format: a header ``<sets> <pairs-per-class>`` (or ``<pairs-per-class>``), then per set the
    matched lines ``name n1 n2`` and the mismatched lines ``name1 n1 name2 n2``. The fold of a
    pair is its set. Generic format: ``key_a key_b issame [fold]`` per line (whitespace or comma
    separated, ``issame`` in 0/1/true/false); without a fold column pairs are split into 10
    contiguous folds. ``max_folds`` keeps the first folds; ``max_pairs`` the first pairs after that.
    """
    path = Path(path)
    lines = [ln.strip() for ln in path.read_text().splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    if not lines:
        raise ValueError(f"{path}: empty pairs file")
    header = lines[0].replace(",", " ").split()
    a: list[str] = []
    b: list[str] = []
    same: list[bool] = []
    folds: list[int] = []
    if all(_is_int(t) for t in header) and len(header) in (1, 2):
        n_sets, per = (1, int(header[0])) if len(header) == 1 else (int(header[0]), int(header[1]))
        for i, ln in enumerate(lines[1:]):
            t = ln.split()
            if len(t) == 3:
                a.append(lfw_key(t[0], t[1]))
                b.append(lfw_key(t[0], t[2]))
                same.append(True)
            elif len(t) == 4:
                a.append(lfw_key(t[0], t[1]))
                b.append(lfw_key(t[2], t[3]))
                same.append(False)
            else:
                raise ValueError(f"{path}:{i + 2}: expected 3 or 4 fields, got {ln!r}")
            folds.append(min(i // (2 * per), n_sets - 1))
        if len(a) != 2 * per * n_sets:
            raise ValueError(f"{path}: header promises {2 * per * n_sets} pairs, found {len(a)}")
    else:
        start = 0 if _is_bool(lines[0].replace(",", " ").split()[2:3]) else 1  # optional header
        explicit_folds = True
        for i, ln in enumerate(lines[start:]):
            t = ln.replace(",", " ").split()
            if len(t) not in (3, 4) or not _is_bool(t[2:3]):
                raise ValueError(f"{path}:{i + 1 + start}: expected 'a b issame [fold]', got {ln!r}")
            a.append(t[0])
            b.append(t[1])
            same.append(t[2].lower() in ("1", "true", "yes"))
            if len(t) == 4:
                folds.append(int(t[3]))
            else:
                explicit_folds = False
        if not explicit_folds:
            n = len(a)
            folds = list(np.minimum(np.arange(n) * 10 // max(n, 1), 9))
    ps = PairSet(a, b, np.asarray(same, dtype=bool), np.asarray(folds, dtype=int), str(path))
    if max_folds is not None:
        keep = np.flatnonzero(np.isin(ps.folds, np.unique(ps.folds)[:max_folds]))
        ps = ps.subset(keep)
    if max_pairs is not None and max_pairs < len(ps):
        ps = ps.subset(np.arange(max_pairs))
    return ps


def _is_bool(tok: list[str]) -> bool:
    return bool(tok) and tok[0].lower() in ("0", "1", "true", "false", "yes", "no")


def write_pairs(pairs: PairSet, path: str | os.PathLike) -> None:
    """Write the generic ``key_a key_b issame fold`` format (readable by :func:`read_pairs`)."""
    with open(path, "w") as f:
        for a, b, s, k in zip(pairs.a, pairs.b, pairs.issame, pairs.folds):
            f.write(f"{a}\t{b}\t{int(s)}\t{int(k)}\n")


def identity_of(key: str) -> str:
    """The identity of an image key: its parent folder (LFW and folder-by-identity datasets)."""
    parent = Path(key).parent.name
    return parent if parent else Path(key).stem.rsplit("_", 1)[0]
