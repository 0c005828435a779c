"""DATA_CARD.md: a Hugging Face dataset card with the Datasheets-for-Datasets sections.

The card is filled from the audit's stats and the build's resolved config (``build.yaml``), so
the numbers and the recipe it states are the measured ones. Machine paths in the config are
replaced by placeholders so the card is the same wherever the build ran.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from maskgen.audit.report import _pct

# What the card says about known sources (licence, citation, caveats).
KNOWN_SOURCES: dict[str, dict] = {
    "lfw": {
        "pretty": "Labeled Faces in the Wild (deep-funneled)",
        "hf_id": "lfw",
        "homepage": "https://vis-www.cs.umass.edu/lfw/",
        "license": "other",
        "license_name": "lfw-research-benchmark",
        "license_note": "LFW has no licence file. Its images are news photographs collected from "
                        "the web; copyright stays with the original photographers and agencies. "
                        "UMass distributes LFW as a public research benchmark for face "
                        "verification. A masked derivative inherits these terms: research use.",
        "annotations_creators": ["found"],
        "caveats": [
            "The LFW authors state that many groups are not well represented in LFW: very few "
            "children, no babies, very few people over 80, a relatively small proportion of "
            "women, and many ethnicities with minor or no representation.",
            "LFW images are mostly frontal, well-lit press photographs of public figures; poor "
            "lighting, extreme pose, strong occlusion and low resolution are rare.",
            "LFW was not designed to support statistical conclusions about subgroups, and "
            "performance on it does not show that an algorithm is fit for commercial use.",
        ],
        "citation": """@techreport{LFWTech,
  author      = {Gary B. Huang and Manu Ramesh and Tamara Berg and Erik Learned-Miller},
  title       = {Labeled Faces in the Wild: A Database for Studying Face Recognition in
                 Unconstrained Environments},
  institution = {University of Massachusetts, Amherst},
  number      = {07-49},
  year        = {2007},
  month       = {October}
}

@inproceedings{Huang2012a,
  author    = {Gary B. Huang and Marwan Mattar and Honglak Lee and Erik Learned-Miller},
  title     = {Learning to Align from Scratch},
  booktitle = {Advances in Neural Information Processing Systems (NIPS)},
  year      = {2012}
}""",
    },
    "fairface": {
        "pretty": "FairFace",
        "hf_id": "HuggingFaceM4/FairFace",
        "homepage": "https://github.com/joojs/fairface",
        "license": "cc-by-4.0",
        "annotations_creators": ["crowdsourced"],
        "caveats": ["FairFace race, gender and age labels are perceived attributes annotated by "
                    "crowd workers, not self-reported identities."],
        "citation": """@inproceedings{karkkainenjoo2021fairface,
  author    = {Kimmo Karkkainen and Jungseock Joo},
  title     = {FairFace: Face Attribute Dataset for Balanced Race, Gender, and Age for Bias
               Measurement and Mitigation},
  booktitle = {Proceedings of the IEEE/CVF Winter Conference on Applications of Computer Vision},
  pages     = {1548--1558},
  year      = {2021}
}""",
    },
}
GENERIC_SOURCE = {
    "pretty": "a face image collection",
    "license": "unknown",
    "license_note": "The terms of the source images apply; check them before any use.",
    "annotations_creators": ["found"],
    "caveats": [],
    "citation": None,
}
MASKTHEFACE_CITATION = """@article{anwar2020masked,
  author  = {Aqeel Anwar and Arijit Raychowdhury},
  title   = {Masked Face Recognition for Secure Authentication},
  journal = {arXiv preprint arXiv:2008.11104},
  year    = {2020}
}"""
MASKGEN_CITATION = """@misc{maskgen,
  title = {maskgen: masked-face recognition data and models},
  note  = {Synthetic masks placed from 68-point facial landmarks}
}"""


def size_category(n: int) -> str:
    """The Hugging Face ``size_categories`` bucket of ``n`` samples."""
    for bound, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
                         (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M"),
                         (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B")):
        if n < bound:
            return label
    return "n>1T"


def detect_source(build_config: dict | None, source_column: list[str] | None = None,
                  name: str = "") -> str:
    """The known source of a build (``lfw``, ``fairface``) or ``folder``."""
    cfg = build_config or {}
    cand = []
    for k in ("source", "source_type", "format", "input", "dataset", "name"):
        v = cfg.get(k)
        if isinstance(v, dict):
            cand += [str(x) for x in v.values() if isinstance(x, str)]
        elif isinstance(v, str):
            cand.append(v)
    cand += list(source_column or []) + [name]
    text = " ".join(cand).lower()
    for known in KNOWN_SOURCES:
        if known in text:
            return known
    return "folder"


def sanitize(obj, replacements: list[tuple[str, str]]):
    """Replace machine-specific absolute paths in a config by placeholders."""
    if isinstance(obj, dict):
        return {k: sanitize(v, replacements) for k, v in obj.items()}
    if isinstance(obj, list):
        return [sanitize(v, replacements) for v in obj]
    if isinstance(obj, str) and (os.path.isabs(obj) or obj.startswith("~")):
        for prefix, token in replacements:
            if prefix and (obj == prefix or obj.startswith(prefix.rstrip("/") + "/")):
                return token + obj[len(prefix.rstrip("/")):]
        return "<path>/" + Path(obj).name
    return obj


def scrub_text(text: str, replacements: list[tuple[str, str]]) -> str:
    """Replace machine paths inside free text (e.g. a reproduce command) by placeholders."""
    for prefix, token in replacements:
        if prefix and prefix not in ("/", "."):
            text = text.replace(prefix.rstrip("/"), token)
    return text


def path_replacements(*out_dirs: Path | None) -> list[tuple[str, str]]:
    """Prefixes to replace: the build/report folders -> <out>, the data home -> <data_home>."""
    from maskgen.data_home import data_home

    reps: list[tuple[str, str]] = []
    for d in out_dirs:
        if d is not None:
            reps.append((str(Path(d).resolve()), "<out>"))
            reps.append((str(d), "<out>"))
    dh = data_home()
    reps.append((str(dh.resolve()) if dh.exists() else str(dh), "<data_home>"))
    reps.append((str(dh), "<data_home>"))
    reps.append((str(Path.home()), "~"))
    return sorted(reps, key=lambda r: -len(r[0]))


# Execution settings: they change how fast a build runs, never its bytes.
# ``landmarks_from`` only points at a cache of detections.
EXECUTION_KEYS = {"workers", "ray_address", "progress", "mode", "report", "chunk_size",
                  "landmarks_from"}


def _recipe(cfg: dict) -> dict:
    """The mask recipe of a build config: ratio, seed, stratification and the resolved mask mix
    (type, wear, colour and texture probabilities) when the pipeline can resolve it."""
    keys = ("ratio", "seed", "twins", "stratify", "min_masked", "output", "image_size",
            "detector")
    out = {k: cfg[k] for k in keys if k in cfg}
    try:
        from maskgen.pipelines.maskmix import MaskMix

        mix = MaskMix.resolve(cfg.get("mask_mix"), mask_types=cfg.get("mask_types"),
                              wear=cfg.get("wear"), texture_prob=cfg.get("texture_prob"))
        out["mask_mix"] = {"recipe": cfg.get("mask_mix") or "default", **mix.to_dict()}
    except Exception:  # another pipeline version, or a recipe file not on this machine
        out.update({k: v for k, v in cfg.items() if "mask" in k or k in ("wear", "texture_prob")})
    return out


def render_card(stats: dict, *, build_config: dict | None = None, dataset_info: dict | None = None,
                out_dir: Path | None = None, build_dir: Path | None = None, name: str = "",
                source_kind: str | None = None, reproduce: str | None = None) -> str:
    """The DATA_CARD.md text of a build (or of any audited source)."""
    comp, masks = stats["composition"], stats["masks"]
    reps = path_replacements(build_dir, out_dir)
    cfg = sanitize(build_config or {}, reps)
    kind = source_kind or detect_source(build_config, None, name)
    src = KNOWN_SOURCES.get(kind, GENERIC_SOURCE)
    n = comp["images"]
    ratio = masks.get("ratio")
    twins = bool(cfg.get("twins"))
    want = cfg.get("ratio") if isinstance(cfg.get("ratio"), (int, float)) else None
    shown = want if want is not None else (round(ratio, 3) if ratio is not None else None)
    pretty = f"Masked {src['pretty']}" + (f", mask ratio {shown:g}" if shown is not None else "")
    front: dict = {
        "pretty_name": pretty,
        "license": src["license"],
    }
    if src.get("license_name"):
        front["license_name"] = src["license_name"]
        front["license_link"] = src["homepage"]
    front.update({
        "task_categories": ["image-classification", "image-feature-extraction"],
        "tags": ["face-recognition", "masked-face-recognition", "synthetic-masks", "webdataset"],
        "size_categories": [size_category(n)],
        "source_datasets": [f"extended|{src['hf_id']}"] if src.get("hf_id") else ["original"],
        "annotations_creators": list(src["annotations_creators"]) + ["machine-generated"],
        "configs": [{"config_name": "default",
                     "data_files": [{"split": "train", "path": "shards/*.tar"}]}],
    })
    front = {k: v for k, v in front.items() if v != []}
    lines = ["---", yaml.safe_dump(front, sort_keys=False, allow_unicode=True).rstrip(), "---", ""]
    A = lines.append
    A(f"# Dataset Card for {pretty}")
    A("")
    A(f"A face-recognition training set derived from {src['pretty']}: "
      f"{n:,} images of {comp['identities']:,} identities, "
      + (f"{masks['masked']:,} of them ({_pct(ratio, 2)}) carrying a synthetic face mask "
         "placed from 68 facial landmarks. " if ratio is not None else "")
      + "Samples are stored as WebDataset tar shards with a parquet manifest. The balance "
        "report (`report.html`, `report.md`, `stats.json`) next to this card holds every figure "
        "quoted here.")
    A("")
    A("## Motivation")
    A("")
    A("Face recognisers trained on unmasked faces lose accuracy on masked ones. This dataset "
      "adds realistic synthetic masks to a fixed fraction of a public face dataset so that "
      "masked-face recognition methods can be trained and compared reproducibly: the same "
      "source, recipe and seed give the same bytes. It was built with `maskgen build`, and "
      "its balance was measured with `maskgen audit`.")
    A("")
    A("## Composition")
    A("")
    rows = [("images (kept)", f"{n:,}"), ("identities", f"{comp['identities']:,}"),
            ("images in the source", f"{comp['rows']:,}"),
            ("dropped by filters", f"{comp['dropped']:,}"), ("failed", f"{comp['failed']:,}")]
    if ratio is not None:
        rows += [("masked images", f"{masks['masked']:,} ({_pct(ratio, 2)})"),
                 ("unmasked images", f"{masks['unmasked']:,}")]
    if dataset_info:
        for k in ("num_samples", "num_classes", "num_shards"):
            if k in dataset_info:
                rows.append((k.replace("_", " "), f"{dataset_info[k]:,}"
                             if isinstance(dataset_info[k], int) else str(dataset_info[k])))
    A("| | |\n|---|---|\n" + "\n".join(f"| {a} | {b} |" for a, b in rows))
    A("")
    A("Each sample is `<key>.jpg` (the training image, masked for the planned fraction), "
      "`<key>.cls` (contiguous identity label) and `<key>.json` (source, identity name, mask "
      "type, colour, texture, wear mode, landmarks, pose, quality, skin tone, fit score, seed)"
      + (", plus `<key>.orig.jpg` and `<key>.masked.jpg` twins" if twins else "")
      + ". `manifest.parquet` keeps one row per source image, dropped and failed ones included "
        "with their reason. There is one split (`train`); identity labels are names from the "
        "source.")
    A("")
    ipi = comp["images_per_identity"]
    A("Images per identity: " + ", ".join(f"{k}: {v:,}" for k, v in ipi["histogram"].items())
      + f" identities (median {ipi['summary'].get('median', 0):g}, max "
        f"{ipi['summary'].get('max', 0):g}).")
    A("")
    for c in ("mask_type", "mask_color", "mask_texture", "wear"):
        d = masks.get(c)
        if d:
            tot = sum(d.values())
            A(f"- {c.replace('_', ' ')}: " + ", ".join(f"{k} {_pct(v / tot)}" for k, v in d.items()))
    A("")
    for col, e in stats["attributes"].items():
        if e["kind"] != "demographic":
            continue
        g = [r for r in e["balance"]["groups"] if r["share"] is not None]
        A(f"- {e['title']}: " + ", ".join(f"{r['group']} {_pct(r['share'])}" for r in g)
          + f" (normalized entropy {e['balance']['normalized_entropy']})")
    A("")
    A("## Collection and preprocessing")
    A("")
    A(f"Source: {src['pretty']}" + (f" ({src['homepage']})" if src.get("homepage") else "")
      + ". The build scanned the source into a manifest, applied the identity filters, detected "
        "68 landmarks per image (dlib), planned deterministically from the seed which images "
        "are masked and with which mask, rendered the masks, and wrote the shards; the "
        "skin-tone and quality attributes were measured on the source image.")
    A("")
    recipe = _recipe(cfg)
    if recipe:
        A("Mask recipe:")
        A("")
        A("```yaml\n" + yaml.safe_dump(recipe, sort_keys=True, allow_unicode=True).rstrip()
          + "\n```")
        A("")
    if cfg:
        A("Exact build configuration (`build.yaml`; machine paths replaced by placeholders, "
          "execution settings such as the number of workers left out: they do not change the "
          "output):")
        A("")
        shown = {k: v for k, v in cfg.items() if k not in EXECUTION_KEYS}
        A("```yaml\n" + yaml.safe_dump(shown, sort_keys=True, allow_unicode=True).rstrip()
          + "\n```")
        A("")
    if comp["drops_by_reason"] or comp["failures_by_reason"]:
        A("Images removed: " + ", ".join(
            [f"{v:,} dropped ({k})" for k, v in comp["drops_by_reason"].items()]
            + [f"{v:,} failed ({k})" for k, v in comp["failures_by_reason"].items()]) + ".")
        A("")
    if reproduce:
        A(f"Reproduce: `{scrub_text(reproduce, reps)}`")
        A("")
    A("## Uses")
    A("")
    A("- Training and evaluating masked-face recognition models (ArcFace-family) in research.")
    A("- Measuring how face recognisers degrade with masks, per mask type and wear mode.")
    A("")
    A("### Out-of-scope uses")
    A("")
    A("- Identifying, tracking or surveilling people, or any decision about a person.")
    A("- Claims that a model is accurate or fair for a population: the data is not "
      "representative (see below).")
    A("- Inferring demographic attributes: the skin-tone values are coarse photometric "
      "measurements for auditing, not labels of people.")
    if kind == "lfw" and not cfg.get("exclude_eval"):
        A("- Evaluating a model trained on it with LFW's own verification protocol "
          "(`pairs.txt`): this build keeps the LFW evaluation identities (build with "
          "`--exclude-eval lfw` for a disjoint training set).")
    A("")
    A("## Bias, risks and limitations")
    A("")
    A("Measured imbalances (from the balance report):")
    A("")
    if stats["warnings"]:
        for w in stats["warnings"]:
            A(f"- {w}")
    else:
        A("- none above the report's thresholds.")
    A("")
    for c in src.get("caveats", []):
        A(f"- {c}")
    A("- Masks are synthetic: mask designs warped onto detected landmarks. Real masks differ "
      "in fit, material, lighting and occlusion; results on this data need confirmation on real "
      "masked faces.")
    if any("failure rate" in w for w in stats["warnings"]):
        A("- The failure rates per skin tone use, for the failed images, a skin tone measured "
          "on the image centre (no landmarks): they show a trend, not an exact rate.")
    A("- Images where landmark detection failed are excluded; if the detector fails more for "
      "some groups, those groups shrink further (failure rates per group are in the report).")
    A("- Skin tone is estimated with the Individual Typology Angle on uncalibrated "
      "photographs; lighting and white balance shift it.")
    A("")
    A("## Licence")
    A("")
    A(src.get("license_note", f"Licence of the source: {src['license']}."))
    A("")
    A("## Maintenance")
    A("")
    A("The card, the report and the stats are regenerated from the build with `maskgen card "
      "<build>` (or as part of `maskgen build`); they carry no timestamp, so an unchanged build "
      "gives the same files. Report problems in the maskgen issue tracker.")
    A("")
    A("## Citation")
    A("")
    A("Source dataset:")
    A("")
    if src.get("citation"):
        A("```bibtex\n" + src["citation"] + "\n```")
    else:
        A("Cite the source of the images as its authors ask.")
    A("")
    if "masktheface" in yaml.safe_dump(cfg).lower():
        A("Mask templates (MaskTheFace):")
        A("")
        A("```bibtex\n" + MASKTHEFACE_CITATION + "\n```")
        A("")
    return "\n".join(lines).rstrip() + "\n"
