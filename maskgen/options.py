"""One declaration per option: the click flags, the Python keyword arguments and the YAML keys
of a stage all come from its :class:`Schema`, and are validated by the same code.

A :class:`Field` says what an option is (name, type, default, help, flag names, choices,
range, validator, deprecated aliases). A stage lists its fields in a ``Schema``; from it come

- the click options of its command (``@SCHEMA.command()`` or ``@SCHEMA.options()``),
- its Python entry point (``@SCHEMA.entry(positional=("source", "out"))``), whose keyword
  arguments are the fields,
- YAML loading (``--config FILE`` or the name of a config shipped with maskgen), and
- the resolved config, written back with :meth:`Schema.write` next to the outputs.

Precedence is always: defaults < the config file < what the caller gave. "Given" is known, not
guessed: on the command line from click's ``ParameterSource``, in Python from the keyword
arguments actually passed, so ``build(config="x.yaml", ratio=0.1)`` means ratio 0.1 whatever
the YAML says, even when 0.1 is also the default.

Every invalid value, wherever it comes from, raises :class:`maskgen.errors.OptionError` with
one line that names where it came from and what is wrong::

    --ratio: must be within [0, 1], got 1.5           (command line)
    ratio: must be within [0, 1], got 1.5             (keyword argument)
    build_lfw.yaml: ratio: must be within [0, 1], got 1.5   (config file)

Options that several commands share (:data:`OUT`, :data:`SEED`, :data:`WORKERS`,
:data:`QUALITY`, :data:`QUIET`, :data:`CONFIG`; the landmark backend and mask type live with
their vocabulary in :mod:`maskgen.masks.options`) are defined once here and reused; a command
may change a shared field's default or help (``OUT.with_(default="runs")``), never its name.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import difflib
import functools
import importlib
import importlib.resources
import inspect
import math
import os
import sys
import types
import typing
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import click
import yaml

from maskgen.errors import OptionError
from maskgen.fsio import write_atomic

__all__ = [
    "CONFIG",
    "OUT",
    "QUALITY",
    "QUIET",
    "REQUIRED",
    "SEED",
    "WORKERS",
    "Alias",
    "Config",
    "Field",
    "Schema",
    "existing",
    "find_config",
    "parse_assignments",
    "shipped_configs",
]


class _Required:
    """The default of a field that has none: it must come from the caller or the config."""

    _instance: _Required | None = None

    def __new__(cls) -> _Required:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "REQUIRED"

    def __reduce__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()

TRUE_WORDS = frozenset({"true", "yes", "on", "1", "y"})
FALSE_WORDS = frozenset({"false", "no", "off", "0", "n"})


# --------------------------------------------------------------------------- fields


@dataclass(frozen=True)
class Alias:
    """An old spelling of a field, still accepted with a deprecation warning.

    ``flags``: hidden command-line spellings (``("--detector",)``); ``key``: the old YAML key
    and keyword argument (``"detector"``); ``invert``: for a boolean field, the old name meant
    the opposite (``--progress`` for ``--quiet``)."""

    flags: tuple[str, ...] = ()
    key: str | None = None
    invert: bool = False
    values: Mapping[str, Any] | None = None  # old value -> new value (--output original -> align false)

    def translate(self, value: Any, where: str) -> Any:
        """An old spelling's value in the new field's terms."""
        if self.values is not None:
            if value not in self.values:
                raise OptionError(f"{where}: must be one of {', '.join(map(str, self.values))}; got {value!r}")
            return self.values[value]
        if self.invert:
            try:
                return not _coerce_kind(value, "bool")
            except _Bad as exc:
                raise OptionError(f"{where}: {exc}") from None
        return value


@dataclass(frozen=True)
class Field:
    """One option of a stage.

    ``type`` is a Python type expression: ``int``, ``float``, ``str``, ``bool``, ``dict``,
    ``list[str]``, ``list[float]``, a union such as ``str | dict``, ``X | None`` for an
    optional value. ``flags``: the command-line spellings (default ``--<name-with-dashes>``;
    ``()``: no flag, YAML and keyword only). ``choices`` may be a callable so a vocabulary is
    read from its owner when needed. ``min``/``max`` bound numbers (and list items), inclusive
    unless ``min_open``/``max_open``. ``validator(value)`` returns an error text or None.
    ``argument``: a positional command-line argument instead of an option. ``yaml``: settable
    in a config file and written to the resolved config."""

    name: str
    type: Any = str
    default: Any = None
    help: str = ""
    flags: tuple[str, ...] | None = None
    choices: Sequence[str] | Callable[[], Iterable[str]] | None = None
    min: float | None = None
    max: float | None = None
    min_open: bool = False
    max_open: bool = False
    validator: Callable[[Any], str | None] | None = None
    argument: bool = False
    aliases: tuple[Alias, ...] = ()
    yaml: bool = True
    hidden: bool = False
    metavar: str | None = None
    negatable: bool = True  # booleans: also a --no-<flag> spelling
    split: str | None = ","  # lists: the separator of a list written as one text (None: no split)

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise ValueError(f"field name {self.name!r} is not an identifier")
        _kinds(self.type)  # fail at definition time on a type the schema cannot read

    def with_(self, **changes: Any) -> Field:
        """This field with another default, help, ... (the name stays: one name per concept)."""
        if "name" in changes and changes["name"] != self.name:
            raise ValueError("a shared field keeps its name; define a new field instead")
        return dataclasses.replace(self, **changes)

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    @property
    def cli_flags(self) -> tuple[str, ...]:
        if self.argument:
            return ()
        if self.flags is None:
            return ("--" + self.name.replace("_", "-"),)
        return tuple(self.flags)

    @property
    def is_bool(self) -> bool:
        return _kinds(self.type)[1] == ["bool"]

    @property
    def is_list(self) -> bool:
        """A list type (or a union with one): a repeatable flag on the command line."""
        return any(isinstance(k, tuple) for k in _kinds(self.type)[1])

    def choice_list(self) -> tuple[str, ...] | None:
        if self.choices is None:
            return None
        values = self.choices() if callable(self.choices) else self.choices
        return tuple(values)

    def label(self) -> str:
        """How the command line names this field in messages."""
        if self.argument:
            return self.name.upper()
        return "/".join(self.cli_flags) or self.name

    # ---- validation

    def coerce(self, value: Any, where: str | None = None) -> Any:
        """The value converted to the field's type and checked; ``where`` names its origin in
        the error message (``--ratio``, ``ratio``, ``file.yaml: ratio``)."""
        where = where or self.name
        try:
            out = _coerce(value, self.type, self.split)
            if out is not None:
                self._check(out)
        except _Bad as exc:
            raise OptionError(f"{where}: {exc}") from None
        return out

    def _check(self, value: Any) -> None:
        items = value if isinstance(value, list) else [value]
        choices = self.choice_list()
        for i, v in enumerate(items):
            try:
                if choices is not None and isinstance(v, str) and v not in choices:
                    close = difflib.get_close_matches(v, choices, n=1)
                    hint = f" (did you mean {close[0]!r}?)" if close else ""
                    raise _Bad(f"must be one of {', '.join(choices)}; got {v!r}{hint}")
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    self._check_range(v)
            except _Bad as exc:
                if isinstance(value, list):
                    raise _Bad(f"item {i + 1}: {exc}") from None
                raise
        if self.validator is not None:
            problem = self.validator(value)
            if problem:
                raise _Bad(problem)

    def _check_range(self, v: float) -> None:
        lo, hi = self.min, self.max
        low_bad = lo is not None and (v <= lo if self.min_open else v < lo)
        high_bad = hi is not None and (v >= hi if self.max_open else v > hi)
        if not (low_bad or high_bad):
            return
        if lo is not None and hi is not None:
            text = f"{'(' if self.min_open else '['}{_num(lo)}, {_num(hi)}{')' if self.max_open else ']'}"
            raise _Bad(f"must be within {text}, got {_num(v)}")
        if lo is not None:
            raise _Bad(f"must be {'greater than' if self.min_open else 'at least'} {_num(lo)}, got {_num(v)}")
        raise _Bad(f"must be {'less than' if self.max_open else 'at most'} {_num(hi)}, got {_num(v)}")

    def describe_default(self) -> str:
        if self.required:
            return "required"
        if self.default is None:
            return ""
        if isinstance(self.default, bool):
            return "true" if self.default else "false"
        if isinstance(self.default, list):
            return ",".join(map(str, self.default))
        return str(self.default)


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


class _Bad(Exception):
    """A value problem without its origin (the field adds it)."""


# type expressions -> kinds: "bool" | "int" | "float" | "str" | "dict" | "any" | ("list", kind)


@functools.lru_cache(maxsize=None)
def _kinds_cached(tp: Any) -> tuple[bool, tuple]:
    nullable = False
    members: list = []
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
    else:
        args = (tp,)
    for a in args:
        if a is type(None):
            nullable = True
            continue
        o = typing.get_origin(a)
        if o in (list, tuple, Sequence):
            (elem,) = typing.get_args(a)[:1] or (str,)
            members.append(("list", _simple_kind(elem)))
        else:
            members.append(_simple_kind(a))
    return nullable, tuple(members)


def _simple_kind(tp: Any) -> str:
    table = {bool: "bool", int: "int", float: "float", str: "str", dict: "dict", Any: "any",
             Path: "str", os.PathLike: "str"}
    if typing.get_origin(tp) is dict:
        return "dict"
    if tp in table:
        return table[tp]
    raise TypeError(f"options schema: unsupported field type {tp!r}")


def _kinds(tp: Any) -> tuple[bool, list]:
    nullable, members = _kinds_cached(tp)
    return nullable, list(members)


def _type_words(tp: Any) -> str:
    words = {"bool": "true or false", "int": "an integer", "float": "a number", "str": "text",
             "dict": "a mapping", "any": "a value"}
    nullable, members = _kinds(tp)
    parts = [f"a list of {words[m[1]].removeprefix('a ').removeprefix('an ')}s" if isinstance(m, tuple)
             else words[m] for m in members]
    return " or ".join(parts + (["null"] if nullable and not parts else []))


def _coerce(value: Any, tp: Any, split: str | None = ",") -> Any:
    nullable, members = _kinds(tp)
    if value is None or (isinstance(value, str) and value.strip().lower() in ("null", "none") and nullable
                         and "str" not in members):
        if nullable:
            return None
        raise _Bad(f"expected {_type_words(tp)}, got nothing (null)")
    problems = []
    for kind in members:
        try:
            return _coerce_kind(value, kind, split)
        except _Bad as exc:
            problems.append(str(exc))
    if len(members) == 1:
        raise _Bad(problems[0])
    raise _Bad(f"expected {_type_words(tp)}, got {_show(value)}")


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _split(text: str, sep: str | None) -> list[str]:
    if sep is None:
        return [text]
    return [s.strip() for s in text.split(sep) if s.strip()]


def _coerce_kind(value: Any, kind: Any, split: str | None = ",") -> Any:
    if isinstance(kind, tuple):  # ("list", elem)
        elem = kind[1]
        if isinstance(value, str):
            items: list = _split(value, split)
        elif isinstance(value, (list, tuple)):
            items = []
            for v in value:  # repeated flags may each hold a comma list
                if isinstance(v, str) and elem == "str":
                    items.extend(_split(v, split))
                else:
                    items.append(v)
        else:
            raise _Bad(f"expected a list or a comma-separated text, got {_show(value)}")
        out = []
        for i, v in enumerate(items):
            try:
                out.append(_coerce_kind(v, elem))
            except _Bad as exc:
                raise _Bad(f"item {i + 1}: {exc}") from None
        return out
    if kind == "any":
        return value
    if kind == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in TRUE_WORDS | FALSE_WORDS:
            return value.strip().lower() in TRUE_WORDS
        raise _Bad(f"expected true or false, got {_show(value)}")
    if kind == "int":
        if isinstance(value, bool):
            raise _Bad(f"expected an integer, got {_show(value)}")
        if isinstance(value, int):
            return int(value)
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip().replace("_", ""))
            except ValueError:
                pass
        raise _Bad(f"expected an integer, got {_show(value)}")
    if kind == "float":
        if isinstance(value, bool):
            raise _Bad(f"expected a number, got {_show(value)}")
        if isinstance(value, (int, float)):
            out = float(value)
        elif isinstance(value, str):
            try:
                out = float(value.strip())  # also YAML's "5e-4", which YAML reads as text
            except ValueError:
                raise _Bad(f"expected a number, got {_show(value)}") from None
        else:
            raise _Bad(f"expected a number, got {_show(value)}")
        if math.isnan(out):
            raise _Bad("expected a number, got nan")
        return out
    if kind == "str":
        if isinstance(value, str):
            return value
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        raise _Bad(f"expected text, got {_show(value)} (quote it in YAML)")
    if kind == "dict":
        if isinstance(value, Mapping):
            bad = [k for k in value if not isinstance(k, str)]
            if bad:
                raise _Bad(f"mapping keys must be text, got {_show(bad[0])}")
            return copy.deepcopy(dict(value))
        raise _Bad(f"expected a mapping, got {_show(value)}")
    raise TypeError(kind)


# --------------------------------------------------------------------------- resolved config

ORIGIN_DEFAULT = "default"
ORIGIN_CONFIG = "config"
ORIGIN_GIVEN = "given"


class Config(Mapping[str, Any]):
    """The resolved options of one run: read-only, attribute or item access.

    ``cfg.origin(name)`` says where a value came from (``default``, ``config``, ``given``);
    :meth:`replace` makes a validated copy with some values changed."""

    __slots__ = ("_schema", "_values", "_origins")

    def __init__(self, schema: Schema, values: dict[str, Any], origins: dict[str, str]) -> None:
        object.__setattr__(self, "_schema", schema)
        object.__setattr__(self, "_values", values)
        object.__setattr__(self, "_origins", origins)

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(f"{self._schema.name} has no option {name!r}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("a resolved config is read-only; use cfg.replace(name=value)")

    def __getitem__(self, name: str) -> Any:
        return self._values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Config):
            return self._schema.name == other._schema.name and self._values == other._values
        return NotImplemented

    def __hash__(self) -> int:  # read-only, but values may be lists: identity hash
        return id(self)

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self._values.items())
        return f"{self._schema.name}.Config({inner})"

    def __reduce__(self) -> tuple:
        # pickles small and without the callables of the schema (Ray tasks receive configs)
        return (_unpickle_config, (self._schema.module, self._schema.name, self._values, self._origins))

    @property
    def schema(self) -> Schema:
        return self._schema

    def origin(self, name: str) -> str:
        return self._origins[name]

    @property
    def given(self) -> frozenset[str]:
        """Names the caller gave explicitly (command line or keyword argument)."""
        return frozenset(k for k, o in self._origins.items() if o == ORIGIN_GIVEN)

    def to_dict(self) -> dict[str, Any]:
        """The options a config file holds (as :meth:`Schema.dump` writes them), copied."""
        return {k: copy.deepcopy(v) for k, v in self._values.items() if self._schema.fields[k].yaml}

    def replace(self, **changes: Any) -> Config:
        with self._schema._errors():
            return self._schema._apply(self._values, self._origins, self._schema._label(changes))


def _unpickle_config(module: str, name: str, values: dict, origins: dict) -> Config:
    """A config in another process: its schema is found again by importing its module."""
    if name not in Schema.registry or Schema.registry[name].module != module:
        importlib.import_module(module)
    return Config(Schema.registry[name], values, origins)


# --------------------------------------------------------------------------- the schema


class Schema:
    """The options of one stage (``build``, ``train``, ``mask`` ...), in display order.

    ``checks`` are cross-field rules: ``check(cfg) -> error text | None``."""

    registry: dict[str, Schema] = {}

    def __init__(self, name: str, fields: Iterable[Field], *,
                 checks: Iterable[Callable[[Config], str | None]] = (), module: str | None = None,
                 error: type[OptionError] = OptionError) -> None:
        self.name = name
        self.error = error  # the OptionError subclass this stage's callers catch
        # where the schema is defined: a pickled Config finds it again there (Ray workers)
        self.module = module or sys._getframe(1).f_globals.get("__name__", "__main__")
        self.fields: dict[str, Field] = {}
        self.checks = list(checks)
        flags: dict[str, str] = {}
        keys: dict[str, str] = {}
        for f in fields:
            if f.name in self.fields:
                raise ValueError(f"{name}: field {f.name!r} defined twice")
            self.fields[f.name] = f
            for fl in f.cli_flags + tuple(x for a in f.aliases for x in _flag_names(a.flags)):
                for part in _flag_names((fl,)):
                    if part in flags:
                        raise ValueError(f"{name}: flag {part} used by {flags[part]!r} and {f.name!r}")
                    flags[part] = f.name
            for a in f.aliases:
                if a.key:
                    if a.key in keys or a.key in self.fields:
                        raise ValueError(f"{name}: alias key {a.key!r} is taken")
                    keys[a.key] = f.name
        clash = set(keys) & set(self.fields)
        if clash:
            raise ValueError(f"{name}: alias keys {sorted(clash)} are also field names")
        self._alias_keys = keys
        Schema.registry[name] = self

    # ---- introspection

    def __iter__(self) -> Iterator[Field]:
        return iter(self.fields.values())

    def __contains__(self, name: object) -> bool:
        return name in self.fields

    def __getitem__(self, name: str) -> Field:
        return self.fields[name]

    @property
    def names(self) -> list[str]:
        return list(self.fields)

    def defaults(self) -> dict[str, Any]:
        return {f.name: copy.deepcopy(f.default) for f in self if not f.required}

    # ---- resolution

    def resolve(self, config: str | os.PathLike | Mapping[str, Any] | None = None, /,
                **given: Any) -> Config:
        """Defaults < ``config`` (a YAML file, a shipped config's name, or a mapping) <
        ``given`` keyword arguments (an explicit ``None`` sets None). Keys with dots set an
        entry inside a mapping field (``method_options.s=32``)."""
        if "config" in self.fields and "config" in given:
            if config is not None:
                raise self.error(f"{self.name}: config given twice")
            config = given.pop("config")
        with self._errors():
            return self._resolve(config, self._label(given))

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        """Option errors raised as this schema's error class (same one-line message)."""
        try:
            yield
        except OptionError as exc:
            if isinstance(exc, self.error):
                raise
            raise self.error(str(exc)) from None

    def _label(self, given: Mapping[str, Any]) -> dict[str, tuple[Any, str]]:
        """Keyword arguments keyed by field name, each with the name the caller used."""
        out: dict[str, tuple[Any, str]] = {}
        for key, value in given.items():
            name = self._canonical(key, where=key)
            if name in out:
                raise OptionError(f"{key}: given twice (also as {out[name][1]})")
            out[name] = (self._from_alias(key, value, name), key)
        return out

    def load(self, config: str | os.PathLike | Mapping[str, Any]) -> dict[str, Any]:
        """The validated values of a config file (or mapping), keyed by field name."""
        with self._errors():
            return {k: self.fields[k].coerce(v, label) for k, (v, label) in self._load(config).items()}

    def _load(self, config: str | os.PathLike | Mapping[str, Any]) -> dict[str, tuple[Any, str]]:
        if isinstance(config, Mapping):
            data, where = dict(config), "config"
        else:
            path = find_config(config)
            where = str(config)
            try:
                data = yaml.safe_load(path.read_text(encoding="utf-8"))
            except yaml.YAMLError as exc:
                mark = getattr(exc, "problem_mark", None)
                at = f" (line {mark.line + 1})" if mark is not None else ""
                raise OptionError(f"{where}: not valid YAML{at}: {getattr(exc, 'problem', exc)}") from None
            except (OSError, UnicodeDecodeError) as exc:
                raise OptionError(f"{where}: cannot read: {exc}") from None
            if data is None:
                data = {}
            if not isinstance(data, dict):
                raise OptionError(f"{where}: a {self.name} config is a mapping of option: value")
        out: dict[str, tuple[Any, str]] = {}
        for raw_key, value in data.items():
            if not isinstance(raw_key, str):
                raise OptionError(f"{where}: option names are text, got {raw_key!r}")
            key = raw_key.replace("-", "_")
            label = f"{where}: {raw_key}"
            name = self._canonical(key, where=label)
            if "." in name:
                raise OptionError(f"{label}: write nested options as a mapping in a config file")
            if not self.fields[name].yaml:
                raise OptionError(f"{label}: cannot be set in a config file")
            if name in out:
                raise OptionError(f"{label}: given twice (also as {out[name][1]})")
            out[name] = (self._from_alias(key, value, name, label), label)
        return out

    def _canonical(self, key: str, *, where: str) -> str:
        """The field name of ``key`` (dotted keys keep their tail): itself, a deprecated
        alias (warned), or an error naming the known options."""
        top, dot, rest = key.partition(".")
        if top in self.fields:
            return key
        if top in self._alias_keys:
            new = self._alias_keys[top]
            prefix = "" if where in (key, top) else f"{where}: "
            _deprecated(f"{prefix}{top!r} is deprecated, use {new!r}")
            return new + dot + rest
        known = [f.name for f in self]
        close = difflib.get_close_matches(top, known, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise OptionError(f"{where}: unknown {self.name} option; {hint}known: {', '.join(known)}")

    def _from_alias(self, key: str, value: Any, name: str, where: str | None = None) -> Any:
        """An aliased key's value in the new field's sense (inverted booleans, mapped values)."""
        for a in self.fields[name.partition(".")[0]].aliases:
            if a.key is not None and a.key == key:
                return a.translate(value, where or key)
        return value

    def _resolve(self, config: Any, given: dict[str, tuple[Any, str]], *, cli: bool = False) -> Config:
        values = self.defaults()
        origins = {k: ORIGIN_DEFAULT for k in values}
        if config is not None:
            for name, (v, label) in self._load(config).items():
                values[name] = self.fields[name].coerce(v, label)
                origins[name] = ORIGIN_CONFIG
        return self._apply(values, origins, given, cli=cli)

    def _apply(self, values: dict, origins: dict, given: dict[str, tuple[Any, str]], *,
               cli: bool = False) -> Config:
        values = copy.deepcopy(values)
        origins = dict(origins)
        dotted = []
        for key, (v, label) in given.items():
            if "." in key:
                dotted.append((key, v, label))
                continue
            values[key] = self.fields[key].coerce(v, label)
            origins[key] = ORIGIN_GIVEN
        for key, v, label in dotted:
            top, rest = key.split(".", 1)
            f = self.fields[top]
            if "dict" not in _kinds(f.type)[1]:
                raise OptionError(f"{label}: {top} is not a mapping; set it without a dot")
            base = values.get(top)
            mapping = copy.deepcopy(base) if isinstance(base, dict) else {}
            _set_dotted(mapping, rest, v, label)
            values[top] = f.coerce(mapping, label)
            origins[top] = ORIGIN_GIVEN
        missing = [f for f in self if f.required and values.get(f.name, REQUIRED) is REQUIRED]
        if missing:
            f = missing[0]
            what = f.label() if cli and (f.argument or f.cli_flags) else f.name
            raise OptionError(f"{self.name}: {what} is required" + (f" ({f.help.rstrip('.')})" if f.help else ""))
        cfg = Config(self, {f.name: values[f.name] for f in self}, {f.name: origins[f.name] for f in self})
        for check in self.checks:
            problem = check(cfg)
            if problem:
                raise OptionError(f"{self.name}: {problem}")
        return cfg

    # ---- the resolved config on disk

    def dump(self, cfg: Mapping[str, Any]) -> str:
        """YAML of every config-file option, in schema order (reloads to the same config)."""
        data = {f.name: _plain(cfg[f.name]) for f in self if f.yaml}
        return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, default_flow_style=None)

    def write(self, cfg: Mapping[str, Any], path: str | os.PathLike) -> Path:
        return write_atomic(path, self.dump(cfg))

    # ---- Python entry point

    def signature(self, positional: Sequence[str] = ()) -> inspect.Signature:
        params = []
        for name in positional:
            f = self.fields[name]
            params.append(inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                            default=None, annotation=f.type))
        for f in self:
            if f.name in positional or f.name == "config":
                continue
            default = None if f.required else f.default
            params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=default,
                                            annotation=f.type))
        if "config" in self.fields:
            params.append(inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, default=None,
                                            annotation=str | os.PathLike | Mapping | None))
        return inspect.Signature(params)

    def entry(self, *, positional: Sequence[str] = ()) -> Callable[[Callable[[Config], Any]], Callable[..., Any]]:
        """Decorate ``func(cfg)`` into ``func(*positional, config=None, **options)``: the
        keyword arguments actually passed are the given ones."""
        for name in positional:
            if name not in self.fields:
                raise ValueError(f"{self.name}: no field {name!r}")

        def deco(func: Callable[[Config], Any]) -> Callable[..., Any]:
            @functools.wraps(func)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                if len(args) > len(positional):
                    raise TypeError(f"{func.__name__}() takes {len(positional)} positional arguments "
                                    f"({', '.join(positional)}); pass the others by name")
                for name, value in zip(positional, args):
                    if name in kwargs:
                        raise TypeError(f"{func.__name__}() got {name!r} twice")
                    kwargs[name] = value
                config = kwargs.pop("config", None)
                return func(self.resolve(config, **kwargs))

            wrapper.__signature__ = self.signature(positional)  # type: ignore[attr-defined]
            return wrapper

        return deco

    # ---- click

    def options(self, *, exclude: Iterable[str] = ()) -> Callable[[Callable], Callable]:
        """Add this schema's arguments and options to a click command function (in schema
        order, after the function's own)."""
        skip = set(exclude)

        def deco(func: Callable) -> Callable:
            for f in reversed(list(self)):
                if f.name in skip or (not f.argument and not f.cli_flags):
                    continue
                for i, a in reversed(list(enumerate(f.aliases))):
                    if a.flags:
                        func = _alias_param(f, a, i)(func)
                func = _click_param(f)(func)
            return func

        return deco

    def command(self, name: str | None = None, *, exclude: Iterable[str] = (),
                **attrs: Any) -> Callable[[Callable[..., Any]], click.Command]:
        """A click command whose callback receives the resolved :class:`Config` first, then
        any extra click parameters the function declares itself. ``-h`` and ``--help``."""
        settings = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
        settings.update(attrs.pop("context_settings", {}))
        skip = set(exclude)

        def deco(func: Callable[..., Any]) -> click.Command:
            @functools.wraps(func)
            def callback(**kwargs: Any) -> Any:
                ctx = click.get_current_context()
                mine = self.managed(kwargs, exclude=skip)
                try:
                    cfg = self.click_config(ctx, mine)
                except OptionError as exc:
                    raise _ClickOptionError(str(exc)) from None
                return func(cfg, **kwargs)

            cmd = click.command(name, context_settings=settings, **attrs)(self.options(exclude=skip)(callback))
            cmd.schema = self  # type: ignore[attr-defined]  # what declared it (docs, tests)
            return cmd

        return deco

    def managed(self, kwargs: dict[str, Any], *, exclude: Iterable[str] = ()) -> dict[str, Any]:
        """Pop this schema's click parameters (its fields' and their aliases') out of a
        callback's keyword arguments, for :meth:`click_config`."""
        skip = set(exclude)
        names = {f.name for f in self if f.name not in skip and (f.argument or f.cli_flags)}
        names |= {_alias_dest(f.name, i) for f in self for i, a in enumerate(f.aliases) if a.flags}
        return {k: kwargs.pop(k) for k in list(kwargs) if k in names}

    def click_config(self, ctx: click.Context, params: Mapping[str, Any],
                     extra: Mapping[str, Any] | None = None) -> Config:
        """:meth:`from_click`, with each deprecation written as one ``warning:`` line on
        stderr (the way the CLI writes), for a command that declares its own click command."""
        with warnings.catch_warnings(record=True) as notes:
            warnings.simplefilter("always", FutureWarning)
            try:
                return self.from_click(ctx, params, extra)
            finally:
                for note in notes:
                    click.echo(f"warning: {note.message}", err=True)

    def from_click(self, ctx: click.Context, params: Mapping[str, Any],
                   extra: Mapping[str, Any] | None = None) -> Config:
        """The resolved config of a command line: only parameters whose source is not
        click's default count as given, so they beat the config file. ``extra``: keyword-style
        values given besides the flags (``--set KEY=VALUE``, see :func:`parse_assignments`);
        they win over a flag of the same option."""
        with self._errors():
            return self._from_click(ctx, params, extra or {})

    def _from_click(self, ctx: click.Context, params: Mapping[str, Any], extra: Mapping[str, Any]) -> Config:
        from click.core import ParameterSource

        given: dict[str, tuple[Any, str]] = {}
        for f in self:
            if f.name not in params:
                continue
            src = ctx.get_parameter_source(f.name)
            if src in (None, ParameterSource.DEFAULT):
                continue
            value = params[f.name]
            if f.is_list and isinstance(value, tuple) and len(value) == 1:
                value = value[0]  # one flag: as if written in YAML (a text stays a text)
            given[f.name] = (value, f.label())
        for f in self:
            for i, a in enumerate(f.aliases):
                dest = _alias_dest(f.name, i)
                if not a.flags or dest not in params:
                    continue
                src = ctx.get_parameter_source(dest)
                if src in (None, ParameterSource.DEFAULT):
                    continue
                old = "/".join(a.flags)
                if f.name in given:
                    raise OptionError(f"{old} and {f.label()} both given; use {f.label()}")
                _deprecated(f"{old} is deprecated, use {f.label()}")
                given[f.name] = (a.translate(params[dest], old), old)
        for key, value in extra.items():
            label = f"--set {key}"
            name = self._canonical(key, where=label)
            given[name] = (self._from_alias(key, value, name, label), label)
        config = None
        if "config" in given:
            config = given.pop("config")[0]
            config = self.fields["config"].coerce(config, self.fields["config"].label())
        return self._resolve(config, given, cli=True)

    # ---- documentation

    def markdown(self) -> str:
        """A Markdown table of the options (flag, YAML key, default, help) for the docs."""
        rows = ["| flag | key | default | |", "|---|---|---|---|"]
        for f in self:
            if f.hidden:
                continue
            flag = f.label() if (f.argument or f.cli_flags) else "(config only)"
            if f.is_bool and f.negatable and f.cli_flags:
                flag += f" / --no-{f.cli_flags[-1].lstrip('-')}"
            choices = f.choice_list() if f.choices is not None and not callable(f.choices) else None
            text = f.help + (f" ({', '.join(choices)})" if choices else "")
            rows.append(f"| `{flag}` | `{f.name}` | {f.describe_default()} | {text} |")
        return "\n".join(rows) + "\n"


def parse_assignments(items: Iterable[str], *, flag: str = "--set") -> dict[str, Any]:
    """``KEY=VALUE`` texts (values read as YAML scalars: numbers, booleans, lists, null) as
    keyword arguments for :meth:`Schema.resolve`; dotted keys reach into mapping options."""
    out: dict[str, Any] = {}
    for item in items:
        key, eq, text = item.partition("=")
        key = key.strip().replace("-", "_")
        if not eq or not key:
            raise OptionError(f"{flag} {item!r}: expected KEY=VALUE")
        try:
            out[key] = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError:
            out[key] = text  # not YAML: the text itself (the field's type decides)
    return out


def _set_dotted(mapping: dict, dotted: str, value: Any, label: str) -> None:
    keys = dotted.split(".")
    d = mapping
    for k in keys[:-1]:
        nxt = d.setdefault(k, {})
        if not isinstance(nxt, dict):
            raise OptionError(f"{label}: {k} is not a mapping")
        d = nxt
    d[keys[-1]] = value


def _plain(value: Any) -> Any:
    """A YAML-safe copy (tuples as lists, paths as text)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def _deprecated(message: str) -> None:
    warnings.warn(message, FutureWarning, stacklevel=4)


class _ClickOptionError(click.ClickException):
    """An :class:`OptionError` on the command line: ``Error: <message>``, exit status 2. Under
    ``maskgen`` it is a usage error: the line ends with where the help is (``maskgen.cli``)."""

    exit_code = OptionError.exit_code
    usage = True


def _flag_names(flags: Iterable[str]) -> list[str]:
    out = []
    for fl in flags:
        out.extend(p for p in fl.split("/") if p)
    return out


def _alias_dest(name: str, i: int) -> str:
    return f"_alias_{name}_{i}"


class _Raw(click.ParamType):
    """Pass the command-line text through: the schema converts and checks it, so a bad value
    gets the same one-line message as in YAML or Python. Help shows the type or choices."""

    def __init__(self, f: Field) -> None:
        self.field = f
        kinds = _kinds(f.type)[1]
        first = kinds[0] if kinds else "any"
        if isinstance(first, tuple):
            first = first[1]
        self.name = {"int": "integer", "float": "float", "str": "text", "dict": "yaml", "any": "value"}.get(first, "text")

    def get_metavar(self, *args: Any, **kwargs: Any) -> str | None:
        if self.field.metavar:
            return self.field.metavar
        choices = self.field.choice_list()
        if choices:
            return "[" + "|".join(choices) + "]"
        return None

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        return value

    def shell_complete(self, ctx: click.Context, param: click.Parameter, incomplete: str) -> list:
        from click.shell_completion import CompletionItem

        return [CompletionItem(c) for c in (self.field.choice_list() or ()) if c.startswith(incomplete)]


def _help(f: Field) -> str:
    if f.is_list:
        return f.help.rstrip(".") + (" (comma-separated or repeated)." if f.split else " (repeatable).")
    return f.help


def _click_param(f: Field) -> Callable[[Callable], Callable]:
    """The click decorator of one field (its value reaches the callback under the field's name)."""
    if f.argument:
        return click.argument(f.name, required=False, type=_Raw(f), nargs=-1 if f.is_list else 1)
    # click's default is for --help only: a value whose source is the default is never "given"
    default = None if f.required else copy.deepcopy(f.default)
    if isinstance(default, list):
        default = tuple(default)
    common = {"default": default, "help": _help(f), "show_default": default not in (None, ()),
              "hidden": f.hidden}
    if f.is_bool:
        flags = list(f.cli_flags)
        if f.negatable:
            long = [x for x in flags if x.startswith("--")][-1]
            decls = [x for x in flags if not x.startswith("--")] + [f"{long}/--no-{long[2:]}"]
            return click.option(*decls, f.name, **common)
        return click.option(*flags, f.name, is_flag=True, **common)
    if f.required:
        common["help"] += " [required]"
    return click.option(*f.cli_flags, f.name, type=_Raw(f), multiple=f.is_list, metavar=f.metavar, **common)


def _alias_param(f: Field, a: Alias, i: int) -> Callable[[Callable], Callable]:
    dest = _alias_dest(f.name, i)
    if a.values is not None:  # an old option whose values map onto the new field's
        return click.option(*a.flags, dest, type=str, default=None, hidden=True)
    if f.is_bool:
        if len(a.flags) == 1 and "/" not in a.flags[0]:
            return click.option(*a.flags, dest, is_flag=True, default=None, hidden=True)
        return click.option(*a.flags, dest, default=None, hidden=True)
    return click.option(*a.flags, dest, type=_Raw(f), default=None, multiple=f.is_list, hidden=True)


# --------------------------------------------------------------------------- shipped configs


def _configs_root() -> Path:
    return Path(str(importlib.resources.files("maskgen") / "configs"))


def shipped_configs() -> list[str]:
    """Names of the configs that ship with maskgen (``train_tiny_cpu``, ``methods/huang_bfm``)."""
    root = _configs_root()
    if not root.is_dir():
        return []
    return sorted(p.relative_to(root).with_suffix("").as_posix() for p in root.rglob("*.yaml"))


def find_config(name: str | os.PathLike) -> Path:
    """A config file: ``name`` itself when it exists, else the shipped config of that name
    (``train_tiny_cpu``, ``train_tiny_cpu.yaml`` or ``configs/train_tiny_cpu.yaml``, so the
    README's paths work from an installed wheel too)."""
    path = Path(name).expanduser()
    if path.is_file():
        return path
    if path.exists():
        raise OptionError(f"{name}: a config is a YAML file, not a folder")
    text = PurePosixPath(os.fspath(name).replace(os.sep, "/"))
    if not text.is_absolute() and ".." not in text.parts:
        parts = text.parts[1:] if text.parts[:1] == ("configs",) else text.parts
        root = _configs_root()
        if parts:
            rel = PurePosixPath(*parts)
            for cand in (rel, rel.with_name(rel.name + ".yaml")):
                p = root.joinpath(*cand.parts)
                if p.is_file():
                    return p
    shipped = shipped_configs()
    close = difflib.get_close_matches(str(text.with_suffix("")).removeprefix("configs/"), shipped, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise OptionError(f"{name}: no such config file, nor a shipped config of that name; {hint}"
                      f"shipped: {', '.join(shipped) or 'none'}")


# --------------------------------------------------------------------------- shared fields


def existing(kind: str = "any") -> Callable[[str], str | None]:
    """A validator: the path exists and is a ``file``, a ``dir`` (folder) or ``any``."""
    what = {"file": "file", "dir": "folder", "any": "file or folder"}[kind]

    def check(value: str) -> str | None:
        p = Path(value).expanduser()
        if not p.exists():
            return f"no such {what}: {value}"
        if (kind == "file" and not p.is_file()) or (kind == "dir" and not p.is_dir()):
            return f"not a {what}: {value}"
        return None

    return check

OUT = Field("out", str | None, REQUIRED, "Output folder.", flags=("-o", "--out"), metavar="DIR")
SEED = Field("seed", int, 0, "Seed of every random choice: the same inputs and seed give the same bytes.", min=0)
WORKERS = Field("workers", int | None, None, "Parallel worker processes (default: every CPU).", min=1)
QUALITY = Field("quality", int, 95, "JPEG quality of the images written.", min=1, max=100)
QUIET = Field("quiet", bool, False, "No progress lines (neither maskgen's nor Ray's); errors still print.",
              flags=("-q", "--quiet"), negatable=False)
CONFIG = Field("config", str | None, None,
               "YAML file of these options (keys = option names), or the name of a config shipped with "
               "maskgen; options given on the command line override it.",
               flags=("-c", "--config"), yaml=False, metavar="FILE|NAME")
