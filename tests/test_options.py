"""maskgen.options: one schema gives the click options, the keyword arguments and the YAML
keys of a stage, with the same validation and messages, and given values beat the YAML."""

from __future__ import annotations

import inspect
import pickle
import subprocess
import sys
import warnings
from pathlib import Path

import click
import pytest
import yaml
from click.testing import CliRunner

from maskgen.errors import OptionError
from maskgen.masks.options import BACKEND, MASK_TYPE
from maskgen.options import (
    CONFIG,
    OUT,
    QUALITY,
    QUIET,
    REQUIRED,
    SEED,
    WORKERS,
    Alias,
    Config,
    Field,
    Schema,
    existing,
    find_config,
    parse_assignments,
    shipped_configs,
)

ROOT = Path(__file__).resolve().parents[1]

TOY = Schema(
    "toy",
    [
        Field("source", str, REQUIRED, "What to read.", argument=True),
        OUT,
        CONFIG,
        Field("ratio", float, 0.1, "Masked fraction.", min=0, max=1),
        Field("twins", bool, False, "Keep both images."),
        SEED,
        WORKERS,
        QUALITY.with_(aliases=(Alias(flags=("--jpeg-quality",), key="jpeg_quality"),)),
        BACKEND.with_(aliases=(Alias(flags=("--detector",), key="detector"),)),
        MASK_TYPE.with_(flags=("--mask-type",)),
        Field("mode", str, "resume", "Resume or overwrite.", choices=("resume", "overwrite")),
        Field("mask_types", list[str] | None, None, "Restrict mask types."),
        Field("betas", list[float], [0.9, 0.999], "AdamW betas.", min=0, max=1, max_open=True),
        Field("max_images", int | None, None, "Cap per identity.", min=1),
        Field("mask_mix", str | dict | None, None, "Recipe name or mapping."),
        Field("method_options", dict, {}, "Options of the method.", flags=()),
        Field("ema", float | None, None, "EMA decay.", min=0, max=1, min_open=True, max_open=True),
        QUIET.with_(aliases=(Alias(flags=("--progress",), key="progress", invert=True),)),
        Field("align", bool, True, "Aligned crops (else the original frame).",
              aliases=(Alias(flags=("--output",), key="output", values={"aligned": True, "original": False}),)),
    ],
    checks=[lambda c: "ratio 1 needs twins" if c.ratio == 1 and not c.twins else None],
)


@TOY.entry(positional=("source", "out"))
def run_toy(cfg: Config) -> Config:
    """The toy stage's Python entry."""
    return cfg


@TOY.command("toy")
@click.option("--print-config", is_flag=True, help="Print the resolved config and exit.")
def toy_cmd(cfg: Config, print_config: bool) -> None:
    """A toy command."""
    if print_config:
        click.echo(TOY.dump(cfg), nl=False)
    else:
        click.echo(repr(dict(cfg)))


def _yaml(tmp_path: Path, data: dict, name: str = "cfg.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data))
    return p


def _run(*args: str) -> click.testing.Result:
    return CliRunner().invoke(toy_cmd, list(args), catch_exceptions=False)


def _cfg_of(result: click.testing.Result) -> dict:
    assert result.exit_code == 0, result.output
    return eval(result.output)  # repr of a dict of plain values


# ---------------------------------------------------------------- precedence


def test_explicit_keyword_beats_yaml_even_when_it_equals_the_default(tmp_path: Path) -> None:
    y = _yaml(tmp_path, {"ratio": 0.5, "seed": 7, "twins": True})
    cfg = run_toy("lfw", "out", config=y, ratio=0.1)  # 0.1 is also the default
    assert cfg.ratio == 0.1 and cfg.seed == 7 and cfg.twins is True
    assert cfg.origin("ratio") == "given" and cfg.origin("seed") == "config" and cfg.origin("quality") == "default"
    assert cfg.given == {"source", "out", "ratio"}


def test_explicit_flag_beats_yaml_even_when_it_equals_the_default(tmp_path: Path) -> None:
    y = _yaml(tmp_path, {"ratio": 0.5, "seed": 7, "out": "from-yaml", "twins": True})
    cfg = _cfg_of(_run("lfw", "-c", str(y), "--ratio", "0.1", "--no-twins"))
    assert cfg["ratio"] == 0.1 and cfg["seed"] == 7 and cfg["out"] == "from-yaml" and cfg["twins"] is False


def test_unset_flags_leave_the_yaml_alone(tmp_path: Path) -> None:
    y = _yaml(tmp_path, {"ratio": 0.5, "mask_types": ["n95"], "quality": 80, "source": "lfw", "out": "o"})
    cfg = _cfg_of(_run("--config", str(y)))
    assert cfg["ratio"] == 0.5 and cfg["mask_types"] == ["n95"] and cfg["quality"] == 80


def test_explicit_none_beats_yaml(tmp_path: Path) -> None:
    y = _yaml(tmp_path, {"max_images": 5})
    assert run_toy("lfw", "o", config=y).max_images == 5
    assert run_toy("lfw", "o", config=y, max_images=None).max_images is None


def test_mapping_as_config_and_dotted_keys() -> None:
    cfg = run_toy("lfw", "o", config={"method_options": {"s": 64, "m": 0.5}}, **{"method_options.s": 32})
    assert cfg.method_options == {"s": 32, "m": 0.5}
    with pytest.raises(OptionError, match=r"^ratio\.x: ratio is not a mapping"):
        run_toy("lfw", "o", **{"ratio.x": 1})


# ---------------------------------------------------------------- types, ranges, choices


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ratio": 1.5}, "ratio: must be within [0, 1], got 1.5"),
        ({"ratio": "abc"}, "ratio: expected a number, got 'abc'"),
        ({"ratio": True}, "ratio: expected a number, got True"),
        ({"quality": 0}, "quality: must be within [1, 100], got 0"),
        ({"quality": 9.5}, "quality: expected an integer, got 9.5"),
        ({"workers": 0}, "workers: must be at least 1, got 0"),
        ({"seed": -1}, "seed: must be at least 0, got -1"),
        ({"mode": "overwrit"}, "mode: must be one of resume, overwrite; got 'overwrit' (did you mean 'overwrite'?)"),
        ({"twins": "maybe"}, "twins: expected true or false, got 'maybe'"),
        ({"mode": 3}, "mode: expected text, got 3 (quote it in YAML)"),
        ({"betas": [0.9, 1.0]}, "betas: item 2: must be within [0, 1), got 1"),
        ({"ema": 1}, "ema: must be within (0, 1), got 1"),
        ({"mask_mix": 3}, "mask_mix: expected text or a mapping, got 3"),
        ({"method_options": [1]}, "method_options: expected a mapping, got [1]"),
        ({"backend": "dlb"}, "backend: must be one of auto, cnn, dlib"),
        ({"mask_type": "n99"}, "mask_type: must be one of surgical"),
        ({"rato": 0.2}, "rato: unknown toy option; did you mean 'ratio'?"),
        ({"ratio": 1.0}, "toy: ratio 1 needs twins"),
    ],
)
def test_keyword_errors_are_one_line_option_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(OptionError) as info:
        run_toy("lfw", "o", **kwargs)
    text = str(info.value)
    assert text.startswith(message) and "\n" not in text


def test_values_are_converted_to_their_type() -> None:
    cfg = run_toy("lfw", Path("o"), ratio=1, quality="90", betas="0.5, 0.25", mask_types="n95,kn95",
                  twins="yes", max_images="null", mask_mix={"types": {"n95": 1}}, workers=2.0)
    assert cfg.out == "o" and cfg.ratio == 1.0 and isinstance(cfg.ratio, float) and cfg.quality == 90
    assert cfg.betas == [0.5, 0.25] and cfg.mask_types == ["n95", "kn95"] and cfg.twins is True
    assert cfg.max_images is None and cfg.mask_mix == {"types": {"n95": 1}} and cfg.workers == 2
    assert run_toy("lfw", "o", mask_mix="mtarcface").mask_mix == "mtarcface"
    assert run_toy("lfw", "o", mask_type="pack:surgical_blue").mask_type == "pack:surgical_blue"


def test_required_fields() -> None:
    with pytest.raises(OptionError, match=r"^toy: out is required"):
        run_toy("lfw")
    r = CliRunner().invoke(toy_cmd, ["lfw"])
    assert r.exit_code == 2 and r.output.strip().splitlines()[-1].startswith("Error: toy: -o/--out is required")


def test_yaml_gives_the_same_messages_as_keywords(tmp_path: Path) -> None:
    y = _yaml(tmp_path, {"ratio": 1.5})
    with pytest.raises(OptionError) as info:
        run_toy("lfw", "o", config=y)
    assert str(info.value) == f"{y}: ratio: must be within [0, 1], got 1.5"
    with pytest.raises(OptionError, match=r"cfg.yaml: seeds: unknown toy option; did you mean 'seed'\?"):
        run_toy("lfw", "o", config=_yaml(tmp_path, {"seeds": 1}))
    with pytest.raises(OptionError, match="cannot be set in a config file"):
        run_toy("lfw", "o", config=_yaml(tmp_path, {"config": "other.yaml"}))
    with pytest.raises(OptionError, match="a toy config is a mapping"):
        run_toy("lfw", "o", config=_yaml(tmp_path, [1, 2]))  # type: ignore[arg-type]
    bad = tmp_path / "bad.yaml"
    bad.write_text("ratio: [1,\n")
    with pytest.raises(OptionError, match=r"bad.yaml: not valid YAML \(line \d+\)"):
        run_toy("lfw", "o", config=bad)


def test_yaml_reads_numbers_that_yaml_leaves_as_text(tmp_path: Path) -> None:
    # YAML 1.1 reads 5e-1 (no dot) as a string: the schema still gets the number
    y = tmp_path / "c.yaml"
    y.write_text("ratio: 5e-1\nmask-types: n95, cloth\n")
    cfg = run_toy("lfw", "o", config=y)
    assert cfg.ratio == 0.5 and cfg.mask_types == ["n95", "cloth"]


def test_command_line_gives_the_same_messages(tmp_path: Path) -> None:
    for args, message in [
        (["--ratio", "1.5"], "Error: --ratio: must be within [0, 1], got 1.5"),
        (["--ratio", "abc"], "Error: --ratio: expected a number, got 'abc'"),
        (["--quality", "101"], "Error: --quality: must be within [1, 100], got 101"),
        (["--backend", "dlb"], "Error: --backend: must be one of auto, cnn, dlib"),
        (["--mask-types", "a", "--betas", "2"], "Error: --betas: item 1: must be within [0, 1), got 2"),
        (["-c", str(_yaml(tmp_path, {"ratio": 2}))], f"Error: {tmp_path / 'cfg.yaml'}: ratio: must be within"),
        (["-c", "no-such-config"], "Error: no-such-config: no such config file, nor a shipped config"),
    ]:
        r = CliRunner().invoke(toy_cmd, ["lfw", "-o", "o", *args])
        lines = r.output.strip().splitlines()
        assert r.exit_code == 2, (args, r.output)
        assert len(lines) == 1 and lines[0].startswith(message), (args, r.output)


# ---------------------------------------------------------------- click specifics


def test_lists_take_commas_and_repeats() -> None:
    cfg = _cfg_of(_run("lfw", "-o", "o", "--mask-types", "n95,kn95", "--mask-types", "cloth"))
    assert cfg["mask_types"] == ["n95", "kn95", "cloth"]


def test_short_help_and_generated_options() -> None:
    r = CliRunner().invoke(toy_cmd, ["-h"])
    assert r.exit_code == 0
    text = r.output
    for flag in ("-o, --out DIR", "-c, --config FILE|NAME", "--ratio", "--twins / --no-twins", "-q, --quiet",
                 "--print-config", "--mask-type TYPE", "[resume|overwrite]", "[default: 0.1]"):
        assert flag in text, flag
    for hidden in ("--jpeg-quality", "--detector", "--progress", "--method-options"):
        assert hidden not in text


def test_deprecated_aliases(tmp_path: Path) -> None:
    r = CliRunner().invoke(toy_cmd, ["lfw", "-o", "o", "--detector", "dlib", "--jpeg-quality", "80", "--progress"])
    assert r.exit_code == 0
    cfg = eval(r.stdout)
    assert cfg["backend"] == "dlib" and cfg["quality"] == 80 and cfg["quiet"] is False
    assert r.stderr.splitlines() == ["warning: --jpeg-quality is deprecated, use --quality",
                                     "warning: --detector is deprecated, use --backend",
                                     "warning: --progress is deprecated, use -q/--quiet"]
    r = CliRunner().invoke(toy_cmd, ["lfw", "-o", "o", "--detector", "dlib", "--backend", "aligned"])
    assert r.exit_code == 2 and "Error: --detector and --backend both given; use --backend" in r.output
    with pytest.warns(FutureWarning, match="'jpeg_quality' is deprecated, use 'quality'"):
        assert run_toy("lfw", "o", jpeg_quality=70).quality == 70
    with pytest.warns(FutureWarning):
        cfg2 = run_toy("lfw", "o", config=_yaml(tmp_path, {"detector": "aligned", "progress": False}))
    assert cfg2.backend == "aligned"
    with pytest.warns(FutureWarning), pytest.raises(OptionError, match="given twice"):
        run_toy("lfw", "o", jpeg_quality=70, quality=71)


def test_quiet_is_a_flag_without_a_no_form() -> None:
    assert _cfg_of(_run("lfw", "-o", "o", "-q"))["quiet"] is True
    assert _cfg_of(_run("lfw", "-o", "o"))["quiet"] is False
    assert CliRunner().invoke(toy_cmd, ["lfw", "-o", "o", "--no-quiet"]).exit_code == 2


# ---------------------------------------------------------------- resolved config


def test_resolved_config_round_trip(tmp_path: Path) -> None:
    cfg = run_toy("lfw", "o", ratio=0.3, mask_types=["n95"], method_options={"s": 32},
                  mask_mix={"types": {"n95": 2}}, quiet=True)
    p = TOY.write(cfg, tmp_path / "toy.yaml")
    data = yaml.safe_load(p.read_text())
    assert list(data) == [f.name for f in TOY if f.yaml]  # schema order, no CLI-only fields
    assert "config" not in data
    again = run_toy(config=p)
    assert again == cfg and again.origin("ratio") == "config"
    assert again.to_dict() == data and "config" in again and "config" not in again.to_dict()


def test_print_config_then_reload_via_cli(tmp_path: Path) -> None:
    r = _run("lfw", "-o", "o", "--ratio", "0.25", "--print-config")
    assert r.exit_code == 0
    p = tmp_path / "printed.yaml"
    p.write_text(r.output)
    assert _cfg_of(_run("-c", str(p)))["ratio"] == 0.25


def test_config_is_read_only_and_replace_validates() -> None:
    cfg = run_toy("lfw", "o")
    with pytest.raises(AttributeError, match="read-only"):
        cfg.ratio = 0.5  # type: ignore[misc]
    assert cfg.replace(ratio=0.5).ratio == 0.5 and cfg.ratio == 0.1
    with pytest.raises(OptionError, match="ratio: must be within"):
        cfg.replace(ratio=5)
    with pytest.raises(AttributeError):
        cfg.nope  # noqa: B018


def test_config_pickles_for_worker_processes() -> None:
    cfg = run_toy("lfw", "o", ratio=0.2)
    back = pickle.loads(pickle.dumps(cfg))
    assert back == cfg and back.schema is TOY and back.origin("ratio") == "given"


def test_config_unpickles_in_a_fresh_process() -> None:
    from maskgen.masks import options as mo  # noqa: F401  # a module that defines no schema

    schema_src = (
        "from maskgen.options import Schema, Field, SEED\n"
        "S = Schema('pickled', [SEED, Field('name', str, 'x')])\n"
    )
    code = (
        "import pickle, sys, types\n"
        f"mod = types.ModuleType('toy_schema_mod'); exec({schema_src!r}, mod.__dict__); "
        "sys.modules['toy_schema_mod'] = mod\n"
        "data = pickle.loads(sys.stdin.buffer.read()); print(data.seed, data.name, type(data).__name__)\n"
    )
    ns: dict = {"__name__": "toy_schema_mod"}
    exec(schema_src, ns)
    blob = pickle.dumps(ns["S"].resolve(seed=5))
    out = subprocess.run([sys.executable, "-c", code], input=blob, capture_output=True, check=True)
    assert out.stdout.decode().split() == ["5", "x", "Config"]


def test_entry_signature_is_the_schema() -> None:
    sig = inspect.signature(run_toy)
    names = list(sig.parameters)
    assert names[:2] == ["source", "out"] and names[-1] == "config"
    assert sig.parameters["ratio"].default == 0.1 and sig.parameters["ratio"].kind is inspect.Parameter.KEYWORD_ONLY
    assert run_toy.__doc__ == "The toy stage's Python entry."
    with pytest.raises(TypeError, match="positional"):
        run_toy("lfw", "o", "extra")


# ---------------------------------------------------------------- schema rules, shared fields


def test_schema_rejects_clashing_definitions() -> None:
    with pytest.raises(ValueError, match="defined twice"):
        Schema("clash1", [SEED, SEED])
    with pytest.raises(ValueError, match="flag -o"):
        Schema("clash2", [OUT, Field("other", str, "x", flags=("-o",))])
    with pytest.raises(ValueError, match="keeps its name"):
        OUT.with_(name="output")
    with pytest.raises(TypeError, match="unsupported field type"):
        Field("x", set)


def test_shared_fields_are_one_definition() -> None:
    runs = OUT.with_(default="runs", help="Folder of run folders.")
    assert runs.name == OUT.name and runs.cli_flags == ("-o", "--out") == OUT.cli_flags
    assert QUIET.cli_flags == ("-q", "--quiet") and CONFIG.cli_flags == ("-c", "--config")
    assert QUALITY.coerce(95) == 95 and WORKERS.coerce(None) is None
    from maskgen.masks import BACKENDS, MASK_TYPES
    from maskgen.masks.options import mask_type_choices

    assert BACKEND.choice_list() == BACKENDS and BACKENDS[0] == "auto"
    assert set(MASK_TYPES) < set(mask_type_choices()) and MASK_TYPE.coerce("random") == "random"
    restrict = MASK_TYPE.with_(type=list[str] | None, default=None)
    assert restrict.coerce("n95,pack:x") == ["n95", "pack:x"]
    with pytest.raises(OptionError, match="got 'n99'"):
        restrict.coerce(["n95", "n99"])


def test_markdown_lists_every_visible_option() -> None:
    table = TOY.markdown()
    for f in TOY:
        assert f"`{f.name}`" in table
    assert "`-o/--out`" in table and "(config only)" in table and "`--twins / --no-twins`" in table


# ---------------------------------------------------------------- shipped configs


def test_shipped_configs_are_found_by_name() -> None:
    names = shipped_configs()
    assert "train_tiny_cpu" in names and "methods/huang_bfm" in names and "build_lfw" in names
    for spec in ("train_tiny_cpu", "train_tiny_cpu.yaml", "configs/train_tiny_cpu.yaml", "methods/huang_bfm"):
        p = find_config(spec)
        assert p.is_file() and p.name.startswith(Path(spec).stem), spec
    with pytest.raises(OptionError, match="did you mean 'train_tiny_cpu'"):
        find_config("train_tiny_cp")
    with pytest.raises(OptionError, match="no such config"):
        find_config("../pyproject.toml")


def test_shipped_configs_are_the_repository_configs() -> None:
    """The package's configs folder is the repository's configs/ (one copy, no drift)."""
    shipped = {n for n in shipped_configs()}
    repo = {p.relative_to(ROOT / "configs").with_suffix("").as_posix() for p in (ROOT / "configs").rglob("*.yaml")}
    assert shipped == repo


def test_no_warning_for_plain_use() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run_toy("lfw", "o", quality=90, backend="dlib")


def test_key_value_assignments_are_typed() -> None:
    sets = parse_assignments(["ratio=0.3", "method_options.s=32", "mask-types=[n95, cloth]", "twins=true"])
    cfg = run_toy("lfw", "o", **sets)
    assert cfg.ratio == 0.3 and cfg.method_options == {"s": 32} and cfg.mask_types == ["n95", "cloth"] and cfg.twins
    with pytest.raises(OptionError, match=r"^ratio: expected a number, got 'abc'"):
        run_toy("lfw", "o", **parse_assignments(["ratio=abc"]))
    with pytest.raises(OptionError, match="expected KEY=VALUE"):
        parse_assignments(["ratio"])


def test_path_validators(tmp_path: Path) -> None:
    f = tmp_path / "a.txt"
    f.write_text("x")
    labels = Field("labels", str | None, None, validator=existing("file"))
    assert labels.coerce(str(f)) == str(f) and labels.coerce(None) is None
    with pytest.raises(OptionError, match=r"^labels: not a file: "):
        labels.coerce(str(tmp_path))
    with pytest.raises(OptionError, match=r"^--images: no such folder: "):
        Field("images", str, validator=existing("dir")).coerce(str(tmp_path / "nope"), "--images")
    assert existing("any")(str(tmp_path)) is None


def test_alias_with_mapped_values(tmp_path: Path) -> None:
    r = CliRunner().invoke(toy_cmd, ["lfw", "-o", "o", "--output", "original"])
    assert r.exit_code == 0 and eval(r.stdout)["align"] is False
    assert "warning: --output is deprecated, use --align" in r.stderr
    r = CliRunner().invoke(toy_cmd, ["lfw", "-o", "o", "--output", "cropped"])
    assert r.exit_code == 2 and "Error: --output: must be one of aligned, original; got 'cropped'" in r.output
    with pytest.warns(FutureWarning):
        assert run_toy("lfw", "o", config=_yaml(tmp_path, {"output": "original"})).align is False
    with pytest.warns(FutureWarning):
        assert run_toy("lfw", "o", output="aligned").align is True
    assert _cfg_of(_run("lfw", "-o", "o", "--no-align"))["align"] is False


def test_a_stage_raises_its_own_error_class(tmp_path: Path) -> None:
    class TrainConfigError(OptionError, ValueError):
        pass

    schema = Schema("own-error", [Field("lr", float, 0.1, min=0)], error=TrainConfigError)
    with pytest.raises(TrainConfigError, match=r"^lr: must be at least 0, got -1$"):
        schema.resolve(lr=-1)
    with pytest.raises(ValueError, match="unknown own-error option"):
        schema.resolve(config={"lrr": 1})
    with pytest.raises(TrainConfigError):
        schema.resolve().replace(lr="x")


def test_text_or_list_fields_without_splitting() -> None:
    shards = Field("shards", str | list[str], REQUIRED, "Shard pattern(s).", split=None)
    schema = Schema("shards-only", [shards])

    @schema.command("s")
    def cmd(cfg: Config) -> None:
        click.echo(repr(cfg.shards))

    assert schema.resolve(shards="a-{000,001}.tar").shards == "a-{000,001}.tar"  # a brace list stays whole
    assert schema.resolve(shards=("a.tar", "b,c.tar")).shards == ["a.tar", "b,c.tar"]
    r = CliRunner().invoke(cmd, ["--shards", "x-{0,1}.tar", "--shards", "y.tar"])
    assert r.exit_code == 0 and eval(r.output) == ["x-{0,1}.tar", "y.tar"]
    r = CliRunner().invoke(cmd, ["--shards", "x-{0,1}.tar"])
    assert r.exit_code == 0 and eval(r.output) == "x-{0,1}.tar"
