"""``maskgen eval`` and ``maskgen make-bin``: thin click wrappers over the library calls."""

from __future__ import annotations

import logging

import click

from maskgen.masks.landmarks import backend_option


def _cases(_ctx: click.Context, _param: click.Parameter, value: str) -> tuple[int, ...]:
    try:
        cases = tuple(int(x) for x in value.replace(" ", "").split(",") if x)
    except ValueError as exc:
        raise click.BadParameter("use a comma list of 1, 2, 3") from exc
    if not cases or any(c not in (1, 2, 3) for c in cases):
        raise click.BadParameter("use a comma list of 1, 2, 3")
    return cases


@click.command("eval")
@click.option("--model", default="dlib", show_default=True,
              help="dlib | onnx:<path> | ckpt:<checkpoint or run folder>; a+b concatenates the "
                   "normalised features of several (Qi et al.). BFM models are scored with their routed protocol.")
@click.option("--pairs", type=click.Path(exists=True, dir_okay=False), default=None,
              help="LFW-format pairs.txt or a 'a b issame [fold]' list (default: LFW View 2 in the data home).")
@click.option("--images", type=click.Path(exists=True, file_okay=False), default=None,
              help="Folder the pair keys are relative to (default: the pairs file's folder).")
@click.option("--bin", "bin_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="An insightface verification .bin instead of a pairs file.")
@click.option("--out", "-o", default="eval-results", show_default=True, help="Output folder.")
@click.option("--cases", default="1,2,3", show_default=True, callback=_cases,
              help="1 unmasked-unmasked, 2 masked-unmasked, 3 masked-masked.")
@click.option("--seed", default=0, show_default=True, help="Seed of the masks.")
@click.option("--mask-type", default="random", show_default=True,
              help="'random' (maskgen's default mix) or one mask type for every face.")
@click.option("--flip/--no-flip", default=False, show_default=True, help="Add the mirrored face's embedding.")
@click.option("--workers", default=1, show_default=True, help="Ray workers (1: in-process).")
@click.option("--batch-size", default=32, show_default=True, help="Images per embedding batch.")
@click.option("--cache-dir", default=None, help="Embedding cache folder (default: <out>/cache).")
@click.option("--max-folds", type=int, default=None, help="Evaluate only the first N folds.")
@click.option("--max-pairs", type=int, default=None, help="Evaluate only the first N pairs.")
@click.option("--identification/--no-identification", default=True, show_default=True,
              help="Rank-1/5 and kNN over the pair set's identities.")
@click.option("--knn-k", default=1, show_default=True, help="k of the kNN classification (1: nearest neighbour).")
@click.option("--labels", type=click.Path(exists=True, dir_okay=False), default=None,
              help="CSV/parquet of group labels with a key, path or identity column.")
@click.option("--skin-tone/--no-skin-tone", default=False, show_default=True,
              help="Group by skin tone (ITA bins) measured on each face.")
@backend_option("--landmarks", dest="landmarks")
@click.option("--device", default="auto", show_default=True,
              help="auto (a GPU when torch, for ckpt:, or onnxruntime's CUDA provider, for onnx:, has one), cpu, cuda.")
@click.option("--verbose", "-v", is_flag=True)
@click.option("--quiet", "-q", is_flag=True, help="No progress lines.")
def eval_cmd(verbose: bool, quiet: bool, **kwargs) -> None:
    """Verification (LFW 10-fold, TAR@FAR), masked Cases 1/2/3, identification, per-group figures."""
    from maskgen.eval.api import evaluate
    from maskgen.eval.report import markdown_table

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s")
    try:
        res = evaluate(quiet=quiet, **kwargs)
    except (ValueError, RuntimeError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(markdown_table(res), nl=False)
    click.echo(f"results written to {kwargs['out']}/results.json, results.md, roc.png")


@click.command("make-bin")
@click.argument("pairs", type=click.Path(exists=True, dir_okay=False))
@click.option("--images", type=click.Path(exists=True, file_okay=False), default=None,
              help="Folder the pair keys are relative to (default: the pairs file's folder).")
@click.option("--out", "-o", required=True,
              help="The .bin file to write; with several cases '{case}' in the name is filled in "
                   "(else _case<N> is added).")
@click.option("--align/--no-align", default=True, show_default=True,
              help="Store aligned crops (default) or the original file bytes.")
@click.option("--size", default=112, show_default=True, help="Side of the aligned crops.")
@click.option("--case", "case", default="1", show_default=True, callback=_cases,
              help="1 unmasked, 2 second image masked, 3 both masked; a comma list writes one pack each.")
@click.option("--seed", default=0, show_default=True)
@click.option("--mask-type", default="random", show_default=True)
@click.option("--quality", default=95, show_default=True, help="JPEG quality of the crops.")
@click.option("--max-pairs", type=int, default=None)
@click.option("--max-folds", type=int, default=None)
@click.option("--quiet", "-q", is_flag=True, help="No progress lines.")
def make_bin(**kwargs) -> None:
    """Write an insightface verification .bin (pickled JPEG pairs + labels) from a pairs file."""
    from maskgen.eval.makebin import make_bin as run

    kwargs["case"] = kwargs["case"][0] if len(kwargs["case"]) == 1 else kwargs["case"]
    try:
        stats = run(**kwargs)
    except (ValueError, RuntimeError) as exc:
        raise click.ClickException(str(exc)) from exc
    for st in stats["cases"].values() if "cases" in stats else [stats]:
        click.echo(f"{st['file']} (case {st['case']}): {st['pairs_written']}/{st['pairs_in']} pairs written"
                   + (f", {st['pairs_skipped']} skipped" if st.get("pairs_skipped") else ""))
