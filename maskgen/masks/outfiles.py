"""Where ``maskgen mask`` writes: an output folder apart from the input, one file per output.

The user's photos are never touched: the output folder may not be (or lie inside) the input
folder, nor hold it; the folder is claimed (:func:`maskgen.outputs.claim`: a folder of the
user's is refused, one run at a time); each input gets output names no other input gets (see
:func:`output_names`); every image is written under a temp name and renamed into place.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path, PurePosixPath

from maskgen.errors import OutputError

RESULTS = "results.jsonl"


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def check_apart(src: Path, out: Path) -> None:
    """Refuse an output folder that is the input folder, lies inside it or holds it (links
    resolved), and an output that would replace a single input file."""
    s, o = src.resolve(), out.resolve()
    if src.is_dir():
        if _inside(o, s):
            raise OutputError(f"output folder {out} is inside the input {src}: choose a folder outside it")
        if _inside(s, o):
            raise OutputError(f"input {src} is inside the output folder {out}: choose another output folder")
    elif _inside(s, o):
        raise OutputError(f"input {src} is inside the output folder {out}: choose another output folder")


def json_name(rel: str) -> str:
    """A relative name for ``results.jsonl``: bytes of a non-UTF-8 name (surrogate escapes)
    written as ``\\xNN``, as the build's manifest writes them, so the JSON stays valid UTF-8."""
    if not any("\udc80" <= ch <= "\udcff" for ch in rel):
        return rel
    return "".join(f"\\x{ord(ch) - 0xDC00:02x}" if "\udc80" <= ch <= "\udcff" else ch for ch in rel)


def alpha_name(name: str, fmt: str) -> str:
    """``x.jpg`` -> ``x.alpha.png``: the mask alpha beside an output image."""
    return name[: -len(fmt) - 1] + ".alpha.png"


def output_names(rels: list[str], fmt: str, alpha: bool = False) -> dict[str, str]:
    """The output name (relative POSIX path) of each input, none shared, case-insensitively.

    Rule: ``sub/x.png`` -> ``sub/x.<fmt>``. Inputs of one folder that would share a name
    (``x.jpg`` and ``x.png``) keep their source extension: ``x.jpg.<fmt>``, ``x.png.<fmt>``.
    A name still taken after that (by an earlier input in sorted order, by an alpha file or by
    ``results.jsonl``) gets ``~2``, ``~3``, ... before the extension. The rule depends only on
    the set of input names, so a rerun gives the same names.
    """
    plain = {r: PurePosixPath(r).with_suffix(f".{fmt}").as_posix() for r in rels}
    shared = Counter(n.casefold() for n in plain.values())
    first = {r: (n if shared[n.casefold()] == 1 else f"{r}.{fmt}") for r, n in plain.items()}
    taken = {RESULTS}
    names: dict[str, str] = {}
    for r in sorted(rels):
        cand, k = first[r], 1
        while True:
            claims = [cand, alpha_name(cand, fmt)] if alpha else [cand]
            if not any(c.casefold() in taken for c in claims):
                break
            k += 1
            cand = f"{first[r][: -len(fmt) - 1]}~{k}.{fmt}"
        taken.update(c.casefold() for c in claims)
        names[r] = cand
    return names
