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

from maskgen.training import config as C
from maskgen.training.config import KEYS, parse_value, resolve_config

_CLICK_TYPES: dict[str, Any] = {C.INT: int, C.FLOAT: float, C.STR: str}
_MULTIPLE = {C.FLOATS: float, C.STRS: str, C.SHARDS: str}  # repeatable flags


def _help(key: C.Key) -> str:
    return key.help if key.default is None else f"{key.help} [default: {key.default}]"


def _options(func):
    """One click option per scalar or list key of ``config.KEYS`` (mappings use ``--set``)."""
    for key in reversed(KEYS):
        if key.kind == C.MAPPING:
            continue
        dest = key.name
        if key.kind in _MULTIPLE:
            func = click.option(key.flag, dest, multiple=True, type=_MULTIPLE[key.kind],
                                help=f"{key.help} (repeatable)")(func)
        elif key.kind == C.BOOL:
            func = click.option(f"{key.flag}/--no-{key.flag[2:]}", dest, default=None, help=_help(key))(func)
        else:
            typ = click.Choice(key.choices) if key.choices else _CLICK_TYPES.get(key.kind, str)
            func = click.option(key.flag, dest, type=typ, default=None, help=_help(key))(func)
    return func


def _flag_value(kind: str, value: Any) -> Any:
    if kind == C.SHARDS:
        return list(value) if len(value) > 1 else value[0]
    if kind in (C.FLOATS, C.STRS):
        return list(value)
    if kind in (C.AUTO_BOOL, C.COMPILE) and value != "auto":
        return parse_value(value)  # "true"/"false" -> bool; a backend name stays a string
    return value


@click.command()
@click.option("--config", "config_path", metavar="FILE|NAME", default=None,
              help="YAML training config, or the name of one shipped with maskgen (train_tiny_cpu, "
                   "methods/huang_bfm); flags override its values")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="override any key, nested ones too: --set method_options.s=32")
@click.option("--print-config", is_flag=True, help="print the resolved config and exit")
@click.option("--quiet", "-q", is_flag=True, help="no progress lines; errors and warnings still print")
@_options
def train(config_path: str | None, sets: tuple[str, ...], print_config: bool, quiet: bool, **flags: Any) -> None:
    """Train a face recognition model on WebDataset shards of `maskgen build`."""
    import yaml

    kinds = {k.name: k.kind for k in KEYS}
    overrides: dict[str, Any] = {}
    for key, value in flags.items():
        if value is None or (kinds[key] in _MULTIPLE and not value):
            continue
        overrides[key] = _flag_value(kinds[key], value)
    for item in sets:
        if "=" not in item:
            raise C.ConfigError(f"--set {item!r}: expected KEY=VALUE")
        key, value = item.split("=", 1)
        overrides[key.strip()] = parse_value(value)
    resolved = resolve_config(config_path, **overrides)  # ConfigError: one line, before any work
    if print_config:
        click.echo(yaml.safe_dump(resolved, sort_keys=False))
        return
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(asctime)s %(message)s",
                        datefmt="%H:%M:%S")
    from maskgen.training.trainer import train as run_training

    result = run_training(resolved, quiet=quiet)
    if os.environ.get("RANK", "0") != "0":  # under torchrun only rank 0 reports
        return
    click.echo(f"done: step {result.step}, run folder {result.run_dir}, checkpoint {result.checkpoint}")
    if result.skipped:
        click.echo(f"skipped: {result.skipped}")
    for shard, reason in sorted(result.bad_shards.items()):
        click.echo(f"error: shard {shard} could not be read to its end: {reason}")


@click.command()
@click.argument("checkpoint", type=click.Path(exists=True))
@click.argument("output", type=click.Path(dir_okay=False))
@click.option("--input-size", type=int, default=None, help="input side (default: the run's image_size)")
@click.option("--opset", type=int, default=18, show_default=True, help="ONNX opset (the dynamo exporter's is 18)")
@click.option("--ema/--no-ema", default=True, show_default=True, help="use the EMA weights when the run kept them")
@click.option("--check/--no-check", default=True, show_default=True,
              help="compare ONNX Runtime with torch on random inputs (needs onnxruntime)")
def export(checkpoint: str, output: str, input_size: int | None, opset: int, ema: bool, check: bool) -> None:
    """Export the model of CHECKPOINT (file or run folder) to ONNX (fp32, dynamic batch): the
    embedding, plus the mask-usage head as a second output when the method has one."""
    import torch

    from maskgen.errors import OutputError
    from maskgen.training.checkpoint import load_model
    from maskgen.training.export import export_onnx, onnx_check

    embedder, config = load_model(checkpoint, use_ema=ema)
    size = input_size or int(config.get("image_size") or 112)
    path = export_onnx(embedder, output, opset=opset, input_size=size)
    outputs = "embedding + mask_logits" if embedder.has_mask_head else "embedding"
    click.echo(f"wrote {path} ({config['model']}, {config['method']}, input {size}x{size}, outputs {outputs}"
               + (", BFM routing metadata" if embedder.protocol == "bfm" else "") + ")")
    if check:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            click.echo("onnxruntime is not installed: check skipped")
            return
        x = torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(0)).clamp(-1, 1)
        got = onnx_check(path, embedder, x)
        click.echo(f"ONNX Runtime vs torch cosine: min {got['cosine_min']:.6f}"
                   + (f", mask probability max diff {got['mask_prob_max_diff']:.2e}"
                      if "mask_prob_max_diff" in got else ""))
        if got["cosine_min"] < 0.999 or got.get("mask_prob_max_diff", 0.0) > 1e-3:
            raise OutputError(f"{path}: ONNX output differs from torch (cosine < 0.999 or mask head off)")
