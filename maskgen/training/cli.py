"""``maskgen train`` and ``maskgen export``.

Every key of the training config is also a flag (``batch_size`` -> ``--batch-size``); a flag
given on the command line overrides the YAML file; nested options use ``--set key.sub=value``.
Run on several GPUs with ``torchrun --nproc_per_node N -m maskgen train ...``.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import click

from maskgen.training.config import DEFAULTS, parse_value, resolve_config

# keys whose default is None, and keys with list values: their flag types
_TYPES: dict[str, Any] = {
    "dataset_json": str, "num_classes": int, "samples_per_epoch": int, "train_mask_ratio": float,
    "init_from": str, "warmup_steps": int, "cycle_steps": int, "max_steps": int, "stop_after": int,
    "ema": float, "threads": int, "name": str, "resume": str, "channels_last": str,
}
_MULTIPLE = {"shards", "freeze", "milestones", "betas"}
_NESTED = {"model_options", "method_options", "augment"}  # set with --set


def _key_help() -> dict[str, str]:
    """The comment of each key in ``config.DEFAULTS``: one description for YAML and flags."""
    import inspect
    import re

    from maskgen.training import config

    return {m[1]: m[2].strip() for m in re.finditer(r'^\s+"(\w+)": [^#\n]*#\s*(.+)$', inspect.getsource(config), re.M)}


def _options(func):
    helps = _key_help()
    for key in reversed(list(DEFAULTS)):
        if key in _NESTED:
            continue
        flag = "--" + key.replace("_", "-")
        default = DEFAULTS[key]
        if key in _MULTIPLE:
            func = click.option(flag, key, multiple=True, help=f"{helps.get(key, key)} (repeatable)")(func)
        elif isinstance(default, bool):
            func = click.option(f"{flag}/--no-{key.replace('_', '-')}", key, default=None,
                                help=f"{helps.get(key, key)} [default: {default}]")(func)
        else:
            typ = _TYPES.get(key) or type(default)
            func = click.option(flag, key, type=typ, default=None, help=f"{helps.get(key, key)} [default: {default}]")(func)
    return func


@click.command()
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="YAML training config; flags override its values")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="override any key, nested ones too: --set method_options.s=32")
@click.option("--print-config", is_flag=True, help="print the resolved config and exit")
@_options
def train(config_path: str | None, sets: tuple[str, ...], print_config: bool, **flags: Any) -> None:
    """Train a face recognition model on WebDataset shards of `maskgen build`."""
    import yaml

    overrides: dict[str, Any] = {}
    for key, value in flags.items():
        if value is None or (key in _MULTIPLE and not value):
            continue
        if key == "shards":
            value = list(value) if len(value) > 1 else value[0]
        elif key in ("milestones", "betas"):
            value = [float(v) for v in value]
        elif key == "freeze":
            value = list(value)
        elif key == "channels_last" and value != "auto":
            value = parse_value(value)
        overrides[key] = value
    for item in sets:
        if "=" not in item:
            raise click.BadParameter(f"{item!r}: expected KEY=VALUE", param_hint="--set")
        key, value = item.split("=", 1)
        overrides[key.strip()] = parse_value(value)
    try:
        resolved = resolve_config(config_path, **overrides)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    if print_config:
        click.echo(yaml.safe_dump(resolved, sort_keys=False))
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    from maskgen.training.trainer import train as run_training

    result = run_training(resolved)
    if os.environ.get("RANK", "0") != "0":  # under torchrun only rank 0 reports
        return
    click.echo(f"done: step {result.step}, run folder {result.run_dir}, checkpoint {result.checkpoint}")
    if result.skipped:
        click.echo(f"skipped: {result.skipped}")


@click.command()
@click.argument("checkpoint", type=click.Path(exists=True))
@click.argument("output", type=click.Path(dir_okay=False))
@click.option("--input-size", type=int, default=None, help="input side (default: the run's image_size)")
@click.option("--opset", type=int, default=17, show_default=True)
@click.option("--ema/--no-ema", default=True, show_default=True, help="use the EMA weights when the run kept them")
@click.option("--check/--no-check", default=True, show_default=True,
              help="compare ONNX Runtime with torch on random inputs (needs onnxruntime)")
def export(checkpoint: str, output: str, input_size: int | None, opset: int, ema: bool, check: bool) -> None:
    """Export the embedding model of CHECKPOINT (file or run folder) to ONNX (fp32, dynamic batch)."""
    import torch

    from maskgen.training.checkpoint import load_embedder
    from maskgen.training.export import export_onnx, onnx_cosine

    embedder, config = load_embedder(checkpoint, use_ema=ema)
    size = input_size or int(config.get("image_size") or 112)
    path = export_onnx(embedder, output, opset=opset, input_size=size)
    click.echo(f"wrote {path} ({config['model']}, {config['method']}, input {size}x{size})")
    if check:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            click.echo("onnxruntime is not installed: check skipped")
            return
        x = torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(0)).clamp(-1, 1)
        cos = onnx_cosine(path, embedder, x)
        click.echo(f"ONNX Runtime vs torch cosine: min {cos.min():.6f}")
        if cos.min() < 0.999:
            raise click.ClickException("ONNX output differs from torch (cosine < 0.999)")
