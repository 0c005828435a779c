"""The import rules of docs/architecture.md hold (import-linter contracts in ``.importlinter``),
and no module imports another module's private helpers."""

from __future__ import annotations

import configparser
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / ".importlinter"

grimp = pytest.importorskip("grimp")
importlinter_cli = pytest.importorskip("importlinter.cli")

# Private names imported from another module today, each to be made public or moved. Do not add
# entries: give the helper a public name in the module that owns it instead.
PRIVATE_IMPORTS_TODAY = {
    ("maskgen.audit.card", "maskgen.audit.report", "_pct"),
    ("maskgen.masks.cli", "maskgen.masks.api", "_check_image"),
    ("maskgen.pipelines.build", "maskgen.pipelines.execute", "_face_attributes"),
    ("maskgen.training.models.ressanet", "maskgen.training.models.mfr", "_init_weights"),
    # in work being merged now
    ("maskgen.pipelines.execute", "maskgen.datasets.filters", "_reason_class"),
    ("maskgen.pipelines.parts", "maskgen.datasets.filters", "_reason_class"),
    ("maskgen.pipelines.parts", "maskgen.datasets.filters", "_stable_hash"),
    ("maskgen.pipelines.parts", "maskgen.pipelines.execute", "_face_attributes"),
    ("maskgen.masks.geometry", "maskgen.masks.pose", "_camera"),
}


def _lint(config: Path, monkeypatch: pytest.MonkeyPatch) -> int:
    """Run import-linter in this process. It configures logging with ``dictConfig``, which
    disables every logger that exists (maskgen's own included): put their state back after."""
    import logging

    monkeypatch.chdir(ROOT)
    loggers = [lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)]
    state = [(lg, lg.disabled, lg.level, lg.propagate, list(lg.handlers)) for lg in loggers]
    root = (logging.root.level, list(logging.root.handlers))
    try:
        return importlinter_cli.lint_imports(config_filename=str(config), no_cache=True, no_logo=True)
    finally:
        for lg, disabled, level, propagate, handlers in state:
            lg.disabled, lg.level, lg.propagate, lg.handlers = disabled, level, propagate, handlers
        logging.root.level, logging.root.handlers = root


def test_import_contracts_are_kept(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    code = _lint(CONFIG, monkeypatch)
    out = capsys.readouterr().out
    assert code == 0, out
    assert "0 broken" in out


def _ignored_imports() -> list[tuple[str, str]]:
    cp = configparser.ConfigParser()
    cp.read(CONFIG)
    pairs = []
    for section in cp.sections():
        for line in cp[section].get("ignore_imports", "").splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                a, b = (s.strip() for s in line.split("->"))
                pairs.append((a, b))
    return pairs


def test_the_contracts_catch_what_they_ignore(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                              capsys: pytest.CaptureFixture) -> None:
    """Without their recorded exceptions the contracts break, as long as those imports exist:
    the rules are real, and each exception is a real import of today."""
    graph = grimp.build_graph("maskgen", cache_dir=None)
    present = [(a, b) for a, b in _ignored_imports()
               if {a, b} <= graph.modules and graph.direct_import_exists(importer=a, imported=b)]
    if not present:
        pytest.skip("every recorded exception has been fixed")
    cp = configparser.ConfigParser()
    cp.read(CONFIG)
    for section in cp.sections():
        cp.remove_option(section, "ignore_imports")
    strict = tmp_path / "strict.ini"
    with open(strict, "w") as f:
        cp.write(f)
    code = _lint(strict, monkeypatch)
    out = capsys.readouterr().out
    assert code == 1, out
    for a, b in present:
        assert a in out and b in out, (a, b)


def _private_imports() -> set[tuple[str, str, str]]:
    graph = grimp.build_graph("maskgen", cache_dir=None)
    found = set()
    for importer in graph.modules:
        for imported in graph.find_modules_directly_imported_by(importer):
            if imported.rsplit(".", 1)[0] == importer or imported == importer:
                continue
            for d in graph.get_import_details(importer=importer, imported=imported):
                m = re.match(r"from\s+\S+\s+import\s+\(?(.*?)\)?\s*$", d["line_contents"])
                if not m:
                    continue
                for name in (n.strip().split(" as ")[0] for n in m.group(1).split(",")):
                    if name.startswith("_") and not name.startswith("__"):
                        found.add((importer, imported, name))
    return found


def test_no_new_private_imports_across_modules() -> None:
    new = _private_imports() - PRIVATE_IMPORTS_TODAY
    assert not new, f"private names imported from another module (make them public): {sorted(new)}"
