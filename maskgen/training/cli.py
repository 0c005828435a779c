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

from maskgen.errors import OptionError
from maskgen.options import OUT, REQUIRED, Config, Field, Schema, existing, parse_assignments
from maskgen.training.config import TRAIN, ConfigError

_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.command("train", context_settings=_SETTINGS)
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Override any key, nested ones too: --set method_options.s=32.")
@click.option("--print-config", is_flag=True, help="Print the resolved config and exit.")
@TRAIN.options()
def train(sets: tuple[str, ...], print_config: bool, **flags: Any) -> None:
    """Train a face recognition model on WebDataset shards of `maskgen build`."""
    import yaml

    ctx = click.get_current_context()
    try:
        extra = parse_assignments(sets, flag="--set")
    except OptionError as exc:
        raise ConfigError(str(exc)) from None
    cfg = TRAIN.click_config(ctx, TRAIN.managed(flags), extra)  # ConfigError: one line, before any work
    resolved = cfg.to_dict()
    if print_config:
        click.echo(yaml.safe_dump(resolved, sort_keys=False))
        return
    # -q: no progress lines on stderr and the trainer's INFO log lines stay out of the console
    logging.basicConfig(level=logging.WARNING if cfg.quiet else logging.INFO, format="%(asctime)s %(message)s",
                        datefmt="%H:%M:%S")
    from maskgen.training.trainer import train as run_training

    result = run_training(resolved, quiet=cfg.quiet)
    if os.environ.get("RANK", "0") != "0":  # under torchrun only rank 0 reports
        return
    click.echo(f"done: step {result.step}, run folder {result.run_dir}, checkpoint {result.checkpoint}")
    if result.skipped:
        click.echo(f"skipped: {result.skipped}")
    for shard, reason in sorted(result.bad_shards.items()):
        click.echo(f"error: shard {shard} could not be read to its end: {reason}")


train.schema = TRAIN  # type: ignore[attr-defined]  # as Schema.command marks its commands


EXPORT = Schema("export", [
    Field("checkpoint", str, REQUIRED, "A checkpoint file or a run folder.", argument=True, validator=existing("any")),
    OUT.with_(default=None, help="The ONNX file to write.", metavar="FILE"),
    Field("input_size", int | None, None, "Input side (default: the run's image_size).", min=16),
    Field("opset", int, 18, "ONNX opset (the dynamo exporter's is 18).", min=1),
    Field("ema", bool, True, "Use the EMA weights when the run kept them."),
    Field("check", bool, True, "Compare ONNX Runtime with torch on random inputs (needs onnxruntime)."),
])


@EXPORT.command("export")
@click.argument("legacy_out", required=False, metavar="[OUTPUT]")
def export(cfg: Config, legacy_out: str | None) -> None:
    """Export the model of CHECKPOINT (file or run folder) to ONNX (fp32, dynamic batch): the
    embedding, plus the mask-usage head as a second output when the method has one."""
    output = _export_target(cfg, legacy_out)
    checkpoint, input_size, opset, ema, check = cfg.checkpoint, cfg.input_size, cfg.opset, cfg.ema, cfg.check
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


def _export_target(cfg: Config, legacy_out: str | None) -> str:
    """``-o/--out``, or the old positional OUTPUT (still read, with a deprecation line)."""
    if legacy_out is None:
        if cfg.out is None:
            raise OptionError("export: -o/--out is required (the ONNX file to write)")
        return cfg.out
    if cfg.out is not None:
        raise OptionError("the positional OUTPUT and -o/--out both given; use -o/--out")
    click.echo("warning: the positional OUTPUT is deprecated, use -o/--out", err=True)
    return legacy_out
