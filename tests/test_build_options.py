"""The build's options: one schema (maskgen.pipelines.config.BUILD) behind build(), maskgen build
and the YAML; explicit beats the YAML; old names are deprecated aliases; build.yaml reloads."""

from __future__ import annotations

import subprocess
import sys
import warnings

import pytest
import yaml
from click.testing import CliRunner

from maskgen.errors import OptionError
from maskgen.pipelines.config import BUILD

# old spelling -> (new spelling, the value both take): command line and YAML / keyword
ALIASES = [
    (["--jpeg-quality", "80"], ["--quality", "80"], {"jpeg_quality": 80}, {"quality": 80}),
    (["--mask-types", "n95,cloth"], ["--mask-type", "n95", "--mask-type", "cloth"],
     {"mask_types": ["n95", "cloth"]}, {"mask_type": "n95,cloth"}),
    (["--detector", "dlib"], ["--backend", "dlib"], {"detector": "dlib"}, {"backend": "dlib"}),
    (["--progress"], [], {"progress": True}, {"quiet": False}),
    (["--output", "original"], ["--image-mode", "original"], {"output": "original"}, {"image_mode": "original"}),
]


def _capture_build(monkeypatch) -> list:
    """Replace the build run by a recorder of the resolved config (nothing heavy runs)."""
    import importlib
    from types import SimpleNamespace

    B = importlib.import_module("maskgen.pipelines.build")  # the module (the package exports the function)
    seen: list = []

    def run_build(cfg, **kw):
        seen.append(cfg)
        return SimpleNamespace(num_samples=0, num_classes=0, num_masked=0, ratio=0.0, shards=[],
                               out=cfg.out, shards_failed=0)

    monkeypatch.setattr(B, "run_build", run_build)
    return seen


def test_explicit_argument_beats_the_config_even_at_its_default(tmp_path, monkeypatch) -> None:
    """build(config=<ratio: 0.5>, ratio=0.1) gives 0.1 (0.1 is also the default); without the
    argument the config's 0.5 holds, and what neither gives is the default."""
    import inspect

    from maskgen.pipelines.build import build

    seen = _capture_build(monkeypatch)
    cfg = tmp_path / "b.yaml"
    cfg.write_text(f"source: lfw\nout: {tmp_path / 'out'}\nratio: 0.5\nseed: 7\n")
    build(config=cfg, ratio=0.1)
    build(config=cfg)
    build(config=cfg, seed=0, source=None)  # source=None: not given (positional default)
    build("lfw", tmp_path / "o2")
    assert [c.ratio for c in seen] == [0.1, 0.5, 0.5, 0.1]
    assert [c.seed for c in seen] == [7, 7, 0, 0]
    assert seen[2].source == "lfw" and seen[0].mode == "resume"
    # the documented defaults still read as values in help(build)
    text = str(inspect.signature(build))
    assert "ratio: 'float' = 0.1," in text and "mode: " in text and "= 'resume'" in text


def test_cli_flag_beats_the_config_even_at_its_default(tmp_path, monkeypatch) -> None:
    from click.testing import CliRunner

    from maskgen.pipelines.cli import build as build_cmd

    seen = _capture_build(monkeypatch)
    cfg = tmp_path / "b.yaml"
    cfg.write_text(f"source: lfw\nout: {tmp_path / 'out'}\nratio: 0.5\n")
    for args in (["-c", str(cfg), "--ratio", "0.1"], ["-c", str(cfg)]):
        r = CliRunner().invoke(build_cmd, args)
        assert r.exit_code == 0, r.output
    assert [c.ratio for c in seen] == [0.1, 0.5]


def _cli(args: list[str]):
    from maskgen.cli import main

    return CliRunner().invoke(main, ["build", *args])


def _warnings(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.startswith("warning:")]


def test_renamed_options_explicit_beats_the_config_even_at_their_defaults(tmp_path, monkeypatch) -> None:
    """The renamed fields follow the same precedence: quality=95 (the default) beats the
    YAML's 80, in Python and on the command line; a flag not given leaves the YAML's value."""
    from maskgen.pipelines.build import build

    seen = _capture_build(monkeypatch)
    cfg = tmp_path / "b.yaml"
    cfg.write_text(f"source: lfw\nout: {tmp_path / 'out'}\nquality: 80\nimage_mode: original\nquiet: true\n")
    build(config=cfg, quality=95, image_mode="aligned")
    build(config=cfg, quiet=False)
    for args in (["-c", str(cfg), "--quality", "95", "--image-mode", "aligned"], ["-c", str(cfg)]):
        r = _cli(args)
        assert r.exit_code == 0, r.output
    assert [(c.quality, c.image_mode, c.quiet) for c in seen] == [
        (95, "aligned", True), (80, "original", False), (95, "aligned", True), (80, "original", True)]
    assert seen[0].origin("quality") == "given" and seen[1].origin("quality") == "config"


@pytest.mark.parametrize("old_flags, new_flags, old_kw, new_kw", ALIASES)
def test_every_old_spelling_works_and_warns_once(tmp_path, monkeypatch, old_flags, new_flags, old_kw, new_kw) -> None:
    """Each deprecated flag, keyword and YAML key gives the config of its new name, with one
    warning line; the old and the new name together are an error."""
    from maskgen.pipelines.build import build

    seen = _capture_build(monkeypatch)
    base = ["lfw", "-o", str(tmp_path / "o")]
    r_old, r_new = _cli(base + old_flags), _cli(base + new_flags)
    assert r_old.exit_code == 0 and r_new.exit_code == 0, (r_old.output, r_new.output)
    (old_warn,) = _warnings(r_old.output)
    assert f"{old_flags[0]} is deprecated" in old_warn and not _warnings(r_new.output)
    with warnings.catch_warnings(record=True) as notes:
        warnings.simplefilter("always")
        build("lfw", tmp_path / "o", **old_kw)
    assert len([n for n in notes if issubclass(n.category, FutureWarning)]) == 1
    assert notes[0].filename == __file__  # the warning points at the caller's line
    old_yaml = tmp_path / "old.yaml"
    old_yaml.write_text(yaml.safe_dump({"source": "lfw", "out": str(tmp_path / "o"), **old_kw}))
    r_yaml = _cli(["-c", str(old_yaml)])
    assert r_yaml.exit_code == 0, r_yaml.output
    (yaml_warn,) = _warnings(r_yaml.output)
    assert yaml_warn.startswith(f"warning: {old_yaml}: ") and f"'{next(iter(old_kw))}' is deprecated" in yaml_warn
    build("lfw", tmp_path / "o", **new_kw)
    old_cli, new_cli, old_py, old_file, new_py = seen
    assert old_cli == new_cli == old_py == old_file == new_py
    name = next(iter(new_kw))
    if new_flags:
        both = _cli(base + old_flags + new_flags)
        assert both.exit_code == 2 and "both given" in both.output
    with pytest.raises(OptionError, match="given twice"):
        build("lfw", tmp_path / "o", **old_kw, **{name: new_kw[name]})


def test_a_bad_value_is_one_line_naming_its_origin(tmp_path, monkeypatch) -> None:
    from maskgen.pipelines.build import build

    seen = _capture_build(monkeypatch)
    out = str(tmp_path / "o")
    with pytest.raises(OptionError, match=r"^ratio: must be within \[0, 1\], got 1.5$"):
        build("lfw", out, ratio=1.5)
    with pytest.raises(OptionError, match=r"^jpeg_quality: must be within \[1, 100\], got 0$"):
        build("lfw", out, jpeg_quality=0)
    bad = tmp_path / "bad.yaml"
    bad.write_text("source: lfw\nimage_mode: crop\n")
    with pytest.raises(OptionError, match=rf"^{bad}: image_mode: must be one of aligned, original; got 'crop'$"):
        build(out=out, config=bad)
    for args, want in ((["lfw", "-o", out, "--ratio", "1.5"], "Error: --ratio: must be within [0, 1], got 1.5"),
                       (["lfw", "-o", out, "--quality", "high"], "Error: --quality: expected an integer, got 'high'"),
                       (["lfw", "-o", out, "--image-mode", "orignal"],
                        "Error: --image-mode: must be one of aligned, original; got 'orignal' (did you mean 'original'?)"),
                       (["-o", out, "-c", str(bad)], f"Error: {bad}: image_mode: must be one of aligned, original; got 'crop'"),
                       (["lfw", "-o", out, "--min-images", "3", "--max-images", "2"],
                        "Error: build: need min_images <= max_images, got 3 > 2")):
        r = _cli(args)
        assert r.exit_code == 2 and r.output.splitlines() == [f"{want} (see 'maskgen build -h')"], r.output
    assert not seen  # nothing ran
    # a real process: the same one line on stderr, no traceback
    p = subprocess.run([sys.executable, "-m", "maskgen", "build", "lfw", "-o", out, "--ratio", "2"],
                       capture_output=True, text=True, timeout=120, check=False)
    assert p.returncode == 2 and p.stderr.strip() == \
        "Error: --ratio: must be within [0, 1], got 2 (see 'maskgen build -h')", p.stderr


def test_an_unknown_yaml_key_is_one_line_with_a_suggestion(tmp_path, monkeypatch) -> None:
    _capture_build(monkeypatch)
    bad = tmp_path / "typo.yaml"
    bad.write_text("source: lfw\nratoi: 0.2\n")
    r = _cli(["-o", str(tmp_path / "o"), "-c", str(bad)])
    assert r.exit_code == 2 and len(r.output.splitlines()) == 1
    assert r.output.startswith(f"Error: {bad}: ratoi: unknown build option; did you mean 'ratio'?")
    with pytest.raises(OptionError, match="unknown build option; did you mean 'quality'"):
        BUILD.resolve({"source": "lfw", "out": "o", "qualty": 90})


def test_build_yaml_round_trips_and_old_build_yaml_still_loads(tmp_path, monkeypatch) -> None:
    """The resolved config written to <out>/build.yaml reloads (with -c) to the same config;
    a build.yaml written under the old names loads to the config of the new ones."""
    from maskgen.pipelines.config import write_yaml

    seen = _capture_build(monkeypatch)
    r = _cli(["lfw", "-o", str(tmp_path / "o"), "--ratio", "0.25", "--mask-type", "surgical,n95", "--quality", "90",
              "--image-mode", "original", "--exclude-eval", "lfw", "--mask-mix", "palette", "-q"])
    assert r.exit_code == 0, r.output
    write_yaml(seen[0], tmp_path / "build.yaml")
    text = (tmp_path / "build.yaml").read_text()
    assert "config" not in yaml.safe_load(text) and "jpeg_quality" not in text and "quality: 90" in text
    again = _cli(["-c", str(tmp_path / "build.yaml")])
    assert again.exit_code == 0 and not _warnings(again.output), again.output
    assert seen[1] == seen[0] and seen[1].to_dict() == seen[0].to_dict()
    # build.yaml as the dataclass of earlier versions wrote it: every field, old names
    old = dict(seen[0].to_dict())
    for new, was in (("quality", "jpeg_quality"), ("mask_type", "mask_types"), ("backend", "detector"),
                     ("image_mode", "output")):
        old[was] = old.pop(new)
    old["progress"] = not old.pop("quiet")
    (tmp_path / "old.yaml").write_text(yaml.safe_dump(old, sort_keys=False))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        assert BUILD.resolve(tmp_path / "old.yaml") == seen[0]


def test_help_is_generated_from_the_schema() -> None:
    """-h works; every field with a flag is in the help, the deprecated spellings are not."""
    r = _cli(["-h"])
    assert r.exit_code == 0
    for f in BUILD:
        assert f.argument or f.cli_flags[-1] in r.output, f.name
    for old in ("--jpeg-quality", "--mask-types", "--detector", "--progress", "--output"):
        assert old not in r.output
    assert "--image-mode" in r.output and "[aligned|original]" in r.output


def test_the_shard_plan_keeps_its_key_names(tmp_path) -> None:
    """The plan's opts (hashed into every shard's plan hash: what resume compares) keep their
    names whatever the options are called, so an older folder resumes as the same build."""
    import importlib

    B = importlib.import_module("maskgen.pipelines.build")
    old = {"source": "lfw", "out": str(tmp_path), "output": "original", "jpeg_quality": 80, "twins": True}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        cfg_old = BUILD.resolve(old)
    cfg = BUILD.resolve(source="lfw", out=str(tmp_path), image_mode="original", quality=80, twins=True)
    assert B.plan_opts(cfg) == B.plan_opts(cfg_old) == {
        "output": "original", "image_size": 112, "jpeg_quality": 80, "twins": True}
    assert B.plan_opts(cfg.replace(min_fit=0.5))["min_fit"] == 0.5


def test_build_offers_every_backend_and_refuses_others(tmp_path, monkeypatch) -> None:
    """--backend takes every backend of maskgen.masks.landmarks (default ``auto``); the old
    --detector is hidden and the same option; an unknown one is one line."""
    from maskgen.masks.landmarks import BACKENDS, DEFAULT_BACKEND

    seen = _capture_build(monkeypatch)
    base = ["lfw", "-o", str(tmp_path / "o")]
    for b in BACKENDS:
        assert _cli(base + ["--backend", b]).exit_code == 0
    assert _cli(base).exit_code == 0
    assert [c.backend for c in seen] == [*BACKENDS, DEFAULT_BACKEND]
    r = _cli(base + ["--backend", "hog"])
    assert r.exit_code == 2 and r.output.startswith("Error: --backend: must be one of auto, cnn, dlib")
    assert len(r.output.splitlines()) == 1
