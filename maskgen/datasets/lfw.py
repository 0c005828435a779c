"""LFW: its folder layout, its protocol files, and a download into the data home when absent.

The protocol files name the people a verification benchmark uses; a training build that will
be evaluated on LFW must not contain them, hence the name sets here feed the identity filters.
Formats (LFW README): ``people.txt`` = number of folds, then per fold a count and that many
``name<TAB>n`` lines; ``pairs.txt`` = ``folds<TAB>n`` then lines of ``name i j`` (same person)
or ``name1 i name2 j`` (different people); the Dev variants have a single count line.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
import urllib.request
from pathlib import Path

from maskgen.data_home import dataset_dir
from maskgen.fsio import atomic_open

# The official distribution (UMass Amherst vision lab); MASKGEN_LFW_URL points at a mirror.
LFW_BASE_URL = "https://vis-www.cs.umass.edu/lfw/"


def base_url() -> str:
    url = os.environ.get("MASKGEN_LFW_URL", LFW_BASE_URL)
    return url if url.endswith("/") else url + "/"
LFW_ARCHIVE = "lfw-deepfunneled.tgz"
LFW_TEXT_FILES = [
    "pairs.txt",
    "people.txt",
    "pairsDevTrain.txt",
    "pairsDevTest.txt",
    "peopleDevTrain.txt",
    "peopleDevTest.txt",
    "lfw-names.txt",
]


def read_people(path: str | os.PathLike) -> list[list[tuple[str, int]]]:
    """``people.txt`` (folds) or ``peopleDev*.txt`` (one fold) -> folds of (name, n_images)."""
    lines = [ln.split() for ln in Path(path).read_text().splitlines() if ln.strip()]
    folds: list[list[tuple[str, int]]] = []
    i = 0
    if len(lines) > 1 and len(lines[1]) == 1:  # people.txt: fold count, then per-fold counts
        n_folds = int(lines[0][0])
        i = 1
        for _ in range(n_folds):
            n = int(lines[i][0])
            folds.append([(a, int(b)) for a, b in lines[i + 1 : i + 1 + n]])
            i += 1 + n
    else:
        n = int(lines[0][0])
        folds.append([(a, int(b)) for a, b in lines[1 : 1 + n]])
    return folds


def read_pair_names(path: str | os.PathLike) -> list[tuple[str, int, str, int]]:
    """``pairs*.txt`` -> (name1, image1, name2, image2) records; image numbers are 1-based as in
    LFW (the evaluation's pair set with folds and labels is :func:`maskgen.eval.pairs.read_pairs`)."""
    pairs: list[tuple[str, int, str, int]] = []
    lines = [ln.split() for ln in Path(path).read_text().splitlines() if ln.strip()]
    for parts in lines[1:]:
        if len(parts) == 3:
            pairs.append((parts[0], int(parts[1]), parts[0], int(parts[2])))
        elif len(parts) == 4:
            pairs.append((parts[0], int(parts[1]), parts[2], int(parts[3])))
        else:
            raise ValueError(f"{path}: unexpected pairs line {' '.join(parts)!r}")
    return pairs


def pair_image_path(root: str | os.PathLike, name: str, number: int) -> Path:
    """Path of LFW image ``number`` (1-based) of ``name``."""
    return Path(root) / name / f"{name}_{number:04d}.jpg"


def lfw_names(root: str | os.PathLike) -> set[str]:
    """Every LFW identity: from ``lfw-names.txt`` when present, else the image folders."""
    root = Path(root)
    names_file = root / "lfw-names.txt"
    if names_file.is_file():
        return {ln.split()[0] for ln in names_file.read_text().splitlines() if ln.strip()}
    return {p.name for p in root.iterdir() if p.is_dir()}


def pairs_names(path: str | os.PathLike) -> set[str]:
    return {n for a, _, b, _ in read_pair_names(path) for n in (a, b)}


def people_names(path: str | os.PathLike) -> set[str]:
    return {n for fold in read_people(path) for n, _ in fold}


def is_lfw_dir(root: str | os.PathLike) -> bool:
    root = Path(root)
    return (root / "pairs.txt").is_file() and any(p.is_dir() for p in root.iterdir())


def lfw_dir(data_home: str | os.PathLike | None = None, download: bool = True) -> Path:
    """The LFW folder in the data home, downloading it first when it is absent."""
    from maskgen.datasets.sources.base import SourceNotFound  # an InputError: one line in the CLI

    root = dataset_dir("lfw", data_home)
    if root.is_dir() and (root / "pairs.txt").is_file():
        return root
    if not download:
        raise SourceNotFound(f"LFW not found in {root} (set MASKGEN_DATA_HOME or allow the download)")
    try:
        return download_lfw(root)
    except OSError as exc:  # URLError and socket errors are OSErrors
        raise SourceNotFound(
            f"LFW is not in {root} and downloading it from {base_url()} failed ({exc}); "
            "set MASKGEN_DATA_HOME to a folder holding lfw/, or MASKGEN_LFW_URL to a mirror"
        ) from exc


def _fetch(url: str, dest: Path) -> None:
    with urllib.request.urlopen(url, timeout=60) as r, atomic_open(dest, "wb", fsync=False) as f:
        shutil.copyfileobj(r, f, length=1 << 20)


def download_lfw(root: str | os.PathLike, url: str | None = None) -> Path:
    """Download deep-funneled LFW and its protocol files into ``root`` (``<Name>/<Name>_NNNN.jpg``).

    The archive is unpacked next to ``root`` and renamed into place only when complete, so an
    interrupted download never looks like a dataset.
    """
    root = Path(root)
    url = url or base_url()
    root.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root.parent, prefix=".lfw-download-") as tmpd:
        tmp = Path(tmpd)
        archive = tmp / LFW_ARCHIVE
        _fetch(url + LFW_ARCHIVE, archive)
        staged = tmp / "lfw"
        staged.mkdir()
        with tarfile.open(archive) as tf:
            for m in tf.getmembers():
                parts = Path(m.name).parts
                if not m.isfile() or len(parts) < 2 or ".." in parts:
                    continue
                rel = Path(*parts[1:])  # strip the archive's top folder (lfw-deepfunneled/)
                target = staged / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                with tf.extractfile(m) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst)
        archive.unlink()
        for name in LFW_TEXT_FILES:
            try:
                _fetch(url + name, staged / name)
            except OSError:
                if name in ("pairs.txt", "people.txt"):
                    raise
        if root.exists():
            shutil.rmtree(root)
        os.replace(staged, root)
    return root
