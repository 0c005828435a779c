"""Entry points: ``audit`` (any build, manifest or image folder) and ``write_build_report``.

Both write the same set of files into one folder: ``report.html`` (self-contained),
``report.md`` with its figures under ``report/``, ``stats.json`` and ``DATA_CARD.md`` (in a build
folder also as ``README.md``, for ``datasets.load_dataset(<folder>)`` and the Hub). Files are
written to a temporary name and renamed, and carry no timestamp, so re-running on the same
input rewrites identical bytes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from maskgen.audit.card import CardInput, render_card
from maskgen.audit.figures import all_figures, figure_helper
from maskgen.audit.files import CARD_README, FIGURE_DIR, OUTPUTS, is_card_copy
from maskgen.audit.report import build_blocks, render_html, render_markdown
from maskgen.audit.sources import AuditInput, join_labels, load_input, resolve_dataset
from maskgen.audit.stats import FIT_THRESHOLD, compute_stats, public
from maskgen.audit.table import per_image_tables
from maskgen.audit.thumbnails import make_thumbnails
from maskgen.errors import OptionError, OutputError
from maskgen.outputs import claim

FOLDER_OUTPUTS = ("images.parquet", "images.csv")  # the per-image table of a folder audit


def parse_target(target: str | Mapping | None) -> dict | None:
    """``uniform`` (or None) -> None; a JSON object, or a path to a JSON file, mapping
    column -> {group: share}."""
    if target is None or (isinstance(target, str) and target.strip().lower() == "uniform"):
        return None
    if isinstance(target, Mapping):
        obj = dict(target)
    else:
        text = target
        if not target.lstrip().startswith("{"):
            p = Path(target)
            if not p.is_file():
                raise OptionError(f"--target must be 'uniform', a JSON object or a JSON file: "
                                  f"{target!r}")
            text = p.read_text()
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            raise OptionError(f"--target is not valid JSON: {exc}") from exc
    if not isinstance(obj, dict) or not all(isinstance(v, Mapping) for v in obj.values()):
        raise OptionError("--target must map a column to {group: share}")
    return {k: {g: float(s) for g, s in v.items()} for k, v in obj.items()}


def _write(path: Path, data: bytes | str) -> None:
    """Atomic write under a temp name unique to the run; a failure ends in one line naming the
    file (``OutputError``)."""
    from maskgen.fsio import write_atomic

    try:
        write_atomic(path, data)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from exc


def _mkdir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {path}: {exc.strerror or exc}") from exc


def write_outputs(stats: dict, out_dir: Path, *, title: str, inp: AuditInput | None = None,
                  reproduce: str | None = None, license: str | None = None,
                  thumbnails: dict | None = None, figures: dict[str, bytes] | None = None) -> dict[str, Path]:
    """Render and write the report, figures, stats, card (and a folder's per-image table).
    ``figures``: the charts of ``stats`` when the caller rendered them already."""
    out_dir = Path(out_dir)
    fig_dir = out_dir / FIGURE_DIR
    _mkdir(fig_dir)
    figures = all_figures(stats) if figures is None else figures
    thumbs = dict(thumbnails or {})
    for old in fig_dir.iterdir():  # figures of groups that no longer exist must go
        if old.suffix in (".png", ".jpg") and old.name not in figures and old.name not in thumbs:
            try:
                old.unlink()
            except OSError as exc:
                raise OutputError(f"cannot remove {old}: {exc.strerror or exc}") from exc
    for name, png in {**figures, **thumbs}.items():
        _write(fig_dir / name, png)
    blocks = build_blocks(stats, figures, title, thumbs)
    written = {"figures": fig_dir}
    _write(out_dir / "report.md", render_markdown(blocks, FIGURE_DIR, {**figures, **thumbs}))
    _write(out_dir / "report.html", render_html(blocks, {**figures, **thumbs}, title))
    _write(out_dir / "stats.json",
           json.dumps(public(stats), indent=1, ensure_ascii=False, sort_keys=False) + "\n")
    ci = CardInput(
        stats=public(stats),
        kind=inp.kind if inp else "manifest",
        name=inp.name if inp else "",
        dataset=inp.dataset if inp else None,
        licence_override=license,
        build_config=inp.build_config if inp else None,
        dataset_info=inp.dataset_info if inp else None,
        out_dir=out_dir,
        build_dir=inp.build_dir if inp else None,
        has_shards=bool(inp and inp.has_shards()),
        thumbnails=not stats.get("_thumbnails_off", False),
        flat=bool(inp and inp.flat),
        reproduce=reproduce,
    )
    card = render_card(ci)
    # README.md is the card's copy only where it is absent or still the card written last time:
    # a README.md of the user's own is never replaced
    readme_ours = is_card_copy(out_dir / CARD_README, out_dir / "DATA_CARD.md")
    _write(out_dir / "DATA_CARD.md", card)
    for n in OUTPUTS:
        written[n] = out_dir / n
    if (ci.has_shards and ci.build_dir is not None and Path(ci.build_dir).resolve() == out_dir.resolve()
            and readme_ours):
        # next to its shards, the card is also the folder's README.md: the file the Hub and
        # datasets.load_dataset(<build folder>) read its configs and features from
        _write(out_dir / CARD_README, card)
        written[CARD_README] = out_dir / CARD_README
    if inp is not None and inp.kind == "folder":
        for name, data in per_image_tables(inp.table).items():
            _write(out_dir / name, data)
            written[name] = out_dir / name
    return written


def audit(
    path: str | os.PathLike,
    *,
    labels: str | os.PathLike | None = None,
    join_on: str = "key",
    target: str | Mapping | None = "uniform",
    out: str | os.PathLike | None = None,
    group_by: list[str] | None = None,
    workers: int = 1,
    backend: str = "auto",
    compute_attributes: bool = True,
    fill_failed: bool = True,
    fit_threshold: float = FIT_THRESHOLD,
    reproduce: str | None = None,
    name: str | None = None,
    dataset: str | None = None,
    license: str | None = None,
    thumbnails: bool = True,
    progress: bool = False,
) -> dict:
    """Audit a build folder, a manifest or an image folder; write the report when ``out``.

    ``compute_attributes``: measure skin tone and quality from the images when the manifest
    lacks them; ``fill_failed``: measure failed images (no landmarks) on the image centre so
    failure rates can be sliced by skin tone; ``name``: the dataset's name in the report
    (default: the folder's); ``dataset``: the known dataset the images come from (a catalog
    name, see :mod:`maskgen.datasets.catalog`; default: recognised from the source by exact
    name); ``license``: the licence the card states (default: the catalog's, else unknown);
    ``thumbnails``: embed sample grids in the report (decoded in worker processes);
    ``progress``: print progress lines of long stages. Returns the stats (``stats.json``).
    """
    tgt = parse_target(target)
    # an audit owns its output folder (a build's own folder is accepted: its report lives
    # there); a folder of the user's, or one that cannot be written, is refused before any work
    owner = claim(out, "audit", accept=("build",)) if out is not None else None
    try:
        return _audit(path, owner, labels=labels, join_on=join_on, target=tgt, out=out,
                      group_by=group_by, workers=workers, backend=backend,
                      compute_attributes=compute_attributes, fill_failed=fill_failed,
                      fit_threshold=fit_threshold, reproduce=reproduce, name=name,
                      dataset=dataset, license=license, thumbnails=thumbnails,
                      progress=progress)
    finally:
        if owner is not None:
            owner.release()


def _audit(path, owner, *, labels, join_on, target, out, group_by, workers, backend,
           compute_attributes, fill_failed, fit_threshold, reproduce, name, dataset, license,
           thumbnails, progress) -> dict:
    tgt = target
    inp = load_input(path, compute_attributes=compute_attributes, workers=workers,
                     backend=backend, fill_failed=fill_failed, progress=progress)
    if name:
        inp.name = name
    resolve_dataset(inp, dataset)
    if labels is not None:
        join_labels(inp, labels, join_on)
    helper = figure_helper() if out is not None else None  # it imports matplotlib meanwhile
    try:
        stats = compute_stats(inp.table, group_by=group_by, target=tgt, fit_threshold=fit_threshold,
                              source=inp.source())
        if out is None:
            return public(stats)
        stats["_thumbnails_off"] = not thumbnails
        figures, thumbs = _figures_and_thumbnails(inp, stats, helper, workers=workers,
                                                  progress=progress, thumbnails=thumbnails)
    finally:
        if helper is not None:
            helper.close()
    write_outputs(stats, Path(out), title=f"Balance report: {inp.name}", inp=inp,
                  reproduce=reproduce, license=license, thumbnails=thumbs, figures=figures)
    return public(stats)


def _figures_and_thumbnails(inp: AuditInput, stats: dict, helper, *, workers: int, progress: bool,
                            thumbnails: bool = True) -> tuple[dict[str, bytes], dict]:
    """The charts (this process and ``helper``) while the thumbnail strips are cut in worker
    processes (neither reads what the other writes: the strips add ``stats["_thumbnails"]``,
    which the charts never read)."""
    if not thumbnails:
        return all_figures(stats, helper), {}
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1, thread_name_prefix="maskgen-thumbnails") as ex:
        pending = ex.submit(make_thumbnails, inp, stats, workers=workers, progress=progress)
        figures = all_figures(stats, helper)
        return figures, pending.result()


def write_build_report(out_dir: Path, *, target: str | Mapping | None = "uniform",
                       reproduce: str | None = None, license: str | None = None, helper=None) -> dict:
    """Called by ``maskgen build`` at its merge step: report + card of the build in ``out_dir``.

    Attributes missing from the manifest are not recomputed here (the build owns them), so
    this stays fast; only failed images (no landmarks) are measured on their centre (in a
    worker process). ``helper``: a chart helper process the caller started earlier
    (:func:`maskgen.audit.figures.figure_helper`; the caller closes it); without one, one is
    started here. Returns the JSON-ready stats.
    """
    out_dir = Path(out_dir)
    own = helper is None
    if own:
        helper = figure_helper()  # it imports matplotlib while the stats are computed
    try:
        inp = load_input(out_dir, compute_attributes=False, fill_failed=True)
        resolve_dataset(inp, None)
        stats = compute_stats(inp.table, target=parse_target(target), source=inp.source())
        figures, thumbs = _figures_and_thumbnails(inp, stats, helper, workers=1, progress=False)
    finally:
        if own and helper is not None:
            helper.close()
    write_outputs(stats, out_dir, title=f"Balance report: {inp.name}", inp=inp,
                  reproduce=reproduce, license=license, thumbnails=thumbs, figures=figures)
    return public(stats)
