"""The base install (``pip install maskgen``) masks a face; the other stages name their extra.

The slow test makes a real virtual environment with ``pip install <this checkout>`` (no
extras; the pip cache is reused) and masks the astronaut with ``maskgen mask``, then adds the
``build`` extra and runs a small LFW build as the README's main job does (no torch installed).
It skips when pip cannot reach its package index.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from maskgen import extras
from maskgen.cli import COMMANDS, main

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[1]
# (onnxruntime is in the base install: it runs the default photo detector's MTCNN weights)
HEAVY = ("ray", "torch", "pyarrow", "pandas", "matplotlib", "webdataset", "onnx", "onnxscript")


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_command_extras_exist_and_are_installed_here() -> None:
    opt = _pyproject()["project"]["optional-dependencies"]
    for command, extra in extras.COMMAND_EXTRAS.items():
        assert command in COMMANDS and extra in opt
        assert extras.missing(extra) == []  # the test install has every extra
        assert extras.missing_extra_command(command) is None
    all_extras = set(opt["all"][0].split("[")[1].rstrip("]").split(","))
    assert set(extras.COMMAND_EXTRAS.values()) <= all_extras


def test_base_dependencies_are_the_masking_toolkit_only() -> None:
    import re

    base = {re.split(r"[<>=!~\[; ]", d, maxsplit=1)[0].strip().lower() for d in _pyproject()["project"]["dependencies"]}
    for heavy in HEAVY:
        assert heavy not in base, heavy


def test_extra_packages_follow_the_metadata() -> None:
    build = extras.extra_packages("build")
    assert {"ray", "webdataset", "pyarrow", "pandas", "matplotlib"} <= set(build)  # 'audit' through maskgen[audit]
    assert "torch" in extras.extra_packages("train") and "torch" not in build


def test_missing_extra_stands_in_for_the_command(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the build extra's packages reported absent (the real case is the slow test below),
    the command prints one line and --help still lists it."""
    monkeypatch.setattr(extras, "_installed", lambda dist: dist not in ("ray", "torch"))
    r = CliRunner().invoke(main, ["build", "lfw", "-o", "x", "--ratio", "0.1"])
    assert r.exit_code == 1
    assert r.output.strip().splitlines()[-1] == "Error: maskgen build needs the 'build' extra: pip install 'maskgen[build]'"
    r = CliRunner().invoke(main, ["train", "--help"])
    assert "needs the 'train' extra" in r.output
    r = CliRunner().invoke(main, ["--help"])
    assert r.exit_code == 0 and "pip install 'maskgen[build]'" in r.output
    assert extras.missing_extra_command("mask") is None


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


def _registry_reachable(tmp: Path) -> bool:
    r = _run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(tmp), "click"], timeout=120)
    return r.returncode == 0


@pytest.mark.slow
def test_base_install_masks_the_astronaut(tmp_path: Path) -> None:
    skdata = pytest.importorskip("skimage.data")
    cv2 = pytest.importorskip("cv2")
    if not _registry_reachable(tmp_path / "probe"):
        pytest.skip("pip cannot reach its package index")
    # a clean copy of the checkout (no venv, no build leftovers), links kept: maskgen/configs
    src = tmp_path / "src"
    keep = {"maskgen", "configs", "pyproject.toml", "README.md"}
    src.mkdir()
    for name in keep:
        p = ROOT / name
        if p.is_dir():
            shutil.copytree(p, src / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(p, src / name)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py, mg = venv / "bin" / "python", venv / "bin" / "maskgen"
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    # --no-compile: pip byte-compiles every installed file (~15 s per install); the test needs none of it
    r = _run([str(py), "-m", "pip", "install", "-q", "--no-compile", str(src)], env=env, timeout=1800)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]

    listed = _run([str(py), "-m", "pip", "list", "--format", "json"], env=env, check=True).stdout
    installed = {p["name"].lower() for p in json.loads(listed)}
    assert not installed & set(HEAVY), installed & set(HEAVY)

    img = tmp_path / "astronaut.jpg"
    cv2.imwrite(str(img), cv2.cvtColor(skdata.astronaut(), cv2.COLOR_RGB2BGR))
    out = tmp_path / "masked"
    work = tmp_path / "elsewhere"  # not the checkout: the installed package only
    work.mkdir()
    r = _run([str(mg), "mask", str(img), "-o", str(out), "--seed", "0"], env=env, cwd=work, timeout=600)
    assert r.returncode == 0, r.stderr
    rec = json.loads((out / "results.jsonl").read_text().splitlines()[0])
    assert rec["status"] == "ok" and (out / rec["output"]).is_file()

    r = _run([str(mg), "build", "lfw", "-o", str(tmp_path / "b"), "--ratio", "0.1"], env=env, cwd=work)
    assert r.returncode != 0
    assert r.stderr.strip().splitlines()[-1] == "Error: maskgen build needs the 'build' extra: pip install 'maskgen[build]'"
    r = _run([str(mg), "--help"], env=env, cwd=work)
    assert r.returncode == 0 and "mask" in r.stdout

    # the configs ship in the wheel and are found by name, as the README writes them
    code = "from maskgen.options import find_config; print(find_config('configs/train_tiny_cpu.yaml'))"
    r = _run([str(py), "-c", code], env=env, cwd=work)
    assert r.returncode == 0 and "site-packages" in r.stdout, r.stderr

    # the README's main job needs only the build extra: no torch comes with it
    lfw = Path(os.environ.get("MASKGEN_DATA_HOME", "")) / "lfw"
    r = _run([str(py), "-m", "pip", "install", "-q", "--no-compile", f"{src}[build]"], env=env, timeout=1800)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    listed = _run([str(py), "-m", "pip", "list", "--format", "json"], env=env, check=True).stdout
    installed = {p["name"].lower() for p in json.loads(listed)}
    assert "ray" in installed and "torch" not in installed
    if not (lfw / "pairs.txt").is_file():
        return
    ray_tmp = tempfile.mkdtemp(prefix="mgray")  # a short path: Ray's socket names must fit 107 bytes
    build_env = {**env, "RAY_TMPDIR": ray_tmp}
    r = _run([str(mg), "build", "lfw", "--ratio", "0.1", "--max-identities", "3", "--workers", "1", "-o",
              str(tmp_path / "lfw-r0.1")], env=build_env, cwd=work, timeout=900)
    shutil.rmtree(ray_tmp, ignore_errors=True)
    assert r.returncode == 0, r.stderr[-3000:]
    info = json.loads((tmp_path / "lfw-r0.1" / "dataset.json").read_text())
    assert info["num_samples"] > 0 and (tmp_path / "lfw-r0.1" / "DATA_CARD.md").is_file()
