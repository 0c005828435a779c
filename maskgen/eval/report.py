"""Writing an evaluation: ``results.json`` (every figure), ``results.md`` (tables), ROC PNGs."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from maskgen.fsio import write_atomic


def _pct(x: float | None, digits: int = 2) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{100 * x:.{digits}f}"


def _json_default(o: object) -> object:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(type(o).__name__)


def _clean(o: object) -> object:
    """NaN/inf -> None so the JSON is strict."""
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, dict):
        return {str(k): _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    return o


def write_json(results: dict, path: str | os.PathLike) -> None:
    write_atomic(path, json.dumps(_clean(results), indent=2, default=_json_default) + "\n", fsync=False)


def markdown_table(results: dict) -> str:
    """The verification table (one row per case), then identification, mask usage and groups."""
    lines: list[str] = []
    ver = results.get("verification", {})
    fars = None
    for c in ver.values():
        if "tar_at_far" in c:
            fars = list(c["tar_at_far"])
            break
    fars = fars or []
    head = ["Case", "Pairs", "Acc cos (%)", "Acc L2 (%)", "AUC (%)"] + \
        [f"TAR@FAR={f} (%)" for f in fars] + ["Pairs w/ mask failure"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, c in ver.items():
        if "accuracy_cosine" not in c:
            lines.append(f"| {name} | {c.get('pairs', 0)} | " + " | ".join(["n/a"] * (len(head) - 2)) + " |")
            continue
        ac, al = c["accuracy_cosine"], c["accuracy_l2"]
        row = [f"{c['case']} ({c['name']})", str(c["pairs"]),
               f"{_pct(ac['mean'])} ± {_pct(ac['std'])}", f"{_pct(al['mean'])} ± {_pct(al['std'])}",
               _pct(c["auc"])]
        row += [_pct(c["tar_at_far"][f]["tar"]) for f in fars]
        row.append(str(c["pairs_with_mask_failure"]))
        lines.append("| " + " | ".join(row) + " |")
    if any("single fold" in c.get("threshold_from", "") for c in ver.values()):
        lines += ["", "One fold only: thresholds were chosen on the same pairs (optimistic)."]
    ident = results.get("identification")
    if ident and ident.get("cases"):
        lines += ["", f"Identification: {ident['gallery_size']} gallery images "
                      f"({ident['distractors']} distractor identities), {ident['probes']} probes.", "",
                  f"| Case | Gallery | Probes | Rank-1 (%) | Rank-5 (%) | kNN k={ident['knn_k']} (%) |",
                  "|---|---|---|---|---|---|"]
        for name, r in ident["cases"].items():
            lines.append(f"| {name} | {r['gallery_variant']} | {r['probe_variant']} | {_pct(r['rank1'])} | "
                         f"{_pct(r['rank5'])} | {_pct(r['knn'])} |")
    mu = results.get("mask_usage")
    if mu and mu.get("accuracy") is not None:
        lines += ["", f"Mask-usage classification: accuracy {_pct(mu['accuracy'])}% on {mu['n']} faces "
                      f"({mu['n_masked']} masked)."]
    groups = results.get("groups")
    if groups:
        lines += ["", "| Label | Metric | Groups (value %, count) | Best - worst |", "|---|---|---|---|"]
        for label, metrics in groups.items():
            for metric, b in metrics.items():
                cells = ", ".join(f"{g}: {_pct(v['value'], 1)} ({v['count']})" for g, v in b["groups"].items())
                gap = b.get("gap")
                if not gap:
                    gtxt = "n/a"
                elif gap["gap"] == 0:
                    gtxt = "0.0 (all equal)"
                else:
                    gtxt = f"{_pct(gap['gap'], 1)} ({gap['best']} vs {gap['worst']})"
                lines.append(f"| {label} | {metric} | {cells} | {gtxt} |")
    imgs = results.get("images", {})
    if imgs:
        lines += ["", "Images: " + ", ".join(f"{k}: {v}" for k, v in imgs.get("status", {}).items())
                  + "; landmarks: " + ", ".join(f"{k}: {v}" for k, v in imgs.get("landmarks", {}).items())
                  + "; masking: " + (", ".join(f"{k}: {v}" for k, v in imgs.get("masking", {}).items()) or "not run")]
    return "\n".join(lines) + "\n"


def write_markdown(results: dict, path: str | os.PathLike) -> None:
    title = f"# Evaluation of {results.get('model', '?')} on {results.get('dataset', '?')}\n\n"
    Path(path).write_text(title + markdown_table(results))


def plot_roc(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: str | os.PathLike,
             title: str = "") -> None:
    """ROC curves (TAR vs FAR, log FAR axis) of several cases in one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4.5), dpi=120)
    floor = 1e-4
    for name, (far, tar) in curves.items():
        # a log axis has no FAR 0: the zero-FAR part of a curve is drawn at the left edge
        ax.plot(np.maximum(far, floor), tar, label=name, drawstyle="steps-post")
    ax.set_xscale("log")
    ax.set_xlim(floor, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("False accept rate")
    ax.set_ylabel("True accept rate")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
