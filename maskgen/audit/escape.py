"""Escaping of names that come from data (identities, labels, folders) for every output format.

A name is data: ``<script>`` in an identity folder, ``=HYPERLINK(...)`` in a label file or
``$x$`` in a group must reach the reader as those characters, never as markup, a formula or
math. Each writer escapes the names it embeds with the function for its format (HTML uses
:func:`html.escape`; JSON and YAML escape through their own dumpers).
"""

from __future__ import annotations

import re

# Markdown characters that start markup; "<" and "&" also keep raw HTML out of the page.
_MD_SPECIAL = re.compile(r"([\\`*_\[\]#|~>])")
_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029]+")
# A spreadsheet reads a cell starting with these as a formula (CSV injection).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def controls_to_spaces(text: object) -> str:
    """The text with control characters (newline, tab, ...) as single spaces."""
    return _CONTROL.sub(" ", str(text))


def md(text: object) -> str:
    """Inline Markdown text that renders as exactly these characters (no markup, no HTML)."""
    s = controls_to_spaces(text).replace("&", "&amp;").replace("<", "&lt;")
    return _MD_SPECIAL.sub(r"\\\1", s)


def md_code(text: object) -> str:
    """Inline code span holding ``text`` (backticks in it lengthen the fence)."""
    s = controls_to_spaces(text)
    fence = "`" * (max((len(m) for m in re.findall(r"`+", s)), default=0) + 1)
    pad = " " if s.startswith("`") or s.endswith("`") else ""
    return f"{fence}{pad}{s}{pad}{fence}"


def csv_cell(value: object) -> object:
    """A CSV value that a spreadsheet shows as text, never evaluates (a leading quote mark)."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def mpl(text: object) -> str:
    """A matplotlib label shown literally (``$`` would start mathtext)."""
    return controls_to_spaces(text).replace("$", r"\$")
