"""``maskgen build``: the click front of :func:`maskgen.pipelines.build.build`.

Every flag is a keyword argument of ``build`` and a key of ``--config`` YAML, all generated from
:data:`maskgen.pipelines.config.BUILD`; only flags given on the command line override the YAML
(click's ``ParameterSource``), and a bad value is one ``Error:`` line naming the flag.
"""

from __future__ import annotations

import click

from maskgen.pipelines.config import BUILD, BuildConfig


@BUILD.command("build")
def build(cfg: BuildConfig) -> None:
    """Build WebDataset shards with an exact mask ratio from SOURCE.

    SOURCE: lfw | folder:DIR | DIR | recordio:train.rec | wds:'shards/*.tar' (or a brace pattern).
    """
    from maskgen.errors import MaskgenError
    from maskgen.pipelines.build import run_build

    try:
        res = run_build(cfg, shutdown_ray=True)
    except (ValueError, FileNotFoundError, MaskgenError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(
        f"{res.num_samples} samples, {res.num_classes} classes, {res.num_masked} masked "
        f"(ratio {res.ratio:.4f}), {len(res.shards)} shards -> {res.out}"
    )
    if res.shards_failed:
        raise click.ClickException(f"{res.shards_failed} shard task(s) failed; rerun the same command to complete them")
