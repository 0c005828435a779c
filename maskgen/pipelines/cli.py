"""``maskgen build``: the click front of :func:`maskgen.pipelines.build.build`.

Every flag is a keyword argument of ``build`` and a key of ``--config`` YAML; only flags given
on the command line override the YAML.
"""

from __future__ import annotations

import click

from maskgen.pipelines.config import FIELD_NAMES


def _csv(ctx, param, value):
    if value is None or value == ():
        return None
    items: list[str] = []
    for v in value if isinstance(value, tuple) else (value,):
        items.extend(s for s in str(v).split(",") if s)
    return items


@click.command(context_settings={"show_default": True, "help_option_names": ["-h", "--help"]})
@click.argument("source", required=False)
@click.option("-o", "--out", type=click.Path(file_okay=False), help="Output folder (shards/, manifest.parquet, dataset.json, build.yaml).")
@click.option("-c", "--config", type=click.Path(exists=True, dir_okay=False), help="YAML file of build options (same keys as the flags).")
@click.option("--ratio", type=click.FloatRange(0, 1), default=0.1, help="Fraction of output samples whose training image is masked (exact).")
@click.option("--twins/--no-twins", default=False, help="Also store <key>.orig.jpg and <key>.masked.jpg for every sample.")
@click.option("--seed", type=int, default=0)
@click.option("--mask-mix", help="Recipe name (default, mtarcface, surgical) or YAML file of the mask mix.")
@click.option("--mask-types", callback=_csv, multiple=True, help="Restrict mask types (comma-separated).")
@click.option("--wear", callback=_csv, multiple=True, help="Restrict wear modes (comma-separated).")
@click.option("--texture-prob", type=click.FloatRange(0, 1), help="Share of textured masks (rest: plain colours).")
@click.option("--min-images", type=click.IntRange(1), default=1, help="Drop identities with fewer usable images.")
@click.option("--max-images", type=click.IntRange(1), help="Keep at most this many images per identity (seeded choice).")
@click.option("--max-identities", type=click.IntRange(1), help="Keep the first N identities in sorted order.")
@click.option("--min-masked", type=click.IntRange(0), default=0, help="Drop identities that would get fewer masked images.")
@click.option("--include", callback=_csv, multiple=True, help="Identity names or files of names to keep.")
@click.option("--exclude", callback=_csv, multiple=True, help="Identity names or files of names to drop.")
@click.option("--exclude-eval", callback=_csv, multiple=True, help="Drop evaluation identities: lfw, lfw-pairs, lfw-people, lfw-devtest or a pairs file.")
@click.option("--dedup/--no-dedup", default=False, help="Drop near-duplicate images within an identity (pHash).")
@click.option("--dedup-threshold", type=click.IntRange(0, 64), default=4, help="Max pHash bit distance of a duplicate.")
@click.option("--identity-depth", type=click.IntRange(0), default=1, help="Folder levels naming the identity (0: one identity per image).")
@click.option("--labels", type=click.Path(exists=True, dir_okay=False), help="CSV of demographic labels (identity or file column).")
@click.option("--stratify", callback=_csv, multiple=True, help="Label columns to spread the ratio over (default: all label columns).")
@click.option("--cap-per-group", type=click.IntRange(1), help="Rebalance: keep at most N images per group of the --stratify columns (seeded).")
@click.option("--output", type=click.Choice(["aligned", "original"]), default="aligned")
@click.option("--image-size", type=click.IntRange(16), default=112)
@click.option("--jpeg-quality", type=click.IntRange(1, 100), default=95)
@click.option("--samples-per-shard", type=click.IntRange(1), default=1000)
@click.option("--shard-bytes", type=click.IntRange(1024), help="Target shard size in bytes (overrides --samples-per-shard, estimated from 32 samples).")
@click.option("--name", default="train", help="Shard name prefix: shards/<name>-000000.tar.")
@click.option("--shuffle/--no-shuffle", default=True, help="Seeded shuffle of samples across shards.")
@click.option("--workers", type=click.IntRange(1), help="Parallel tasks (default: all CPUs of the Ray instance).")
@click.option("--ray-address", help="Join an existing Ray cluster instead of starting a local one.")
@click.option("--mode", type=click.Choice(["resume", "overwrite"]), default="resume")
@click.option("--detector", type=click.Choice(["auto", "dlib", "aligned", "aligned-full", "fan"]), default="auto", help="Landmark backend.")
@click.option("--landmarks-from", type=click.Path(exists=True), help="Reuse landmarks of a previous build folder or landmarks.parquet.")
@click.option("--chunk-size", type=click.IntRange(1), default=256, help="Images per landmark task.")
@click.option("--progress/--quiet", default=True, help="Progress lines on stderr (always in <out>/build.log).")
@click.option("--report/--no-report", default=True, help="Write the balance report and DATA_CARD.md (maskgen.audit).")
@click.pass_context
def build(ctx: click.Context, **kwargs) -> None:
    """Build WebDataset shards with an exact mask ratio from SOURCE.

    SOURCE: lfw | folder:DIR | DIR | recordio:train.rec | wds:'shards/*.tar' (or a brace pattern).
    """
    from click.core import ParameterSource

    from maskgen.pipelines.config import resolve
    from maskgen.pipelines.build import run_build

    config = kwargs.pop("config")
    given = {
        k: v
        for k, v in kwargs.items()
        if k in FIELD_NAMES and (ctx.get_parameter_source(k) != ParameterSource.DEFAULT or config is None)
    }
    given = {k: v for k, v in given.items() if not (v is None and config is not None)}
    try:
        cfg = resolve(config, given)
    except (ValueError, FileNotFoundError) as exc:
        raise click.UsageError(str(exc)) from exc
    from maskgen.errors import MaskgenError

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
