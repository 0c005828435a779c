"""The names of the report files an audit writes into a folder (cheap to import: the build
removes an earlier report with them without loading the report side)."""

from __future__ import annotations

from pathlib import Path

FIGURE_DIR = "report"
OUTPUTS = ("report.html", "report.md", "stats.json", "DATA_CARD.md")
CARD_README = "README.md"  # the card again, in a build folder (its shards sit next to it)
FIGURE_SUFFIXES = (".png", ".jpg")


def is_card_copy(readme: Path, card: Path) -> bool:
    """``readme`` may be (re)written as the card: it does not exist, or it holds exactly the
    card maskgen wrote beside it last time."""
    if not readme.exists() and not readme.is_symlink():
        return True
    try:
        return readme.is_file() and not readme.is_symlink() and readme.read_bytes() == card.read_bytes()
    except OSError:
        return False


def report_files(out_dir: str | Path) -> list[str]:
    """The report files present in ``out_dir``, relative to it: :data:`OUTPUTS`, the figures
    and thumbnails under ``report/`` (then the folder itself), and ``README.md`` only while it
    is still the copy of ``DATA_CARD.md`` (a README of the user's own is never named)."""
    out = Path(out_dir)
    names = [n for n in OUTPUTS if (out / n).is_file() and not (out / n).is_symlink()]
    readme, card = out / CARD_README, out / "DATA_CARD.md"
    if readme.is_file() and card.is_file() and is_card_copy(readme, card):
        names.append(CARD_README)
    fig = out / FIGURE_DIR
    if fig.is_dir() and not fig.is_symlink():
        names += sorted(f"{FIGURE_DIR}/{p.name}" for p in fig.iterdir()
                        if p.suffix in FIGURE_SUFFIXES and p.is_file() and not p.is_symlink())
        names.append(FIGURE_DIR)  # removed only when it is empty then
    return names
