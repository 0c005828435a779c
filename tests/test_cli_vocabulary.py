"""One vocabulary on the command line: every command of the ``maskgen`` group takes ``-h``,
names its output ``-o/--out``, declares the shared options (seed, workers, backend, mask type,
quality, quiet, config) from their one definition, offers the same backends, and still reads
the old spellings with one warning line."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import click
import cv2
import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from maskgen.cli import main
from maskgen.masks.options import BACKEND, MASK_TYPE, MASK_TYPES, SELECT, backend_choices
from maskgen.options import CONFIG, OUT, QUALITY, QUIET, SEED, WORKERS, Field, Schema

SHARED: dict[str, Field] = {f.name: f for f in (OUT, SEED, WORKERS, QUALITY, QUIET, CONFIG, BACKEND, MASK_TYPE, SELECT)}

# spellings that once named a shared concept and must never be a visible option again
OLD_SPELLINGS = {"--output", "--type", "--landmarks", "--detector", "--jpeg-quality", "--output-dir"}


def _commands() -> list[str]:
    return main.list_commands(click.Context(main))


def _command(name: str) -> click.Command:
    cmd = main.get_command(click.Context(main), name)
    assert cmd is not None, name
    return cmd


def _schema(name: str) -> Schema | None:
    return getattr(_command(name), "schema", None)


# while the build's options are declared by click decorators of their own (pipelines/cli.py),
# its --output means aligned/original (a crop choice, not a folder) and --mask-types restricts
# its mix; once the build is declared by a schema it is checked like every other command
NOT_YET_ON_A_SCHEMA = {"build"} if _schema("build") is None else set()

# what a command needs to parse (a path that exists for its positional argument)
ARGS = {
    "mask": ["{img}", "-o", "{tmp}/out"],
    "landmarks": ["{img}"],
    "contact-sheet": ["-o", "{tmp}/sheet.png"],
    "landmarks-model": ["--eval-only"],
    "build": ["lfw", "-o", "{tmp}/out"],
    "audit": ["{img}"],
    "card": ["{tmp}"],
    "eval": [],
    "make-bin": ["{img}", "-o", "{tmp}/p.bin"],
    "train": ["--shards", "x-*.tar"],
    "export": ["{img}", "-o", "{tmp}/m.onnx"],
}


def _args(name: str, tmp_path: Path) -> list[str]:
    img = tmp_path / "face.jpg"
    if not img.exists():
        img.write_bytes(b"not really a jpeg")
    return [a.format(img=img, tmp=tmp_path) for a in ARGS[name]]


def _visible_opts(cmd: click.Command) -> set[str]:
    out: set[str] = set()
    for p in cmd.params:
        if isinstance(p, click.Option) and not p.hidden:
            out.update(p.opts + p.secondary_opts)
    return out


def test_every_command_is_listed_here() -> None:
    assert set(_commands()) == set(ARGS)


@pytest.mark.parametrize("name", sorted(ARGS))
def test_short_help_on_every_command(name: str) -> None:
    for flag in ("-h", "--help"):
        res = CliRunner().invoke(main, [name, flag])
        assert res.exit_code == 0, (name, res.output)
        assert res.output.startswith(f"Usage: main {name}") or "Usage:" in res.output


@pytest.mark.parametrize("name", sorted(set(ARGS) - NOT_YET_ON_A_SCHEMA))
def test_every_command_but_the_build_is_declared_by_a_schema(name: str) -> None:
    schema = _schema(name)
    assert isinstance(schema, Schema), name
    declared = {f.name for f in schema if f.argument or f.cli_flags}
    params = {p.name for p in _command(name).params if not p.name.startswith("_alias_")}
    assert declared <= params, (name, declared - params)


@pytest.mark.parametrize("name", sorted(ARGS))
def test_the_output_is_only_ever_o_out(name: str) -> None:
    cmd = _command(name)
    for p in cmd.params:
        if p.name == "out":
            assert isinstance(p, click.Option) and sorted(p.opts) == ["--out", "-o"], (name, p.opts)
        if isinstance(p, click.Option) and not p.hidden:
            assert not ({"-o", "--out"} & set(p.opts)) or p.name == "out", (name, p.name)
        if isinstance(p, click.Argument):
            assert p.name in ("legacy_out",) or "out" not in p.name, (name, p.name)
    if name not in NOT_YET_ON_A_SCHEMA:
        assert not (OLD_SPELLINGS & _visible_opts(cmd)), (name, OLD_SPELLINGS & _visible_opts(cmd))


def test_long_commands_take_quiet() -> None:
    for name in ("mask", "audit", "eval", "landmarks-model", "train", "make-bin"):
        opts = _visible_opts(_command(name))
        assert {"-q", "--quiet"} <= opts, name
        assert "--no-quiet" not in opts, name


@pytest.mark.parametrize("name", sorted(set(ARGS) - NOT_YET_ON_A_SCHEMA))
def test_shared_fields_come_from_their_one_definition(name: str) -> None:
    """Same name, flags, type, choices (the same callable), validator and range; a command may
    only change the default, the help text, the metavar or add deprecated aliases."""
    schema = _schema(name)
    cmd = _command(name)
    helps = {p.name: p.help for p in cmd.params if isinstance(p, click.Option)}
    for f in schema:
        shared = SHARED.get(f.name)
        if f.name == "mask_type" and f.type != MASK_TYPE.type:  # the list form (a mix restriction)
            shared = MASK_TYPES
        if shared is None:
            # a field of its own never reuses a shared concept's flags
            for s in SHARED.values():
                assert not (set(f.cli_flags) & set(s.cli_flags)), (name, f.name, s.name)
            continue
        for attr in ("cli_flags", "type", "choices", "validator", "min", "max", "min_open", "max_open",
                     "yaml" if f.name != "quiet" else "name", "negatable", "split"):
            assert getattr(f, attr) == getattr(shared, attr), (name, f.name, attr)
        assert f.choices is shared.choices, (name, f.name)
        assert f.help and helps[f.name].startswith(f.help.rstrip(".")), (name, f.name)


@pytest.mark.parametrize("name", sorted(n for n in ARGS if any("--backend" in getattr(p, "opts", ())
                                                                for p in _command(n).params)))
def test_backend_choices_are_one_list(name: str, tmp_path: Path) -> None:
    cmd = _command(name)
    opt = next(p for p in cmd.params if "--backend" in getattr(p, "opts", ()))
    field = getattr(opt.type, "field", None)
    choices = field.choice_list() if field is not None else tuple(opt.type.choices)
    assert choices == backend_choices(), name
    if field is not None:
        assert field.choices is BACKEND.choices
    help_text = CliRunner().invoke(cmd, ["-h"]).output
    assert "--backend" in help_text and "|".join(backend_choices()) in help_text.replace("\n", "")
    res = CliRunner().invoke(main, [name, *_args(name, tmp_path), "--backend", "hog"])
    assert res.exit_code == 2, res.output
    assert res.stderr.count("\n") == 1 and res.stderr.startswith("Error: ") and "hog" in res.stderr


# old spelling -> new spelling, the field both set, and the value
ALIASES = [
    ("mask", ["--type", "n95"], ["--mask-type", "n95"], "mask_type", "n95"),
    ("eval", ["--landmarks", "dlib"], ["--backend", "dlib"], "backend", "dlib"),
    ("train", ["--output", "r"], ["-o", "r"], "out", "r"),
]


@pytest.mark.parametrize("name,old,new,field,value", ALIASES, ids=[a[0] for a in ALIASES])
def test_deprecated_spellings_have_the_same_effect_and_warn(name, old, new, field, value, tmp_path) -> None:
    cmd = _command(name)
    schema = _schema(name)
    base = _args(name, tmp_path)

    def resolved(args: list[str]):
        ctx = cmd.make_context(name, [*base, *args])
        params = {k: v for k, v in ctx.params.items() if k not in ("sets", "print_config")}
        with warnings.catch_warnings(record=True) as notes:
            warnings.simplefilter("always")
            cfg = schema.from_click(ctx, params)
        return cfg, [str(n.message) for n in notes]

    got_old, notes_old = resolved(old)
    got_new, notes_new = resolved(new)
    assert got_old[field] == got_new[field] == value
    assert got_old == got_new
    assert notes_new == []
    assert notes_old == [f"{old[0]} is deprecated, use {schema[field].label()}"]
    with pytest.raises(Exception, match="both given"):
        resolved([*old, *new])
    assert old[0] not in CliRunner().invoke(cmd, ["-h"]).output.replace("--landmarks-", "")


def test_train_output_alias_end_to_end(tmp_path: Path) -> None:
    """The old flag and the old YAML key: one warning line each, the same resolved config."""
    runner = CliRunner()
    new = runner.invoke(main, ["train", "--shards", "x-*.tar", "-o", "r", "--print-config"])
    old = runner.invoke(main, ["train", "--shards", "x-*.tar", "--output", "r", "--print-config"])
    assert new.exit_code == old.exit_code == 0, (new.output, old.output)
    assert yaml.safe_load(new.stdout) == yaml.safe_load(old.stdout)
    assert yaml.safe_load(new.stdout)["out"] == "r" and new.stderr == ""
    assert old.stderr == "warning: --output is deprecated, use -o/--out\n"
    conf = tmp_path / "old.yaml"
    conf.write_text("output: r\nshards: x-*.tar\n")
    res = runner.invoke(main, ["train", "-c", str(conf), "--print-config"])
    assert res.exit_code == 0, res.output
    assert yaml.safe_load(res.stdout) == yaml.safe_load(new.stdout)
    assert res.stderr.count("\n") == 1 and "'output' is deprecated, use 'out'" in res.stderr


def test_mask_type_alias_gives_the_same_images(tmp_path: Path, astronaut: np.ndarray) -> None:
    src = tmp_path / "astro.png"
    cv2.imwrite(str(src), cv2.cvtColor(astronaut, cv2.COLOR_RGB2BGR))
    runs = {}
    for flag in ("--type", "--mask-type"):
        out = tmp_path / flag.strip("-")
        res = CliRunner().invoke(main, ["mask", str(src), "-o", str(out), flag, "kn95", "--seed", "3", "--format", "png"])
        assert res.exit_code == 0, res.output
        runs[flag] = (res.stderr, (out / "results.jsonl").read_text(), (out / "astro.png").read_bytes())
    assert runs["--type"][1:] == runs["--mask-type"][1:]
    assert json.loads(runs["--type"][1])["spec"]["type"] == "kn95"
    assert runs["--type"][0].startswith("warning: --type is deprecated, use --mask-type\n")
    assert "warning" not in runs["--mask-type"][0]


def test_export_reads_the_old_positional_output_with_a_warning(tmp_path: Path) -> None:
    """The check of the output name comes before the checkpoint is read: a file that is not a
    checkpoint then fails with its own one line."""
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    runner = CliRunner()
    res = runner.invoke(main, ["export", str(junk)])
    assert res.exit_code == 2 and res.stderr == "Error: export: -o/--out is required (the ONNX file to write)\n"
    res = runner.invoke(main, ["export", str(junk), str(tmp_path / "a.onnx"), "-o", str(tmp_path / "b.onnx")])
    assert res.exit_code == 2 and "both given; use -o/--out" in res.stderr and res.stderr.count("\n") == 1
    for args, warned in (([str(tmp_path / "a.onnx")], True), (["-o", str(tmp_path / "a.onnx")], False)):
        res = runner.invoke(main, ["export", str(junk), *args])
        lines = res.stderr.splitlines()
        assert res.exit_code != 0 and lines[-1].startswith("Error: ") and "Traceback" not in res.output
        assert (lines[0] == "warning: the positional OUTPUT is deprecated, use -o/--out") is warned
        assert len(lines) == (2 if warned else 1), lines
        assert not (tmp_path / "a.onnx").exists()


BAD_VALUES = {  # command -> an option value that is wrong
    "mask": ["--seed", "abc"],
    "landmarks": ["--select", "middle"],
    "contact-sheet": ["--faces", "40"],
    "landmarks-model": ["--trees", "0"],
    "build": ["--ratio", "1.5"],
    "audit": ["--join-on", "nothing"],
    "card": ["--thumbnails", "--nope"],
    "eval": ["--cases", "4"],
    "make-bin": ["--quality", "0"],
    "train": ["--set", "lr=abc"],
    "export": ["--opset", "x"],
}


@pytest.mark.parametrize("name", sorted(ARGS))
def test_cli_errors_are_one_line_without_traceback(name: str, tmp_path: Path) -> None:
    res = CliRunner().invoke(main, [name, *_args(name, tmp_path), *BAD_VALUES[name]])
    assert res.exit_code not in (0, None), res.output
    assert res.stderr.startswith("Error: ") and res.stderr.count("\n") == 1, res.stderr
    assert "Traceback" not in res.output


def test_train_set_beats_a_flag_and_dotted_keys_merge(tmp_path: Path) -> None:
    """``--set`` values are given like flags (over the YAML) and win over a flag of the same key;
    a dotted key sets one entry of a mapping and keeps the YAML's others."""
    conf = tmp_path / "t.yaml"
    conf.write_text("shards: x-*.tar\nlr: 0.5\nmethod_options: {m: 0.4}\nbatch_size: 16\n")
    res = CliRunner().invoke(main, ["train", "-c", str(conf), "--lr", "0.3", "--set", "lr=0.2",
                                    "--set", "method_options.s=32", "--print-config"])
    assert res.exit_code == 0, res.output
    got = yaml.safe_load(res.stdout)
    assert got["lr"] == 0.2 and got["method_options"] == {"m": 0.4, "s": 32} and got["batch_size"] == 16
    assert "quiet" not in got and "config" not in got  # command-line only, never in a run's config
