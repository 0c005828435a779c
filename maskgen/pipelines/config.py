"""One configuration for a build: keyword arguments = CLI flags = YAML keys, from one schema.

:data:`BUILD` (a :class:`maskgen.options.Schema`) declares every build option once. The click
options of ``maskgen build``, the keyword arguments of :func:`maskgen.pipelines.build` and the
keys of a ``--config`` YAML all come from it and are checked by the same code before any work
starts (a bad ratio fails before Ray starts). Arguments given explicitly always beat the YAML.
The resolved config is written back to ``<out>/build.yaml`` so every output says exactly how it
was made, and reloads with ``maskgen build -c <out>/build.yaml``.

Old spellings still work, with one deprecation warning each: ``--jpeg-quality`` /
``jpeg_quality`` (now ``--quality``), ``--mask-types`` / ``mask_types`` (``--mask-type``),
``--detector`` / ``detector`` (``--backend``), ``--progress`` / ``progress`` (``--quiet``, the
opposite), ``--output`` / ``output`` (``--image-mode``: ``--output`` names the output folder
everywhere else).
"""

from __future__ import annotations

import inspect
import os

from maskgen.masks.options import BACKEND, MASK_TYPES
from maskgen.options import (
    CONFIG,
    OUT,
    QUALITY,
    QUIET,
    REQUIRED,
    SEED,
    WORKERS,
    Alias,
    Config,
    Field,
    Schema,
    existing,
)

MODES = ("resume", "overwrite")
IMAGE_MODES = ("aligned", "original")
ATTRIBUTES = ("auto", "all", "sample", "none")

# The resolved options of one build (read-only, attribute access: ``cfg.ratio``).
BuildConfig = Config


def _shard_name(value: str) -> str | None:
    return "may not contain dots or slashes" if "." in value or "/" in value else None


def _image_range(cfg: Config) -> str | None:
    if cfg.max_images is not None and cfg.max_images < cfg.min_images:
        return f"need min_images <= max_images, got {cfg.min_images} > {cfg.max_images}"
    return None


BUILD = Schema("build", [
    Field("source", str, REQUIRED,
          "lfw | folder:DIR | DIR | recordio:train.rec | wds:'shards/*.tar' (or a brace pattern).", argument=True),
    OUT.with_(help="Output folder (shards/, manifest.parquet, dataset.json, build.yaml)."),
    CONFIG.with_(help="YAML file of build options (keys = option names, e.g. <out>/build.yaml), or the name "
                      "of a shipped config (build_lfw); options given on the command line override it."),
    # mask plan
    Field("ratio", float, 0.1, "Fraction of output samples whose training image is masked (exact).", min=0, max=1),
    Field("twins", bool, False, "Also store <key>.orig.jpg and <key>.masked.jpg for every sample."),
    SEED,
    Field("mask_mix", str | dict | None, None,
          "Recipe name (default, palette, mtarcface, surgical) or YAML file of the mask mix."),
    MASK_TYPES.with_(aliases=(Alias(flags=("--mask-types",), key="mask_types"),)),
    Field("wear", list[str] | None, None, "Restrict the mix's wear modes."),
    Field("texture_prob", float | None, None, "Share of textured masks (rest: plain colours).", min=0, max=1),
    Field("min_fit", float | None, None,
          "Reject masked renders whose fit score is below this (reason: fit score below threshold).", min=0, max=1),
    # identity and image filters
    Field("min_images", int, 1, "Drop identities with fewer usable images.", min=1),
    Field("max_images", int | None, None, "Keep at most this many images per identity (seeded choice).", min=1),
    Field("max_identities", int | None, None, "Keep the first N identities in sorted order.", min=1),
    Field("min_masked", int, 0, "Drop identities that would get fewer masked images.", min=0),
    Field("include", list[str] | None, None, "Identity names or files of names to keep."),
    Field("exclude", list[str] | None, None, "Identity names or files of names to drop."),
    Field("exclude_eval", list[str] | None, None,
          "Drop evaluation identities: lfw, lfw-pairs, lfw-people, lfw-devtest or a pairs file."),
    Field("dedup", bool, False, "Drop near-duplicate images within an identity (pHash)."),
    Field("dedup_threshold", int, 4, "Max pHash bit distance of a duplicate.", min=0, max=64),
    Field("identity_depth", int, 1, "Folder levels naming the identity (0: one identity per image).", min=0),
    Field("labels", str | None, None, "CSV of demographic labels (identity or file column).",
          validator=existing("file")),
    Field("stratify", list[str] | None, None, "Label columns to spread the ratio over (default: all label columns)."),
    Field("cap_per_group", int | None, None,
          "Rebalance: keep at most N images per group of the --stratify columns (seeded).", min=1),
    # output
    Field("image_mode", str, "aligned",
          "aligned: 5-point ArcFace crops of --image-size; original: the source frame.", choices=IMAGE_MODES,
          aliases=(Alias(flags=("--output",), key="output"),)),
    Field("image_size", int, 112, "Side of the aligned crops in pixels.", min=16),
    QUALITY.with_(aliases=(Alias(flags=("--jpeg-quality",), key="jpeg_quality"),)),
    Field("samples_per_shard", int, 1000, "Samples per shard.", min=1),
    Field("shard_bytes", int | None, None,
          "Target shard size in bytes (overrides --samples-per-shard, estimated from 32 samples).", min=1024),
    Field("name", str, "train", "Shard name prefix: shards/<name>-000000.tar.", validator=_shard_name),
    Field("shuffle", bool, True, "Seeded shuffle of samples across shards."),
    Field("attributes", str, "auto",
          "Per-image skin tone / quality: all, a seeded 10% sample, none; auto: all where pixels are decoded "
          "anyway, a sample where bytes pass through.", choices=ATTRIBUTES),
    Field("record_root", bool, False, "Write the source's root folder (a path of this machine) into dataset.json."),
    # execution
    WORKERS.with_(help="Parallel tasks (default: all CPUs of the Ray instance)."),
    Field("ray_address", str | None, None,
          "Run on a Ray cluster: 'auto' or HOST:PORT (default: always a new local Ray)."),
    Field("mode", str, "resume", "resume: complete the missing shards; overwrite: start again.", choices=MODES),
    BACKEND.with_(aliases=(Alias(flags=("--detector",), key="detector"),)),
    Field("landmarks_from", str | None, None, "Reuse landmarks of a previous build folder or landmarks.parquet.",
          validator=existing("any")),
    Field("chunk_size", int, 256, "Images per landmark task.", min=1),
    QUIET.with_(help="No progress lines on stderr, neither maskgen's nor Ray's (always in <out>/build.log).",
                aliases=(Alias(flags=("--progress",), key="progress", invert=True),)),
    Field("report", bool, True, "Write the balance report and DATA_CARD.md (maskgen.audit)."),
], checks=[_image_range])


def write_yaml(cfg: Config, path: str | os.PathLike) -> None:
    """The resolved config, reloadable with ``maskgen build --config`` (new key names only)."""
    from pathlib import Path

    from maskgen.outputs import replacing

    with replacing(path) as tmp:
        Path(tmp).write_text(BUILD.dump(cfg), encoding="utf-8")


def signature() -> inspect.Signature:
    """``build(source, out, *, ratio: 'float' = 0.1, ...)``: the schema's fields as keyword
    arguments, annotations as text (as ``help(build)`` shows them)."""
    sig = BUILD.signature(("source", "out"))
    params = [p.replace(annotation=p.annotation.__name__ if isinstance(p.annotation, type) else str(p.annotation))
              for p in sig.parameters.values()]
    return sig.replace(parameters=params, return_annotation="BuildResult")
