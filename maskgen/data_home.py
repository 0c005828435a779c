"""Where maskgen looks for datasets and caches.

`MASKGEN_DATA_HOME` points at a folder holding datasets by name (``lfw/``, ``fairface-val/``,
``masktheface-masks/``); the default is ``~/.cache/maskgen``. A source that downloads its data
(LFW) writes into this folder, so a pre-populated copy is found by exactly the same code path.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "MASKGEN_DATA_HOME"


def data_home(override: str | os.PathLike | None = None) -> Path:
    """The data folder: ``override``, else ``$MASKGEN_DATA_HOME``, else ``~/.cache/maskgen``."""
    if override is not None:
        return Path(override).expanduser().absolute()
    env = os.environ.get(ENV_VAR)
    if env:
        # Absolute: Ray workers and other processes may run in another directory.
        return Path(env).expanduser().absolute()
    return Path.home() / ".cache" / "maskgen"


def dataset_dir(name: str, override: str | os.PathLike | None = None) -> Path:
    """The folder of dataset ``name`` inside the data home (it may not exist yet)."""
    return data_home(override) / name


MODELS_ENV_VAR = "MASKGEN_MODEL_DIR"


def models_home() -> Path:
    """Where maskgen keeps model files it builds locally: ``$MASKGEN_MODEL_DIR``, else
    ``~/.cache/maskgen/models`` (kept apart from the data home, which may be read-only)."""
    env = os.environ.get(MODELS_ENV_VAR)
    if env:
        return Path(env).expanduser().absolute()
    return Path.home() / ".cache" / "maskgen" / "models"
