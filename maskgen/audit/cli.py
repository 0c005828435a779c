"""``maskgen audit`` and ``maskgen card``: the flags are the keyword arguments of
:func:`maskgen.audit.api.audit`."""

from __future__ import annotations

from pathlib import Path

import click

from maskgen.audit.stats import FIT_THRESHOLD
from maskgen.errors import MaskgenError
from maskgen.masks.options import BACKEND
from maskgen.options import OUT, QUIET, REQUIRED, WORKERS, Config, Field, Schema, existing

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


_TARGET = Field("target", str, "uniform",
                "Target shares: 'uniform', or JSON (inline or a file) {column: {group: share}}.")
_CARD_FIELDS = [  # what the card states and shows, the same on audit and card
    Field("dataset", str | None, None, _DATASET_HELP),
    Field("license", str | None, None, _LICENSE_HELP, metavar="ID"),
    Field("thumbnails", bool, True,
          "Embed strips of sample images in the report (off: no copy of any source image in the "
          "outputs, e.g. for a card committed to a repository)."),
]

AUDIT = Schema("audit", [
    Field("path", str, REQUIRED, "A build folder, a manifest or an image folder.", argument=True,
          validator=existing("any")),
    Field("labels", str | None, None, "CSV or parquet of labels (e.g. age, gender, race) to join.",
          validator=existing("file"), metavar="FILE"),
    Field("join_on", str, "key", "Match label rows by sample key, by image path (suffix match) or by identity.",
          choices=("key", "path", "identity")),
    _TARGET,
    OUT.with_(default=None, help="Output folder [default: the build folder itself, else ./<name>-audit]."),
    Field("group_by", list[str] | None, None, "Columns to slice by [default: label columns + skin_tone]."),
    WORKERS.with_(default=1, help="Worker processes that decode images (folder scan, attributes, thumbnails)."),
    BACKEND,
    Field("compute_attributes", bool, True, "Compute skin tone and quality from the images when a manifest lacks them."),
    Field("fit_threshold", float, FIT_THRESHOLD, "Mask fit score below which a masked image counts as a poor fit."),
    *_CARD_FIELDS,
    QUIET,
])


@AUDIT.command("audit")
def audit(cfg: Config) -> None:
    """Balance report and dataset card of a build folder, a manifest or an image folder."""
    path, out, licence = Path(cfg.path), None if cfg.out is None else Path(cfg.out), cfg.license
    from maskgen.audit.api import audit as run_audit

    if out is None:
        out = path if (path / "manifest.parquet").is_file() else Path(f"{path.stem}-audit")
    stats = _run(run_audit, path, labels=cfg.labels, join_on=cfg.join_on, target=cfg.target, out=out,
                 group_by=cfg.group_by or None, workers=cfg.workers,
                 backend=cfg.backend, compute_attributes=cfg.compute_attributes,
                 fit_threshold=cfg.fit_threshold, dataset=cfg.dataset, license=licence,
                 thumbnails=cfg.thumbnails, progress=not cfg.quiet)
    _print_summary(stats, out, licence)


CARD = Schema("card", [
    Field("build", str, REQUIRED, "A build folder (with manifest.parquet).", argument=True, validator=existing("dir")),
    OUT.with_(default=None, help="Output folder [default: the build folder]."),
    _TARGET,
    Field("reproduce", str | None, None, "The command that regenerates this build, quoted in the card."),
    Field("name", str | None, None, "Dataset name in the report [default: folder name]."),
    *_CARD_FIELDS,
])


@CARD.command("card")
def card(cfg: Config) -> None:
    """Write DATA_CARD.md, the balance report and stats.json of a build."""
    build, out, licence = Path(cfg.build), None if cfg.out is None else Path(cfg.out), cfg.license
    target, reproduce, name, dataset, thumbnails = cfg.target, cfg.reproduce, cfg.name, cfg.dataset, cfg.thumbnails
    from maskgen.audit.api import audit as run_audit

    if not (build / "manifest.parquet").is_file():
        raise click.ClickException(f"{build} is not a build folder (no manifest.parquet)")
    out = out or build
    stats = _run(run_audit, build, target=target, out=out, compute_attributes=False,
                 reproduce=reproduce, name=name, dataset=dataset, license=licence,
                 thumbnails=thumbnails)
    _print_summary(stats, out, licence)
