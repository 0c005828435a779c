"""Build pipelines: ``from maskgen.pipelines import build``."""

from __future__ import annotations

from maskgen.pipelines.build import BuildResult, build, run_build
from maskgen.pipelines.config import BuildConfig

__all__ = ["BuildConfig", "BuildResult", "build", "run_build"]
