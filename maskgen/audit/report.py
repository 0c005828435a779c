"""The balance report: one document model rendered to Markdown and to self-contained HTML.

Sections are built once as blocks (heading, text, table, figure, warnings) so the two formats
never disagree. The HTML embeds figures as base64 data URIs and needs no network or script.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Iterable
from dataclasses import dataclass

from maskgen.datasets.attributes import ITA_BINS
from maskgen.audit.escape import md
from maskgen.audit.figures import slug
from maskgen.audit.metrics import (
    FAILURE_RATE_FACTOR,
    FAILURE_RATE_TOLERANCE,
    MASK_RATIO_TOLERANCE,
    MIN_GROUP_FOR_RATES,
    UNDER_REPRESENTED,
    Z_ALERT,
)
from maskgen.audit.stats import IPI_LABELS, SHARPNESS_LABELS


@dataclass
class Block:
    kind: str  # h1 h2 h3 p table figure warnings
    data: object


def pct(x: float | None, digits: int = 1) -> str:
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
        rows.append(["masked", f"{masks['masked']:,} ({pct(masks['ratio'], 2)})"])
    lab = src.get("labels")
    if lab:
        rows.append(["labels", f"{lab['file']} joined on {lab['join_on']}: "
                               f"{lab['matched_images']:,} images matched, "
                               f"{lab['unmatched_images']:,} without labels"])
    rows.append(["warnings", str(len(stats["warnings"]))])
    return rows


def build_blocks(stats: dict, figures: dict[str, bytes], title: str,
                 thumbs: dict[str, bytes] | None = None) -> list[Block]:
    """The report as blocks; ``thumbs`` are the sample strips (described in
    ``stats["_thumbnails"]``)."""
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
                                   pct(t["images"] / max(comp["images"], 1), 2)]
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
                            f"training images ({pct(masks['ratio'], 2)} masked). Per identity "
                            f"(the {pi['identities_with_2plus']:,} identities with at least two "
                            f"images): mean masked share {pct(pi['ratio'].get('mean'))}, "
                            f"std {pct(pi['ratio'].get('std'))}; {pi['with_no_masked']:,} have "
                            f"no masked image, {pi['all_masked']:,} only masked images."))
        if "masks.png" in figures:
            B.append(Block("figure", ("masks.png", "Mask type, colour, texture and wear mode")))
        for c in ("mask_type", "mask_color", "mask_texture", "wear"):
            d = masks.get(c)
            if d:
                tot = sum(d.values())
                B.append(Block("table", ([c.replace("_", " "), "masked images", "share"],
                                         [[k, f"{v:,}", pct(v / tot)] for k, v in d.items()])))
        if "fit_score" in masks:
            fs = masks["fit_score"]
            if masks.get("fit_score_constant"):
                B.append(Block("p", f"Mask fit score: {_num(fs.get('median'), 3)} for every "
                                    "masked image, as the manifest records it: a constant "
                                    "score carries no information about fit here."))
            else:
                B.append(Block("p", f"Mask fit score (as the manifest records it): median "
                                    f"{_num(fs.get('median'), 3)}, 5th percentile "
                                    f"{_num(fs.get('p05'), 3)}; {masks['poor_fit']:,} masked "
                                    f"images below {masks['fit_threshold']}."))
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
    B.extend(intersection_blocks(stats))
    B.extend(mask_mix_blocks(stats))
    B.extend(sample_blocks(stats, thumbs or {}))
    B.extend(skin_check_blocks(stats))

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


def intersection_blocks(stats: dict) -> list[Block]:
    inter = stats.get("intersections") or {}
    if not inter:
        return []
    B = [Block("h2", "Intersections"),
         Block("p", "Two attributes at a time: a dataset balanced by each attribute alone can "
                    "still hold few images of one combination. Each cell: kept images and "
                    "their share, the failure rate over attempted images and the masked share "
                    f"(cells under {MIN_GROUP_FOR_RATES} images are shown, not flagged).")]
    for key, x in inter.items():
        B.append(Block("h3", key))
        B.append(Block("figure", (f"cross_{slug(key)}.png", f"{key}: share of images, failure "
                                                           "rate and masked share per cell")))
        hdr = [x["columns"][0] + " \\ " + x["columns"][1]] + list(x["cols"])
        rows = []
        for i, r in enumerate(x["rows"]):
            cells = []
            for j in range(len(x["cols"])):
                t = f"{x['count'][i][j]:,} ({pct(x['share'][i][j])})"
                if "failure_rate" in x and x["failure_rate"][i][j] is not None:
                    t += f"; fail {pct(x['failure_rate'][i][j])}"
                if "masked_ratio" in x and x["masked_ratio"][i][j] is not None:
                    t += f"; masked {pct(x['masked_ratio'][i][j])}"
                cells.append(t)
            rows.append([r] + cells)
        B.append(Block("table", (hdr, rows)))
        if x.get("cells_under_min"):
            B.append(Block("p", f"{x['cells_under_min']} cells hold fewer than "
                                f"{MIN_GROUP_FOR_RATES} images."))
    return B


def mask_mix_blocks(stats: dict) -> list[Block]:
    mix = stats.get("mask_mix_by_group") or {}
    if not mix:
        return []
    B = [Block("h2", "Mask type and wear mode per group"),
         Block("p", "Among the masked images of each group: which mask types and wear modes "
                    "they got. The mix should not depend on the group; a chi-square test of "
                    "independence (groups of at least "
                    f"{MIN_GROUP_FOR_RATES} masked images) gives the p-value.")]
    for col, e in mix.items():
        B.append(Block("h3", f"by {col}"))
        B.append(Block("figure", (f"maskmix_{slug(col)}.png",
                                  f"Mask type and wear mode within each {col} group")))
        for part, x in e.items():
            bits = [f"{part.replace('_', ' ')}: chi-square p = "
                    + ("–" if x["chi2_p"] is None else f"{x['chi2_p']:.3g}")]
            g = x.get("largest_gap")
            if g:
                bits.append(f"largest gap: {g['value']} is {pct(g['share'])} of the masks of "
                            f"{g['group']} vs {pct(g['overall'])} overall")
            B.append(Block("p", "; ".join(bits) + "."))
    return B


def sample_blocks(stats: dict, thumbs: dict[str, bytes]) -> list[Block]:
    """Strips of masked samples (per mask type and wear mode) and of failed images (per
    group): what "masked" and "failed" look like."""
    desc = stats.get("_thumbnails") or []
    if stats.get("_thumbnails_off"):
        return [Block("h2", "Samples"),
                Block("p", "Sample thumbnails were left out of this report (--no-thumbnails): "
                           "it holds no copy of any source image.")]
    if not desc:
        return []
    B = [Block("h2", "Samples")]
    for section, title, text in (
            ("masked", "Masked samples per mask type and wear mode",
             "Training images as stored in the shards, chosen by a hash of their key."),
            ("failed", "Failed images per group",
             "Images where no face was found or the file could not be read (a crossed tile), "
             "shown whole."),
            ("tone", "Kept faces per skin-tone bin",
             "Source images whose face the audit put in each ITA bin: what the bins mean in "
             "this dataset (see the skin-tone check below).")):
        items = [d for d in desc if d["section"] == section and d["name"] in thumbs]
        if not items:
            continue
        B.append(Block("h3", title))
        B.append(Block("p", text))
        for d in items:
            B.append(Block("figure", (d["name"], f"{d['label']}: {d['shown']} of "
                                                 f"{d['count']:,} images")))
    return B


def skin_check_blocks(stats: dict) -> list[Block]:
    chk = stats.get("skin_tone_check")
    if not chk:
        return []
    B = [Block("h2", "Skin-tone check"),
         Block("p", "How far the skin-tone bars can be trusted. ITA is measured on "
                    "uncalibrated photographs: exposure and the colour of the light move it as "
                    "much as skin does. The audit corrects what the image allows (the "
                    "brightest 1% of the image, per channel, is taken as white: exposure and "
                    "colour cast are divided out) and keeps only skin-coloured pixels of the "
                    "cheeks and forehead. On FairFace (5,000 validation crops with perceived "
                    "race labels) this brings the share of faces binned \"dark\" from 25.5% "
                    "to 9.5% (12.9% are labelled Black), the share of faces labelled White "
                    "binned brown or dark from 40.3% to 16.5%, and the correlation of ITA with "
                    "image brightness among faces labelled White from 0.77 to 0.40; the "
                    "ordering of faces labelled White over faces labelled Black stays about "
                    "the same (AUC 0.77 vs 0.79). ITA from photos describes how a dataset "
                    "spreads, roughly; it misplaces many single faces by one or two bins, and "
                    "the bins' names (from skin colorimetry) do not transfer to photos.")]
    bits = []
    if chk.get("white_reference_share") is not None:
        bits.append(f"{pct(chk['white_reference_share'])} of the faces had a white reference "
                    "in their image (the others are measured uncorrected)")
    if chk.get("spearman_ita_brightness") is not None:
        bits.append(f"Spearman correlation of ITA with face brightness in this dataset: "
                    f"{chk['spearman_ita_brightness']:.2f} (near 1: the bins follow the "
                    f"lighting more than the skin)")
    if chk.get("uncorrected_share"):
        u, c = chk["uncorrected_share"], chk["corrected_share"]
        bits.append("share binned dark: " + f"{pct(c.get('dark'))} corrected, "
                    f"{pct(u.get('dark'))} uncorrected")
    if bits:
        B.append(Block("p", "; ".join(bits) + "."))
    B.append(Block("figure", ("skin_tone_check.png", "Skin-tone bins within each labelled "
                                                      "group and each brightness bin")))
    for col, e in (chk.get("by_label") or {}).items():
        hdr = [col, "images"] + list(e["tones"]) + ["median ITA"]
        rows = [[g, f"{sum(c):,}"] + [pct(x) for x in sh] + [_num(m, 1)]
                for g, c, sh, m in zip(e["groups"], e["counts"], e["share"], e["median_ita"])]
        B.append(Block("table", (hdr, rows)))
    if "by_brightness" in chk:
        e = chk["by_brightness"]
        hdr = ["face brightness", "images"] + list(e["tones"])
        rows = [[g, f"{sum(c):,}"] + [pct(x) for x in sh]
                for g, c, sh in zip(e["groups"], e["counts"], e["share"])]
        B.append(Block("table", (hdr, rows)))
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
                     pct(e.get("mask_ratio", {}).get("spread")),
                     pct(e.get("failure_rate", {}).get("spread")), str(n_warn)])
    return hdr, rows


def method_blocks() -> list[Block]:
    scale = ", ".join(
        f"{lab} ({'> ' + str(int(lo)) if hi == float('inf') else ('≤ ' + str(int(hi)) if lo == float('-inf') else f'{int(lo)}..{int(hi)}')})"
        for lab, lo, hi in ITA_BINS)
    return [
        Block("p", "Skin tone: Individual Typology Angle ITA = atan((L* − 50) / b*) · 180/π, "
                   "median over the skin-coloured cheek and forehead pixels located by the 68 "
                   "landmarks (eyes, brows, nostrils and lips excluded; shadows and highlights "
                   "dropped), after a white-point correction from the image's brightest 1%, "
                   "CIELab D65 with sRGB linearization; "
                   f"Del Bino scale: {scale}. ITA from photographs depends on lighting and white "
                   "balance: it describes the spread of a dataset, not any person."),
        Block("p", "Quality: sharpness = variance of the Laplacian of the face region's grey "
                   "levels after resampling it to 96×96 pixels, so the scale is absolute: "
                   f"{', '.join(SHARPNESS_LABELS)} (a sharp face blurred with a Gaussian of "
                   "σ = 2 px at that scale scores about 8, σ = 1 px about 33; a face of about "
                   "25 px upsampled scores 10-40); brightness = mean Rec. 601 luma of the face "
                   "region; face size = inter-ocular distance in pixels; pose = yaw/pitch/roll "
                   "from the landmarks."),
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
        bits.append(f"mask-ratio spread {pct(e['mask_ratio']['spread'])} (std "
                    f"{pct(e['mask_ratio']['std'])})")
    if "failure_rate" in e and e["failure_rate"]["spread"] is not None:
        bits.append(f"failure-rate spread {pct(e['failure_rate']['spread'])}")
    if bal["unknown"]:
        bits.append(f"{bal['unknown']:,} kept images without a value")
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
        row = [name, f"{g['count']:,}", pct(g["share"]), pct(g["target"]),
               _num(g["share_to_target"])]
        if mr:
            m = mr.get(name)
            row += ([pct(m["ratio"]), f"{pct(m['ci95'][0])}–{pct(m['ci95'][1])}"] if m
                    else ["–", "–"])
        if fr:
            f = fr.get(name)
            row += ([f"{f['attempted']:,}", f"{f['failed']:,}", pct(f["rate"])] if f
                    else ["0", "0", "–"])
        if ff:
            f2 = ff.get(name)
            row += [pct(f2["rate"]) if f2 else "–"]
        rows.append(row)
    out.append(Block("table", (hdr, rows)))
    return out


# ------------------------------------------------------------------ renderers
def _md_cell(s: str) -> str:
    return md(s)


def render_markdown(blocks: list[Block], figure_dir: str = "report",
                    figures: Iterable[str] | None = None) -> str:
    """Markdown of the blocks; every text is escaped (names from the data stay text).
    ``figures``: names of the figure files present (others are left out)."""
    present = None if figures is None else set(figures)
    out: list[str] = []
    for b in blocks:
        if b.kind in ("h1", "h2", "h3"):
            out.append("#" * int(b.kind[1]) + " " + md(b.data))
        elif b.kind == "p":
            out.append(md(b.data))
        elif b.kind == "warnings":
            items = b.data or []
            out.append("\n".join(f"- ⚠ {md(w)}" for w in items) if items else "No warnings.")
        elif b.kind == "table":
            hdr, rows = b.data
            out.append("| " + " | ".join(_md_cell(h) for h in hdr) + " |")
            out[-1] += "\n|" + "|".join("---" for _ in hdr) + "|"
            for r in rows:
                out[-1] += "\n| " + " | ".join(_md_cell(c) for c in r) + " |"
        elif b.kind == "figure":
            name, caption = b.data
            if present is not None and name not in present:
                continue
            out.append(f"![{md(caption)}]({figure_dir}/{name})")
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
            mime = "image/jpeg" if name.endswith(".jpg") else "image/png"
            uri = f"data:{mime};base64," + base64.b64encode(png).decode("ascii")
            out.append(f'<figure><img src="{uri}" alt="{e(caption)}" data-name="{e(name)}">'
                       f"<figcaption>{e(caption)}</figcaption></figure>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"
