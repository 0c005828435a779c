"""One configuration for a build: keyword arguments = CLI flags = YAML keys.

``BuildConfig`` is validated up front (a bad ratio fails before Ray starts) and written back,
resolved, to ``<out>/build.yaml`` so every output says exactly how it was made.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

import yaml

MODES = ("resume", "overwrite")
OUTPUTS = ("aligned", "original")


@dataclass
class BuildConfig:
    source: str | None = None
    out: str | None = None
    # mask plan
    ratio: float = 0.1
    twins: bool = False
    seed: int = 0
    mask_mix: str | dict | None = None  # recipe name, YAML path or mapping (see maskmix.py)
    mask_types: list[str] | None = None  # shortcut: restrict the mix's types
    wear: list[str] | None = None  # shortcut: restrict the mix's wear modes
    texture_prob: float | None = None  # shortcut: share of textured (vs plain colour) masks
    # identity and image filters
    min_images: int = 1
    max_images: int | None = None
    max_identities: int | None = None
    min_masked: int = 0
    include: list[str] | None = None  # names, or files of names
    exclude: list[str] | None = None
    exclude_eval: list[str] | None = None  # lfw, lfw-pairs, lfw-people, lfw-devtest or a file
    dedup: bool = False
    dedup_threshold: int = 4
    identity_depth: int = 1
    labels: str | None = None  # CSV of demographic labels (identity or file column)
    stratify: list[str] | None = None  # label columns to spread the ratio over (default: all)
    cap_per_group: int | None = None  # keep at most N images per group of the stratify columns
    # output
    output: Literal["aligned", "original"] = "aligned"
    image_size: int = 112
    jpeg_quality: int = 95
    samples_per_shard: int = 1000
    shard_bytes: int | None = None  # target shard size; sets samples_per_shard from measured samples
    name: str = "train"
    shuffle: bool = True
    # execution
    workers: int | None = None
    ray_address: str | None = None
    mode: Literal["resume", "overwrite"] = "resume"
    detector: str = "auto"  # landmark backend: auto (aligned for <=128 px crops, else dlib), dlib, aligned, fan
    landmarks_from: str | None = None  # a previous build folder or its landmarks.parquet
    chunk_size: int = 256  # images per landmark task
    progress: bool = True
    report: bool = True  # balance report + DATA_CARD.md through maskgen.audit

    def validate(self) -> BuildConfig:
        if not self.source:
            raise ValueError("source is required (e.g. 'lfw', a folder, recordio:train.rec, wds:shards/*.tar)")
        if not self.out:
            raise ValueError("out is required")
        if not 0.0 <= float(self.ratio) <= 1.0:
            raise ValueError(f"ratio must be within [0, 1], got {self.ratio}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {self.output!r}")
        if not 1 <= int(self.jpeg_quality) <= 100:
            raise ValueError("jpeg_quality must be within [1, 100]")
        if int(self.image_size) < 16:
            raise ValueError("image_size must be at least 16")
        if int(self.samples_per_shard) < 1:
            raise ValueError("samples_per_shard must be positive")
        if self.shard_bytes is not None and int(self.shard_bytes) < 1024:
            raise ValueError("shard_bytes must be at least 1024")
        if self.min_images < 1 or (self.max_images is not None and self.max_images < self.min_images):
            raise ValueError("need 1 <= min_images <= max_images")
        if self.max_identities is not None and self.max_identities < 1:
            raise ValueError("max_identities must be positive")
        if self.cap_per_group is not None and int(self.cap_per_group) < 1:
            raise ValueError("cap_per_group must be positive")
        if self.workers is not None and self.workers < 1:
            raise ValueError("workers must be positive")
        if self.texture_prob is not None and not 0 <= self.texture_prob <= 1:
            raise ValueError("texture_prob must be within [0, 1]")
        if "." in self.name or "/" in self.name:
            raise ValueError("name may not contain dots or slashes")
        self.ratio = float(self.ratio)
        for k in ("include", "exclude", "exclude_eval", "mask_types", "wear", "stratify"):
            v = getattr(self, k)
            if isinstance(v, str):
                setattr(self, k, [s for s in v.split(",") if s])
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FIELD_NAMES = [f.name for f in fields(BuildConfig)]


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    data = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a build config is a mapping of option: value")
    data = {k.replace("-", "_"): v for k, v in data.items()}
    unknown = sorted(set(data) - set(FIELD_NAMES))
    if unknown:
        raise ValueError(f"{path}: unknown build option(s) {unknown}; known: {FIELD_NAMES}")
    return data


def resolve(config: str | os.PathLike | None, explicit: dict[str, Any]) -> BuildConfig:
    """Defaults, overridden by the YAML file, overridden by explicitly given options."""
    values: dict[str, Any] = {}
    if config:
        values.update(load_yaml(config))
    values.update({k: v for k, v in explicit.items()})
    if values.get("out") is not None:
        values["out"] = str(values["out"])
    return BuildConfig(**values).validate()


def write_yaml(cfg: BuildConfig, path: str | os.PathLike) -> None:
    from maskgen.outputs import replacing

    with replacing(path) as tmp:
        Path(tmp).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
