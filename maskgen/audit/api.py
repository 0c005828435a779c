"""Entry points: ``audit`` (any build, manifest or image folder) and ``write_build_report``.

Both write the same set of files into one folder: ``report.html`` (self-contained),
``report.md`` with its figures under ``report/``, ``stats.json`` and ``DATA_CARD.md``. Files are
written to a temporary name and renamed, and carry no timestamp, so re-running on the same
input rewrites identical bytes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from maskgen.audit.card import render_card
from maskgen.audit.figures import all_figures
from maskgen.audit.report import build_blocks, render_html, render_markdown
from maskgen.audit.sources import AuditInput, join_labels, load_input
from maskgen.audit.stats import FIT_THRESHOLD, compute_stats, public

FIGURE_DIR = "report"
OUTPUTS = ("report.html", "report.md", "stats.json", "DATA_CARD.md")


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
                raise ValueError(f"target must be 'uniform', a JSON object or a JSON file: "
                                 f"{target!r}")
            text = p.read_text()
        obj = json.loads(text)
    if not isinstance(obj, dict) or not all(isinstance(v, Mapping) for v in obj.values()):
        raise ValueError("target must map a column to {group: share}")
    return {k: {g: float(s) for g, s in v.items()} for k, v in obj.items()}


def _write(path: Path, data: bytes | str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    if isinstance(data, str):
        data = data.encode("utf-8")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_outputs(stats: dict, out_dir: Path, *, title: str, inp: AuditInput | None = None,
                  reproduce: str | None = None) -> dict[str, Path]:
    """Render and write the report, figures, stats and card into ``out_dir``."""
    out_dir = Path(out_dir)
    fig_dir = out_dir / FIGURE_DIR
    fig_dir.mkdir(parents=True, exist_ok=True)
    figures = all_figures(stats)
    for old in fig_dir.glob("*.png"):  # figures of groups that no longer exist must go
        if old.name not in figures:
            old.unlink()
    for name, png in figures.items():
        _write(fig_dir / name, png)
    blocks = build_blocks(stats, figures, title)
    written = {"figures": fig_dir}
    _write(out_dir / "report.md", render_markdown(blocks, FIGURE_DIR))
    _write(out_dir / "report.html", render_html(blocks, figures, title))
    _write(out_dir / "stats.json",
           json.dumps(public(stats), indent=1, ensure_ascii=False, sort_keys=False) + "\n")
    card = render_card(
        public(stats),
        build_config=inp.build_config if inp else None,
        dataset_info=inp.dataset_info if inp else None,
        out_dir=out_dir,
        build_dir=inp.build_dir if inp else None,
        name=inp.name if inp else "",
        source_kind=_source_kind(inp),
        reproduce=reproduce,
    )
    _write(out_dir / "DATA_CARD.md", card)
    for n in OUTPUTS:
        written[n] = out_dir / n
    return written


def _source_kind(inp: AuditInput | None) -> str | None:
    if inp is None:
        return None
    from maskgen.audit.card import detect_source

    col = None
    if "source" in inp.table.columns:
        col = sorted({str(v) for v in inp.table["source"].dropna().unique()})
    return detect_source(inp.build_config, col, inp.name)


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
) -> dict:
    """Audit a build folder, a manifest or an image folder; write the report when ``out``.

    ``compute_attributes``: measure skin tone and quality from the images when the manifest
    lacks them; ``fill_failed``: measure failed images (no landmarks) on the image centre so
    failure rates can be sliced by skin tone; ``name``: the dataset's name in the report
    (default: the folder's). Returns the stats (the content of ``stats.json``).
    """
    tgt = parse_target(target)
    inp = load_input(path, compute_attributes=compute_attributes, workers=workers,
                     backend=backend, fill_failed=fill_failed)
    if name:
        inp.name = name
    if labels is not None:
        join_labels(inp, labels, join_on)
    stats = compute_stats(inp.table, group_by=group_by, target=tgt, fit_threshold=fit_threshold,
                          source=inp.source())
    if out is not None:
        write_outputs(stats, Path(out), title=f"Balance report: {inp.name}", inp=inp,
                      reproduce=reproduce)
    return stats


def write_build_report(out_dir: Path, *, target: str | Mapping | None = "uniform",
                       reproduce: str | None = None) -> dict:
    """Called by ``maskgen build`` at its merge step: report + card of the build in ``out_dir``.

    Attributes missing from the manifest are not recomputed here (the build owns them), so
    this stays fast; only failed images (no landmarks) are measured on their centre.
    Returns the JSON-ready stats.
    """
    out_dir = Path(out_dir)
    inp = load_input(out_dir, compute_attributes=False, fill_failed=True)
    stats = compute_stats(inp.table, target=parse_target(target), source=inp.source())
    write_outputs(stats, out_dir, title=f"Balance report: {inp.name}", inp=inp,
                  reproduce=reproduce)
    return public(stats)
