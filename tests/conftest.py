"""Shared fixtures: real data from the shared data folder when present, skipped cleanly when not."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _find_data_home() -> Path | None:
    env = os.environ.get("MASKGEN_DATA_HOME")
    candidates = [Path(env).expanduser()] if env else []
    candidates.append(ROOT.parent / "shared" / "data")
    for c in candidates:
        if c.is_dir():
            return c.resolve()
    return None


DATA_HOME = _find_data_home()
if DATA_HOME is not None:
    # Absolute, so that tests which change directory or start workers see the same folder.
    os.environ["MASKGEN_DATA_HOME"] = str(DATA_HOME)


def pytest_xdist_auto_num_workers(config) -> int:
    """``-n auto``: one test process per CPU, at most 4 (many tests start a Ray build of their
    own with two workers: more processes would only queue on the CPUs and add memory)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(1, min(4, cpus))


@pytest.fixture(scope="session")
def data_home() -> Path:
    if DATA_HOME is None:
        pytest.skip("shared data folder not present (set MASKGEN_DATA_HOME)")
    return DATA_HOME


@pytest.fixture(scope="session")
def lfw_dir(data_home: Path) -> Path:
    d = data_home / "lfw"
    if not (d / "pairs.txt").is_file():
        pytest.skip("LFW not present in the data home")
    return d


@pytest.fixture(scope="session")
def fairface_dir(data_home: Path) -> Path:
    d = data_home / "fairface-val"
    if not (d / "fairface_label_val.csv").is_file():
        pytest.skip("FairFace validation crops not present in the data home")
    return d


@pytest.fixture(scope="session")
def masktheface_dir(data_home: Path) -> Path:
    d = data_home / "masktheface-masks"
    if not (d / "masks.cfg").is_file():
        pytest.skip("MaskTheFace template pack not present in the data home")
    return d


@pytest.fixture(scope="session")
def astronaut() -> np.ndarray:
    """A real public-domain face (RGB uint8), available wherever scikit-image is installed."""
    skdata = pytest.importorskip("skimage.data")
    return np.ascontiguousarray(skdata.astronaut())



@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module's tests (``pytestmark = pytest.mark.usefixtures(...)``): on
    a busy 2-core machine two OpenMP threads spin and run slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
