"""Which optional part of maskgen a command needs, and a one-line answer when it is missing.

``pip install maskgen`` is the masking toolkit only; the build, audit, training and evaluation
stages are extras (``maskgen[build]``, ``[audit]``, ``[train]``, ``[eval]``, ``[all]``). The
packages of each extra are read from maskgen's installed metadata (``pyproject.toml`` is the
one list), so this module holds only the command -> extra table. A command whose extra is not
installed stops before importing anything:
``Error: maskgen build needs the 'build' extra: pip install 'maskgen[build]'``.
"""

from __future__ import annotations

import functools
import re
from importlib import metadata

from maskgen.errors import MaskgenError

# command -> the extra it needs (commands absent here need only the base install)
COMMAND_EXTRAS: dict[str, str] = {
    "build": "build",
    "audit": "audit",
    "card": "audit",
    "train": "train",
    "export": "train",
    "eval": "eval",
}

_EXTRA_MARKER = re.compile(r"""extra\s*==\s*["']([^"']+)["']""")
_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[([^\]]*)\])?")


class MissingExtraError(MaskgenError):
    """A command or function needs an extra that is not installed."""


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@functools.lru_cache(maxsize=None)
def _requirements() -> tuple[tuple[str, tuple[str, ...], str | None], ...] | None:
    """maskgen's requirements as (distribution, its extras, the maskgen extra that asks for
    it); None when maskgen runs without installed metadata (a bare source tree)."""
    try:
        reqs = metadata.requires("maskgen") or []
    except metadata.PackageNotFoundError:
        return None
    out = []
    for req in reqs:
        spec, _, marker = req.partition(";")
        m = _NAME.match(spec)
        if not m:
            continue
        extras = tuple(e.strip() for e in (m.group(3) or "").split(",") if e.strip())
        em = _EXTRA_MARKER.search(marker)
        out.append((_normal(m.group(1)), extras, em.group(1) if em else None))
    return tuple(out)


def extra_packages(extra: str) -> list[str]:
    """The distributions an extra installs (other maskgen extras it names included)."""
    reqs = _requirements() or ()
    seen: set[str] = set()
    todo, out = [extra], []
    while todo:
        e = todo.pop()
        if e in seen:
            continue
        seen.add(e)
        for dist, sub, marker in reqs:
            if marker != e:
                continue
            if dist == "maskgen":
                todo.extend(sub)
            elif dist not in out:
                out.append(dist)
    return out


def _installed(dist: str) -> bool:
    try:
        metadata.distribution(dist)
    except metadata.PackageNotFoundError:
        return False
    return True


def missing(extra: str) -> list[str]:
    """The distributions of ``extra`` that are not installed ([] when unknown: no metadata)."""
    if _requirements() is None:
        return []
    return [d for d in extra_packages(extra) if not _installed(d)]


def message(command: str, extra: str) -> str:
    return f"maskgen {command} needs the '{extra}' extra: pip install 'maskgen[{extra}]'"


def require(extra: str, command: str) -> None:
    """Raise :class:`MissingExtraError` (one line) when ``extra`` is not fully installed."""
    if missing(extra):
        raise MissingExtraError(message(command, extra))


def missing_extra_command(name: str):  # -> click.Command | None
    """A stand-in for command ``name`` when its extra is missing (it prints the one-line
    error, and ``maskgen --help`` still lists it); None when the command can load."""
    extra = COMMAND_EXTRAS.get(name)
    if extra is None or not missing(extra):
        return None
    import click

    text = message(name, extra)

    def fail() -> None:
        raise click.ClickException(text)

    return click.Command(
        name,
        callback=fail,
        help=f"(needs the '{extra}' extra: pip install 'maskgen[{extra}]')",
        short_help=f"(needs pip install 'maskgen[{extra}]')",
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True,
                          "help_option_names": []},
        add_help_option=False,
    )
