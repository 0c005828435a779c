"""``maskgen audit`` and ``maskgen card``: the flags are the keyword arguments of
:func:`maskgen.audit.api.audit`."""

from __future__ import annotations

from pathlib import Path

import click

from maskgen.audit.stats import FIT_THRESHOLD
from maskgen.errors import MaskgenError
from maskgen.masks.landmarks import backend_option

_DATASET_HELP = ("The known dataset the images come from (exact catalog name, e.g. fairface); "
                 "[default: recognised from the source's name, exactly].")
_LICENSE_HELP = ("Licence the card states (SPDX id such as cc-by-4.0, or 'other') "
                 "[default: the catalog's for a known dataset, else 'unknown'].")


def _run(fn, *args, **kwargs):
    """Call the audit; user errors and failed writes end in one line, not a traceback."""
    try:
        return fn(*args, **kwargs)
    except MaskgenError as exc:
        raise click.ClickException(str(exc)) from exc
    except OSError as exc:
        where = f" {exc.filename}" if getattr(exc, "filename", None) else ""
        raise click.ClickException(f"cannot write or read{where}: {exc.strerror or exc}") from exc


def _print_summary(stats: dict, out: Path | None, licence: str | None = None) -> None:
    comp, masks = stats["composition"], stats["masks"]
    flat = any(n.startswith("flat folder") for n in stats.get("source", {}).get("notes", []))
    ids = "no identity labels" if flat else f"{comp['identities']:,} identities"
    line = (f"{comp['images']:,} images kept of {comp['rows']:,} ({ids}); "
            f"{comp['dropped']:,} dropped, {comp['failed']:,} failed")
    if masks.get("available") and "ratio" in masks:
        line += f"; masked {masks['masked']:,} ({masks['ratio']:.2%})"
    click.echo(line)
    for col, e in stats["attributes"].items():
        b = e["balance"]
        click.echo(f"  {col}: {b['num_groups']} groups, min/max share "
                   f"{b['min_max_share_ratio']}, entropy {b['normalized_entropy']}")
    for w in stats["warnings"]:
        click.echo(f"  warning: {w}")
    if out is not None:
        click.echo(f"report: {out / 'report.html'}  card: {out / 'DATA_CARD.md'}")
    ds = stats.get("source", {}).get("dataset")
    if ds is None and not licence:
        click.echo("licence: unknown (the source is not a dataset maskgen knows); state it "
                   "with --license ID, or name the dataset with --dataset NAME")


@click.command()
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--labels", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="CSV or parquet of labels (e.g. age, gender, race) to join.")
@click.option("--join-on", type=click.Choice(["key", "path", "identity"]), default="key",
              show_default=True,
              help="Match label rows by sample key, by image path (suffix match) or by identity.")
@click.option("--target", default="uniform", show_default=True,
              help="Target shares: 'uniform', or JSON (inline or a file) "
                   "{column: {group: share}}.")
@click.option("-o", "--out", type=click.Path(file_okay=False, path_type=Path),
              help="Output folder [default: the build folder itself, else ./<name>-audit].")
@click.option("--group-by", default=None,
              help="Comma-separated columns to slice by [default: label columns + skin_tone].")
@click.option("--workers", type=int, default=1, show_default=True,
              help="Worker processes that decode images (folder scan, attributes, thumbnails).")
@backend_option()
@click.option("--compute-attributes/--no-compute-attributes", default=True, show_default=True,
              help="Compute skin tone and quality from the images when a manifest lacks them.")
@click.option("--fit-threshold", type=float, default=FIT_THRESHOLD, show_default=True,
              help="Mask fit score below which a masked image counts as a poor fit.")
@click.option("--dataset", default=None, help=_DATASET_HELP)
@click.option("--license", "licence", default=None, help=_LICENSE_HELP)
@click.option("--thumbnails/--no-thumbnails", default=True, show_default=True,
              help="Embed strips of sample images in the report (off: no copy of any source "
                   "image in the outputs).")
@click.option("--quiet", is_flag=True, help="No progress lines.")
def audit(path: Path, labels: Path | None, join_on: str, target: str, out: Path | None,
          group_by: str | None, workers: int, backend: str, compute_attributes: bool,
          fit_threshold: float, dataset: str | None, licence: str | None, thumbnails: bool,
          quiet: bool) -> None:
    """Balance report and dataset card of a build folder, a manifest or an image folder."""
    from maskgen.audit.api import audit as run_audit

    if out is None:
        out = path if (path / "manifest.parquet").is_file() else Path(f"{path.stem}-audit")
    stats = _run(run_audit, path, labels=labels, join_on=join_on, target=target, out=out,
                 group_by=group_by.split(",") if group_by else None, workers=workers,
                 backend=backend, compute_attributes=compute_attributes,
                 fit_threshold=fit_threshold, dataset=dataset, license=licence,
                 thumbnails=thumbnails, progress=not quiet)
    _print_summary(stats, out, licence)


@click.command()
@click.argument("build", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("-o", "--out", type=click.Path(file_okay=False, path_type=Path),
              help="Output folder [default: the build folder].")
@click.option("--target", default="uniform", show_default=True,
              help="Target shares: 'uniform', or JSON (inline or a file).")
@click.option("--reproduce", default=None,
              help="The command that regenerates this build, quoted in the card.")
@click.option("--name", default=None, help="Dataset name in the report [default: folder name].")
@click.option("--dataset", default=None, help=_DATASET_HELP)
@click.option("--license", "licence", default=None, help=_LICENSE_HELP)
@click.option("--thumbnails/--no-thumbnails", default=True, show_default=True,
              help="Embed strips of sample images in the report (off: no copy of any source "
                   "image in the outputs, e.g. for a card committed to a repository).")
def card(build: Path, out: Path | None, target: str, reproduce: str | None,
         name: str | None, dataset: str | None, licence: str | None, thumbnails: bool) -> None:
    """Write DATA_CARD.md, the balance report and stats.json of a build."""
    from maskgen.audit.api import audit as run_audit

    if not (build / "manifest.parquet").is_file():
        raise click.ClickException(f"{build} is not a build folder (no manifest.parquet)")
    out = out or build
    stats = _run(run_audit, build, target=target, out=out, compute_attributes=False,
                 reproduce=reproduce, name=name, dataset=dataset, license=licence,
                 thumbnails=thumbnails)
    _print_summary(stats, out, licence)
