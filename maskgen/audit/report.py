"""The balance report: one document model rendered to Markdown and to self-contained HTML.

Sections are built once as blocks (heading, text, table, figure, warnings) so the two formats
never disagree. The HTML embeds figures as base64 data URIs and needs no network or script.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass

from maskgen.audit.attributes import ITA_BINS
from maskgen.audit.figures import slug
from maskgen.audit.metrics import (
    FAILURE_RATE_FACTOR,
    FAILURE_RATE_TOLERANCE,
    MASK_RATIO_TOLERANCE,
    MIN_GROUP_FOR_RATES,
    UNDER_REPRESENTED,
    Z_ALERT,
)
from maskgen.audit.stats import IPI_LABELS


@dataclass
class Block:
    kind: str  # h1 h2 h3 p table figure warnings
    data: object


def _pct(x: float | None, digits: int = 1) -> str:
    return "–" if x is None else f"{x * 100:.{digits}f}%"


def _num(x: float | int | None, digits: int = 2) -> str:
    if x is None:
        return "–"
    if isinstance(x, int) or float(x).is_integer() and abs(x) >= 100:
        return f"{int(x):,}"
    return f"{x:,.{digits}f}"


def summary_rows(stats: dict) -> list[list[str]]:
    comp, masks = stats["composition"], stats["masks"]
    src = stats.get("source", {})
    rows = [["source", f"{src.get('kind', '?')}: {src.get('name', '?')}"],
            ["images kept", f"{comp['images']:,}"],
            ["identities kept", f"{comp['identities']:,}"],
            ["dropped by filters", f"{comp['dropped']:,}"],
            ["failed", f"{comp['failed']:,}"]]
    if masks.get("available") and "ratio" in masks:
        rows.append(["masked", f"{masks['masked']:,} ({_pct(masks['ratio'], 2)})"])
    lab = src.get("labels")
    if lab:
        rows.append(["labels", f"{lab['file']} joined on {lab['join_on']}: "
                               f"{lab['matched_images']:,} images matched, "
                               f"{lab['unmatched_images']:,} without labels"])
    rows.append(["warnings", str(len(stats["warnings"]))])
    return rows


def build_blocks(stats: dict, figures: dict[str, bytes], title: str) -> list[Block]:
    comp, masks = stats["composition"], stats["masks"]
    B: list[Block] = [Block("h1", title)]
    B.append(Block("table", (["", ""], summary_rows(stats))))
    for note in stats.get("source", {}).get("notes", []):
        B.append(Block("p", f"Note: {note}."))
    B.append(Block("h2", "Warnings"))
    B.append(Block("warnings", stats["warnings"]))
    if stats["attributes"]:
        B.append(Block("h2", "Balance at a glance"))
        B.append(Block("table", glance_table(stats)))

    B.append(Block("h2", "Composition"))
    ipi = comp["images_per_identity"]
    s = ipi["summary"]
    B.append(Block("p", f"{comp['images']:,} kept images of {comp['identities']:,} identities "
                        f"({comp['identities_in_source']:,} identities and {comp['rows']:,} "
                        f"images in the source). Images per identity: median "
                        f"{_num(s.get('median'), 0)}, mean {_num(s.get('mean'))}, max "
                        f"{_num(s.get('max'), 0)}."))
    B.append(Block("figure", ("composition.png", "Images per identity and masked share per "
                                                 "identity")))
    B.append(Block("table", (["images per identity"] + IPI_LABELS,
                             [["identities"] + [f"{ipi['histogram'][k]:,}" for k in IPI_LABELS]])))
    if ipi["top"] and ipi["top"][0]["images"] > 1:  # flat folders: every identity has one
        B.append(Block("table", (["identity with most images", "images", "share"],
                                 [[t["identity"], f"{t['images']:,}",
                                   _pct(t["images"] / max(comp["images"], 1), 2)]
                                  for t in ipi["top"]])))
    B.append(Block("h3", "Drops and failures by reason"))
    if comp["drops_by_reason"] or comp["failures_by_reason"]:
        rows = [["dropped", k, f"{v:,}"] for k, v in comp["drops_by_reason"].items()]
        rows += [["failed", k, f"{v:,}"] for k, v in comp["failures_by_reason"].items()]
        B.append(Block("table", (["status", "reason", "images"], rows)))
        if "drops.png" in figures:
            B.append(Block("figure", ("drops.png", "Dropped and failed images by reason")))
    else:
        B.append(Block("p", "No image was dropped or failed."))

    B.append(Block("h2", "Masks"))
    if masks.get("available") and "ratio" in masks:
        pi = masks["per_identity"]
        B.append(Block("p", f"{masks['masked']:,} masked and {masks['unmasked']:,} unmasked "
                            f"training images ({_pct(masks['ratio'], 2)} masked). Per identity "
                            f"(the {pi['identities_with_2plus']:,} identities with at least two "
                            f"images): mean masked share {_pct(pi['ratio'].get('mean'))}, "
                            f"std {_pct(pi['ratio'].get('std'))}; {pi['with_no_masked']:,} have "
                            f"no masked image, {pi['all_masked']:,} only masked images."))
        if "masks.png" in figures:
            B.append(Block("figure", ("masks.png", "Mask type, colour, texture and wear mode")))
        for c in ("mask_type", "mask_color", "mask_texture", "wear"):
            d = masks.get(c)
            if d:
                tot = sum(d.values())
                B.append(Block("table", ([c.replace("_", " "), "masked images", "share"],
                                         [[k, f"{v:,}", _pct(v / tot)] for k, v in d.items()])))
        if "fit_score" in masks:
            fs = masks["fit_score"]
            B.append(Block("p", f"Mask fit score: median {_num(fs.get('median'), 3)}, 5th "
                                f"percentile {_num(fs.get('p05'), 3)}; {masks['poor_fit']:,} "
                                f"masked images below {masks['fit_threshold']}."))
    else:
        B.append(Block("p", "This source carries no mask information (not a build, or no image "
                            "was masked)."))

    B.append(Block("h2", "Balance by attribute"))
    B.append(Block("p", "Shares are of kept images with a known value; the target is uniform "
                        "over the groups present unless a target was given. The min/max share "
                        "ratio is 1 for perfectly even groups; the normalized entropy is 1 for "
                        "even groups and 0 for a single group. Failure rates are over attempted "
                        "images (kept + failed)."))
    for col, e in stats["attributes"].items():
        B.extend(_attribute_blocks(col, e))

    B.append(Block("h2", "Distributions of model-free attributes"))
    if "attributes.png" in figures:
        B.append(Block("figure", ("attributes.png", "Skin tone (ITA), pose and quality of kept "
                                                    "images")))
    num = stats.get("numeric", {})
    if num:
        hdr = ["attribute", "n", "mean", "p05", "median", "p95"]
        B.append(Block("table", (hdr, [[c, f"{v['count']:,}", _num(v.get("mean")),
                                        _num(v.get("p05")), _num(v.get("median")),
                                        _num(v.get("p95"))] for c, v in num.items()])))
    if stats.get("attribute_region"):
        reg = stats["attribute_region"]
        B.append(Block("p", "Attribute region: " + ", ".join(f"{k}: {v:,}" for k, v in reg.items())
                            + " (\"center\" = no landmarks, the image centre stands for the face)."))

    B.append(Block("h2", "Method"))
    B.extend(method_blocks())
    return B


def glance_table(stats: dict) -> tuple[list[str], list[list[str]]]:
    """One row per attribute: evenness, mask-ratio and failure-rate spreads, warnings."""
    hdr = ["attribute", "groups", "min/max share", "entropy", "mask-ratio spread",
           "failure-rate spread", "warnings"]
    rows = []
    for col, e in stats["attributes"].items():
        b = e["balance"]
        n_warn = sum(len(e.get(p, {}).get("warnings", []))
                     for p in ("balance", "mask_ratio", "failure_rate", "fit_failure_rate"))
        rows.append([e["title"], str(b["num_groups"]), _num(b["min_max_share_ratio"], 3),
                     _num(b["normalized_entropy"], 3),
                     _pct(e.get("mask_ratio", {}).get("spread")),
                     _pct(e.get("failure_rate", {}).get("spread")), str(n_warn)])
    return hdr, rows


def method_blocks() -> list[Block]:
    scale = ", ".join(
        f"{lab} ({'> ' + str(int(lo)) if hi == float('inf') else ('≤ ' + str(int(hi)) if lo == float('-inf') else f'{int(lo)}..{int(hi)}')})"
        for lab, lo, hi in ITA_BINS)
    return [
        Block("p", "Skin tone: Individual Typology Angle ITA = atan((L* − 50) / b*) · 180/π, "
                   "median over cheek and forehead pixels located by the 68 landmarks (eyes, "
                   "brows, nostrils and lips excluded), CIELab D65 with sRGB linearization; "
                   f"Del Bino scale: {scale}. ITA from photographs depends on lighting and white "
                   "balance: it describes the spread of a dataset, not any person."),
        Block("p", "Quality: sharpness = variance of the Laplacian of the face region's grey "
                   "levels (grows with detail and resolution); brightness = mean Rec. 601 luma "
                   "of the face region; face size = inter-ocular distance in pixels; pose = "
                   "yaw/pitch/roll from the landmarks."),
        Block("p", f"Warnings: a group is under-represented below {UNDER_REPRESENTED:g}× its "
                   f"target share; masked at a different rate when its masked share is more "
                   f"than {MASK_RATIO_TOLERANCE:.0%} away from the overall one and |z| > "
                   f"{Z_ALERT:g}; failing more when its failure rate exceeds "
                   f"{FAILURE_RATE_FACTOR:g}× the overall one, by at least "
                   f"{FAILURE_RATE_TOLERANCE:.0%}, with z > {Z_ALERT:g}. Groups of "
                   f"fewer than {MIN_GROUP_FOR_RATES} images are shown but neither flagged nor counted "
                   f"in the spreads (max − min) of rates."),
        Block("p", "Failed images have no landmarks: their skin tone, sharpness and brightness "
                   "are measured on the image centre (which may include hair or background), "
                   "so failure rates per skin tone are indicative; pose and face size exist only "
                   "for detected faces and get no failure rate."),
    ]


def _attribute_blocks(col: str, e: dict) -> list[Block]:
    bal = e["balance"]
    out = [Block("h3", f"{e['title']}" + (" (condition)" if e["kind"] == "condition" else ""))]
    bits = [f"{bal['num_groups']} groups", f"min/max share ratio {_num(bal['min_max_share_ratio'], 3)}",
            f"normalized entropy {_num(bal['normalized_entropy'], 3)}"]
    if "mask_ratio" in e and e["mask_ratio"]["spread"] is not None:
        bits.append(f"mask-ratio spread {_pct(e['mask_ratio']['spread'])} (std "
                    f"{_pct(e['mask_ratio']['std'])})")
    if "failure_rate" in e and e["failure_rate"]["spread"] is not None:
        bits.append(f"failure-rate spread {_pct(e['failure_rate']['spread'])}")
    if bal["unknown"]:
        bits.append(f"{bal['unknown']:,} kept images without a value")
    if "edges" in e:
        bits.append(f"tercile edges {e['edges'][0]:.1f}, {e['edges'][1]:.1f}")
    out.append(Block("p", "; ".join(bits) + "."))
    out.append(Block("figure", (f"group_{slug(col)}.png", f"{e['title']}: shares, masked share "
                                                          f"and failure rate per group")))
    mr = {r["group"]: r for r in e.get("mask_ratio", {}).get("groups", [])}
    fr = {r["group"]: r for r in e.get("failure_rate", {}).get("groups", [])}
    ff = {r["group"]: r for r in e.get("fit_failure_rate", {}).get("groups", [])}
    hdr = ["group", "images", "share", "target", "share/target"]
    if mr:
        hdr += ["masked", "masked 95% CI"]
    if fr:
        hdr += ["attempted", "failed", "failure rate"]
    if ff:
        hdr += ["mask-fit failure"]
    rows = []
    for g in bal["groups"]:
        name = g["group"]
        row = [name, f"{g['count']:,}", _pct(g["share"]), _pct(g["target"]),
               _num(g["share_to_target"])]
        if mr:
            m = mr.get(name)
            row += ([_pct(m["ratio"]), f"{_pct(m['ci95'][0])}–{_pct(m['ci95'][1])}"] if m
                    else ["–", "–"])
        if fr:
            f = fr.get(name)
            row += ([f"{f['attempted']:,}", f"{f['failed']:,}", _pct(f["rate"])] if f
                    else ["0", "0", "–"])
        if ff:
            f2 = ff.get(name)
            row += [_pct(f2["rate"]) if f2 else "–"]
        rows.append(row)
    out.append(Block("table", (hdr, rows)))
    return out


# ------------------------------------------------------------------ renderers
def _md_cell(s: str) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def render_markdown(blocks: list[Block], figure_dir: str = "report") -> str:
    out: list[str] = []
    for b in blocks:
        if b.kind in ("h1", "h2", "h3"):
            out.append("#" * int(b.kind[1]) + " " + str(b.data))
        elif b.kind == "p":
            out.append(str(b.data))
        elif b.kind == "warnings":
            items = b.data or []
            out.append("\n".join(f"- ⚠ {w}" for w in items) if items else "No warnings.")
        elif b.kind == "table":
            hdr, rows = b.data
            out.append("| " + " | ".join(_md_cell(h) for h in hdr) + " |")
            out[-1] += "\n|" + "|".join("---" for _ in hdr) + "|"
            for r in rows:
                out[-1] += "\n| " + " | ".join(_md_cell(c) for c in r) + " |"
        elif b.kind == "figure":
            name, caption = b.data
            out.append(f"![{caption}]({figure_dir}/{name})")
    return "\n\n".join(out) + "\n"


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;
max-width:1100px;padding:0 1em;color:#222;line-height:1.45}
h1{border-bottom:2px solid #4C72B0;padding-bottom:.2em}
h2{margin-top:1.8em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}
th,td{border:1px solid #ddd;padding:.25em .6em;text-align:right}
th:first-child,td:first-child{text-align:left}
th{background:#f3f5f9}
figure{margin:.8em 0}
img{max-width:100%;height:auto}
figcaption{font-size:.85em;color:#555}
.warn{background:#fff4e5;border-left:4px solid #DD8452;padding:.5em 1em}
.warn li{margin:.2em 0}
.ok{background:#eef7ee;border-left:4px solid #55a868;padding:.5em 1em}
nav{margin:.5em 0 1em;font-size:.9em}
nav a{margin-right:1.2em;color:#4C72B0;text-decoration:none}
"""


def render_html(blocks: list[Block], figures: dict[str, bytes], title: str) -> str:
    e = html.escape
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           f"<title>{e(title)}</title><style>{CSS}</style></head><body>"]
    sections = [str(b.data) for b in blocks if b.kind == "h2"]
    nav = "".join(f'<a href="#{slug(t)}">{e(t)}</a>' for t in sections)
    for i, b in enumerate(blocks):
        if i == 1 and sections:  # after the title
            out.append(f"<nav>{nav}</nav>")
        if b.kind in ("h1", "h2", "h3"):
            ident = slug(str(b.data))
            out.append(f'<{b.kind} id="{ident}">{e(str(b.data))}</{b.kind}>')
        elif b.kind == "p":
            out.append(f"<p>{e(str(b.data))}</p>")
        elif b.kind == "warnings":
            items = b.data or []
            if items:
                out.append('<div class="warn"><ul>' + "".join(f"<li>{e(w)}</li>" for w in items)
                           + "</ul></div>")
            else:
                out.append('<div class="ok">No warnings.</div>')
        elif b.kind == "table":
            hdr, rows = b.data
            t = ["<table>"]
            if any(hdr):
                t.append("<thead><tr>" + "".join(f"<th>{e(str(h))}</th>" for h in hdr)
                         + "</tr></thead>")
            t.append("<tbody>")
            for r in rows:
                t.append("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in r) + "</tr>")
            t.append("</tbody></table>")
            out.append("".join(t))
        elif b.kind == "figure":
            name, caption = b.data
            png = figures.get(name)
            if png is None:
                continue
            uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
            out.append(f'<figure><img src="{uri}" alt="{e(caption)}" data-name="{e(name)}">'
                       f"<figcaption>{e(caption)}</figcaption></figure>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"
