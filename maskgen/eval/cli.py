"""``maskgen eval`` and ``maskgen make-bin``: thin click wrappers over the library calls."""

from __future__ import annotations

import logging

import click

from maskgen.masks.options import BACKEND, MASK_TYPE
from maskgen.options import OUT, QUALITY, QUIET, REQUIRED, SEED, WORKERS, Alias, Config, Field, Schema, existing


def _check_cases(value: list[int]) -> str | None:
    if not value or any(c not in (1, 2, 3) for c in value):
        return "use a comma list of 1, 2, 3"
    return None


_IMAGES = Field("images", str | None, None, "Folder the pair keys are relative to (default: the pairs file's folder).",
                validator=existing("dir"), metavar="DIR")
_MAX_PAIRS = Field("max_pairs", int | None, None, "Evaluate only the first N pairs.", min=1)
_MAX_FOLDS = Field("max_folds", int | None, None, "Evaluate only the first N folds.", min=1)

EVAL = Schema("eval", [
    Field("model", str, "dlib",
          "dlib | onnx:<path> | ckpt:<checkpoint or run folder>; a+b concatenates the normalised features of "
          "several (Qi et al.). BFM models are scored with their routed protocol."),
    Field("pairs", str | None, None,
          "LFW-format pairs.txt or a 'a b issame [fold]' list (default: LFW View 2 in the data home).",
          validator=existing("file"), metavar="FILE"),
    _IMAGES,
    Field("bin_file", str | None, None, "An insightface verification .bin instead of a pairs file.",
          flags=("--bin",), validator=existing("file"), metavar="FILE"),
    OUT.with_(default="eval-results"),
    Field("cases", list[int], [1, 2, 3], "1 unmasked-unmasked, 2 masked-unmasked, 3 masked-masked.",
          validator=_check_cases),
    SEED.with_(help="Seed of the masks."),
    MASK_TYPE.with_(help="'random' (maskgen's default mix) or one mask type for every face."),
    Field("flip", bool, False, "Add the mirrored face's embedding."),
    WORKERS.with_(default=1, help="Ray workers (1: in-process)."),
    Field("batch_size", int, 32, "Images per embedding batch.", min=1),
    Field("cache_dir", str | None, None, "Embedding cache folder (default: <out>/cache).", metavar="DIR"),
    _MAX_FOLDS,
    _MAX_PAIRS,
    Field("identification", bool, True, "Rank-1/5 and kNN over the pair set's identities."),
    Field("knn_k", int, 1, "k of the kNN classification (1: nearest neighbour).", min=1),
    Field("labels", str | None, None, "CSV/parquet of group labels with a key, path or identity column.",
          validator=existing("file"), metavar="FILE"),
    Field("skin_tone", bool, False, "Group by skin tone (ITA bins) measured on each face."),
    BACKEND.with_(help="Landmark backend of the masks and the alignment.",
                  aliases=(Alias(flags=("--landmarks",), key="landmarks"),)),
    Field("device", str, "auto",
          "auto (a GPU when torch, for ckpt:, or onnxruntime's CUDA provider, for onnx:, has one), cpu, cuda."),
    Field("verbose", bool, False, "Log what each stage does.", flags=("-v", "--verbose"), negatable=False),
    QUIET,
])


@EVAL.command("eval")
def eval_cmd(cfg: Config) -> None:
    """Verification (LFW 10-fold, TAR@FAR), masked Cases 1/2/3, identification, per-group figures."""
    from maskgen.eval.api import evaluate
    from maskgen.eval.report import markdown_table

    kwargs = {k: v for k, v in cfg.items() if k not in ("verbose", "quiet", "backend")}
    kwargs.update(cases=tuple(cfg.cases), landmarks=cfg.backend)
    logging.basicConfig(level=logging.INFO if cfg.verbose else logging.WARNING, format="%(message)s")
    try:
        res = evaluate(quiet=cfg.quiet, **kwargs)
    except (ValueError, RuntimeError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(markdown_table(res), nl=False)
    click.echo(f"results written to {cfg.out}/results.json, results.md, roc.png")


MAKE_BIN = Schema("make-bin", [
    Field("pairs", str, REQUIRED, "LFW-format pairs.txt or a 'a b issame [fold]' list.", argument=True,
          validator=existing("file")),
    _IMAGES,
    OUT.with_(help="The .bin file to write; with several cases '{case}' in the name is filled in "
                   "(else _case<N> is added).", metavar="FILE"),
    Field("align", bool, True, "Store aligned crops (default) or the original file bytes."),
    Field("size", int, 112, "Side of the aligned crops.", min=1),
    Field("case", list[int], [1], "1 unmasked, 2 second image masked, 3 both masked; a comma list writes one pack each.",
          validator=_check_cases),
    SEED.with_(help="Seed of the masks."),
    MASK_TYPE.with_(help="'random' (maskgen's default mix) or one mask type for every face."),
    QUALITY.with_(help="JPEG quality of the crops."),
    _MAX_PAIRS,
    _MAX_FOLDS,
    QUIET,
])


@MAKE_BIN.command("make-bin")
def make_bin(cfg: Config) -> None:
    """Write an insightface verification .bin (pickled JPEG pairs + labels) from a pairs file."""
    from maskgen.eval.makebin import make_bin as run

    kwargs = dict(cfg.items())
    kwargs["case"] = kwargs["case"][0] if len(kwargs["case"]) == 1 else tuple(kwargs["case"])
    try:
        stats = run(**kwargs)
    except (ValueError, RuntimeError) as exc:
        raise click.ClickException(str(exc)) from exc
    for st in stats["cases"].values() if "cases" in stats else [stats]:
        click.echo(f"{st['file']} (case {st['case']}): {st['pairs_written']}/{st['pairs_in']} pairs written"
                   + (f", {st['pairs_skipped']} skipped" if st.get("pairs_skipped") else ""))
