"""DATA_CARD.md: a Hugging Face dataset card with the Datasheets-for-Datasets sections.

The card of a build with shards declares the features of its samples (``dataset_info:
features:``, from :mod:`maskgen.datasets.hf`) next to ``configs:``; written into the build
folder itself it is also written as ``README.md``, the name ``datasets.load_dataset(<folder>)``
and the Hub read.

The card describes what was audited, nothing else. A build gets the card of a derived
dataset (shards, the mask recipe of its ``build.yaml``, ``configs:``); a folder or a bare
manifest gets the card of the images as found (no masks, shards or recipe unless the
manifest shows them). What is known about the source (licence, citation, caveats) comes from
the catalog of known datasets (:mod:`maskgen.datasets.catalog`) by exact name; an unknown
source has licence ``unknown`` until the user sets one (``--license``). Machine paths in the
config are replaced by placeholders so the card is the same wherever the build ran, and every
name that comes from the data is escaped (:mod:`maskgen.audit.escape`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from maskgen.audit.escape import controls_to_spaces, md, md_code
from maskgen.audit.report import pct
from maskgen.datasets.catalog import UNKNOWN, DatasetInfo
from maskgen.datasets.hf import features_yaml

MASKTHEFACE_CITATION = """@article{anwar2020masked,
  author  = {Aqeel Anwar and Arijit Raychowdhury},
  title   = {Masked Face Recognition for Secure Authentication},
  journal = {arXiv preprint arXiv:2008.11104},
  year    = {2020}
}"""
# Execution settings: they change how fast a build runs, never its bytes.
# ``landmarks_from`` only points at a cache of detections.
EXECUTION_KEYS = {"workers", "ray_address", "progress", "quiet", "mode", "report", "chunk_size",
                  "landmarks_from"}
# The keys of build.yaml that make up the mask recipe.
# (``output``, ``detector``, ``mask_types``: their names in builds made before ``image_mode``,
# ``backend`` and ``mask_type``)
RECIPE_KEYS = ("ratio", "seed", "twins", "stratify", "min_masked", "image_mode", "output", "image_size",
               "backend", "detector", "mask_mix", "mask_type", "mask_types", "wear", "texture_prob")


def size_category(n: int) -> str:
    """The Hugging Face ``size_categories`` bucket of ``n`` samples."""
    for bound, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
                         (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M"),
                         (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B")):
        if n < bound:
            return label
    return "n>1T"


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
    if isinstance(obj, str) and ":" in obj:  # kind:/abs/path source strings
        kind, _, rest = obj.partition(":")
        if kind.isalpha() and (os.path.isabs(rest) or rest.startswith("~")):
            return f"{kind}:{sanitize(rest, replacements)}"
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


@dataclass(frozen=True)
class Licence:
    """The licence a card states, and where that statement comes from."""

    id: str  # SPDX-style id, "other" or "unknown"
    name: str | None  # the name of "other" terms
    note: str  # the paragraph of the Licence section
    link: str | None

    @property
    def unknown(self) -> bool:
        return self.id == UNKNOWN


def resolve_licence(dataset: DatasetInfo | None, override: str | None = None) -> Licence:
    """The card's licence: the user's ``--license``, else the catalog's, else ``unknown``."""
    if override:
        lid = controls_to_spaces(override).strip().lower()
        note = f"Licence set by the user of `maskgen audit`/`card` (`--license {lid}`)."
        if dataset is not None and dataset.license not in (UNKNOWN, lid):
            note += (f" The catalog of known datasets lists {dataset.pretty_name} as "
                     f"`{dataset.license}`: " + (dataset.license_note or ""))
        return Licence(lid, None, note.rstrip(), dataset.url if dataset else None)
    if dataset is not None and dataset.known_license:
        note = dataset.license_note or f"{dataset.pretty_name} is released as `{dataset.license}`."
        return Licence(dataset.license, dataset.license_name, note, dataset.url)
    if dataset is not None:
        note = (f"Unknown. {dataset.license_note or ''} Set the licence with "
                "`--license ID` (an SPDX id, or `other`) once you know the terms.")
        return Licence(UNKNOWN, None, " ".join(note.split()), dataset.url)
    return Licence(UNKNOWN, None,
                   "Unknown: the source is not in maskgen's catalog of known datasets, so its "
                   "terms are not known here. The terms of the source images apply; set the "
                   "licence with `--license ID` (an SPDX id, or `other`) once you know them.",
                   None)


def mask_recipe(cfg: dict) -> dict:
    """The mask recipe of a build config, with the resolved mix when ``maskgen.masks`` can
    resolve it (the masks library owns the recipes; the audit never imports the pipeline)."""
    out = {k: cfg[k] for k in RECIPE_KEYS if k in cfg}
    try:
        from maskgen import masks as M

        mix_cls = getattr(M, "MaskMix", None)
        if mix_cls is not None:
            mix = mix_cls.resolve(cfg.get("mask_mix"), mask_types=cfg.get("mask_type", cfg.get("mask_types")),
                                  wear=cfg.get("wear"), texture_prob=cfg.get("texture_prob"))
            out["mask_mix"] = {"recipe": cfg.get("mask_mix") or "default", **mix.to_dict()}
    except Exception:  # a recipe file not on this machine, or another library version
        pass
    return out


@dataclass
class CardInput:
    """What the card may say: the stats plus what is known of the audited thing."""

    stats: dict
    kind: str  # build | manifest | folder
    name: str
    dataset: DatasetInfo | None = None
    licence_override: str | None = None
    build_config: dict | None = None
    dataset_info: dict | None = None
    out_dir: Path | None = None
    build_dir: Path | None = None
    has_shards: bool = False
    flat: bool = False  # a folder without identity structure
    reproduce: str | None = None
    thumbnails: bool = True  # the report next to the card shows sample images


def render_card(ci: CardInput) -> str:
    """The DATA_CARD.md text of an audited build, manifest or folder."""
    stats = ci.stats
    comp, masks = stats["composition"], stats["masks"]
    reps = path_replacements(ci.build_dir, ci.out_dir)
    cfg = sanitize(ci.build_config or {}, reps)
    ds = ci.dataset
    lic = resolve_licence(ds, ci.licence_override)
    n = comp["images"]
    has_masks = bool(masks.get("available") and masks.get("masked"))
    derived = ci.kind == "build"
    src_pretty = ds.pretty_name if ds else None
    if derived:
        want = cfg.get("ratio") if isinstance(cfg.get("ratio"), (int, float)) else None
        ratio = masks.get("ratio")
        shown = want if want is not None else (round(ratio, 3) if ratio is not None else None)
        base = src_pretty or controls_to_spaces(ci.name)
        pretty = f"Masked {base}" + (f", mask ratio {shown:g}" if shown is not None else "")
    else:
        pretty = src_pretty or controls_to_spaces(ci.name)
    front = _front_matter(ci, pretty, lic, derived, has_masks, n)
    lines = ["---", yaml.safe_dump(front, sort_keys=False, allow_unicode=True).rstrip(), "---", ""]
    A = lines.append
    A(f"# Dataset Card for {md(pretty)}")
    A("")
    A(_summary(ci, derived, has_masks))
    A("")
    A("## Motivation")
    A("")
    if derived:
        A("Face recognisers trained on unmasked faces lose accuracy on masked ones. This dataset "
          "adds synthetic masks to a fixed fraction of a public face dataset so that "
          "masked-face recognition methods can be trained and compared reproducibly: the same "
          "source, recipe and seed give the same bytes. It was built with `maskgen build`, and "
          "its balance was measured with `maskgen audit`.")
    else:
        A("This card was written by `maskgen audit` to document the composition of the audited "
          f"{'image folder' if ci.kind == 'folder' else 'manifest'} and the balance of its "
          "labels and measured attributes. It describes the images as found; it does not "
          "describe a derived dataset, and maskgen made no change to them.")
    A("")
    _composition(A, ci, derived, has_masks)
    _collection(A, ci, cfg, derived, has_masks, reps)
    _uses(A, ci, cfg, derived)
    _bias(A, ci, derived)
    A("## Licence")
    A("")
    A(lic.note)
    if derived and not lic.unknown:
        A("")
        A("A masked derivative inherits the terms of its source.")
    A("")
    A("## Maintenance")
    A("")
    if derived:
        A("The card, the report and the stats are regenerated from the build with `maskgen card "
          "<build>` (or as part of `maskgen build`); they carry no timestamp, so an unchanged "
          "build gives the same files. Report problems in the maskgen issue tracker.")
    else:
        A("The card, the report, the per-image table and the stats are regenerated with "
          "`maskgen audit`; they carry no timestamp, so unchanged images give the same files.")
    A("")
    A("## Citation")
    A("")
    A("Source dataset:")
    A("")
    if ds is not None and ds.citation:
        A("```bibtex\n" + ds.citation + "\n```")
    else:
        A("Cite the source of the images as its authors ask.")
    A("")
    if derived and "masktheface" in yaml.safe_dump(cfg).lower():
        A("Mask templates (MaskTheFace):")
        A("")
        A("```bibtex\n" + MASKTHEFACE_CITATION + "\n```")
        A("")
    return "\n".join(lines).rstrip() + "\n"


def _front_matter(ci: CardInput, pretty: str, lic: Licence, derived: bool, has_masks: bool,
                  n: int) -> dict:
    ds = ci.dataset
    front: dict = {"pretty_name": controls_to_spaces(pretty), "license": lic.id}
    if lic.name:
        front["license_name"] = lic.name
    if lic.link and lic.id == "other":
        front["license_link"] = lic.link
    creators = list(ds.annotations_creators) if ds else ["found"]
    if derived:
        front["task_categories"] = ["image-classification", "image-feature-extraction"]
        tags = ["face-recognition"]
        if has_masks:
            tags += ["masked-face-recognition", "synthetic-masks"]
        if ci.has_shards:
            tags.append("webdataset")
        front["tags"] = tags
        front["size_categories"] = [size_category(n)]
        front["source_datasets"] = [f"extended|{ds.hf_id}"] if ds and ds.hf_id else ["original"]
        front["annotations_creators"] = creators + (["machine-generated"] if has_masks else [])
        if ci.has_shards:
            front["configs"] = [{"config_name": "default",
                                 "data_files": [{"split": "train", "path": "shards/*.tar"}]}]
            # the features, declared: inferred from the first samples, a field null there
            # (``mask`` of an unmasked sample) would be typed null and later samples fail
            front["dataset_info"] = {"config_name": "default",
                                     "features": sample_features_yaml(ci)}
    else:
        front["tags"] = ["face-images", "dataset-audit"]
        front["size_categories"] = [size_category(n)]
        if ds and ds.hf_id:
            front["source_datasets"] = [ds.hf_id]
        front["annotations_creators"] = creators
    return front


def sample_features_yaml(ci: CardInput) -> list[dict]:
    """The Hugging Face features of the build's samples (``dataset_info: features:``): the
    label columns and twins of its ``dataset.json`` (else its config)."""
    info = ci.dataset_info or {}
    cfg = ci.build_config or {}
    labels = info.get("label_columns")
    twins = info.get("twins", cfg.get("twins"))
    return features_yaml([str(c) for c in labels or ()], bool(twins))


def _identities_phrase(ci: CardInput) -> str:
    comp = ci.stats["composition"]
    if ci.flat:
        return "no identity labels (a flat folder: each image counts as its own identity)"
    return f"{comp['identities']:,} identities"


def _summary(ci: CardInput, derived: bool, has_masks: bool) -> str:
    comp, masks = ci.stats["composition"], ci.stats["masks"]
    n = comp["images"]
    src = md(ci.dataset.pretty_name) if ci.dataset else "an image collection of unknown origin"
    if derived:
        text = (f"A face-recognition training set derived from {src}: {n:,} images of "
                f"{_identities_phrase(ci)}")
        if has_masks:
            text += (f", {masks['masked']:,} of them ({pct(masks['ratio'], 2)}) carrying a "
                     "synthetic face mask placed from 68 facial landmarks")
        else:
            text += "; no image is masked"
        text += "."
        if ci.has_shards:
            text += " Samples are stored as WebDataset tar shards with a parquet manifest."
    else:
        what = "An image folder" if ci.kind == "folder" else "A manifest of images"
        text = (f"{what} ({md_code(ci.name)}) from {src}, audited with `maskgen audit`: "
                f"{comp['rows']:,} images found, {n:,} with a detected face and "
                f"{comp['failed']:,} failed; {_identities_phrase(ci)}.")
        if not has_masks:
            text += " The images carry no synthetic masks and are not stored as shards."
    text += (" The balance report (`report.html`, `report.md`, `stats.json`) next to this "
             "card holds every figure quoted here")
    if not ci.thumbnails:
        text += ("; it was written without sample thumbnails (`--no-thumbnails`), so no copy "
                 "of a source image is part of it")
    return text + "."


def _composition(A, ci: CardInput, derived: bool, has_masks: bool) -> None:
    stats = ci.stats
    comp, masks = stats["composition"], stats["masks"]
    A("## Composition")
    A("")
    if derived:
        rows = [("images (kept)", f"{comp['images']:,}"),
                ("identities", f"{comp['identities']:,}"),
                ("images in the source", f"{comp['rows']:,}"),
                ("dropped by filters", f"{comp['dropped']:,}"), ("failed", f"{comp['failed']:,}")]
    else:
        rows = [("images found", f"{comp['rows']:,}"),
                ("images with a detected face", f"{comp['images']:,}"),
                ("failed (unreadable or no face)", f"{comp['failed']:,}")]
        if not ci.flat:
            rows.insert(1, ("identities", f"{comp['identities_in_source']:,}"))
    if has_masks:
        rows += [("masked images", f"{masks['masked']:,} ({pct(masks['ratio'], 2)})"),
                 ("unmasked images", f"{masks['unmasked']:,}")]
    info = ci.dataset_info or {}
    if derived:
        for k in ("num_samples", "num_classes"):
            if isinstance(info.get(k), int):
                rows.append((k.replace("_", " "), f"{info[k]:,}"))
        if isinstance(info.get("shards"), list):
            rows.append(("shards", f"{len(info['shards']):,}"))
    lab = stats.get("source", {}).get("labels")
    if lab:
        rows.append(("labels", f"{md(lab['file'])} joined on {lab['join_on']}: "
                               f"{lab['matched_images']:,} images matched"))
    A("| | |\n|---|---|\n" + "\n".join(f"| {a} | {b} |" for a, b in rows))
    A("")
    if derived and ci.has_shards:
        twins = bool((ci.build_config or {}).get("twins"))
        A("Each sample is `<key>.jpg` (the training image, masked for the planned fraction), "
          "`<key>.cls` (contiguous identity label) and `<key>.json` (source, identity name, "
          "mask type, colour, texture, wear mode, landmarks, pose, quality, skin tone, fit "
          "score, seed)" + (", plus `<key>.orig.jpg` and `<key>.masked.jpg` twins" if twins
                            else "")
          + ". `manifest.parquet` keeps one row per source image, dropped and failed ones "
            "included with their reason. There is one split (`train`); identity labels are "
            "names from the source.")
        A("")
    elif not derived and ci.kind == "folder":
        A("`images.parquet` and `images.csv` next to this card hold one row per image found "
          "(path relative to the folder, status and reason, measured attributes, joined "
          "labels).")
        A("")
    if not ci.flat:
        ipi = comp["images_per_identity"]
        A("Images per identity: " + ", ".join(f"{k}: {v:,}" for k, v in ipi["histogram"].items())
          + f" identities (median {ipi['summary'].get('median', 0):g}, max "
            f"{ipi['summary'].get('max', 0):g}).")
        A("")
    if has_masks:
        for c in ("mask_type", "mask_color", "mask_texture", "wear"):
            d = masks.get(c)
            if d:
                tot = sum(d.values())
                A(f"- {c.replace('_', ' ')}: "
                  + ", ".join(f"{md(k)} {pct(v / tot)}" for k, v in d.items()))
        A("")
    demo = [(col, e) for col, e in stats["attributes"].items() if e["kind"] == "demographic"]
    for col, e in demo:
        g = [r for r in e["balance"]["groups"] if r["share"] is not None]
        A(f"- {md(e['title'])}: " + ", ".join(f"{md(r['group'])} {pct(r['share'])}" for r in g)
          + f" (normalized entropy {e['balance']['normalized_entropy']})")
    if demo:
        A("")


def _collection(A, ci: CardInput, cfg: dict, derived: bool, has_masks: bool, reps) -> None:
    stats, ds = ci.stats, ci.dataset
    A("## Collection and preprocessing")
    A("")
    src = (f"Source: {md(ds.pretty_name)}" + (f" (<{ds.url}>)" if ds.url else "") + ".") if ds \
        else "Source: not a dataset maskgen knows (see the licence below)."
    if derived:
        A(src + " The build scanned the source into a manifest, applied the identity filters, "
          "detected 68 landmarks per image, planned deterministically from the seed which "
          "images are masked and with which mask, rendered the masks, and wrote the shards; "
          "the skin-tone and quality attributes were measured on the source image.")
        A("")
        recipe = mask_recipe(cfg)
        if recipe:
            A("Mask recipe:")
            A("")
            A("```yaml\n" + yaml.safe_dump(recipe, sort_keys=True, allow_unicode=True).rstrip()
              + "\n```")
            A("")
        if cfg:
            A("Exact build configuration (`build.yaml`; machine paths replaced by placeholders, "
              "execution settings such as the number of workers left out: they do not change "
              "the output):")
            A("")
            shown = {k: v for k, v in cfg.items() if k not in EXECUTION_KEYS}
            A("```yaml\n" + yaml.safe_dump(shown, sort_keys=True, allow_unicode=True).rstrip()
              + "\n```")
            A("")
    else:
        how = ("The audit read every image of the folder, detected 68 facial landmarks (the "
               "most central face is the subject) and measured skin tone (ITA), pose and "
               "quality on the face; an image that could not be read or showed no face is "
               "kept as a failed row with its reason."
               if ci.kind == "folder" else
               "The audit read the manifest; attributes come from it, or were measured on the "
               "images it points to where it lacked them.")
        A(src + " " + how)
        A("")
        for note in stats.get("source", {}).get("notes", []):
            A(f"- {md(note)}.")
        if stats.get("source", {}).get("notes"):
            A("")
    comp = stats["composition"]
    if comp["drops_by_reason"] or comp["failures_by_reason"]:
        A("Images removed: " + ", ".join(
            [f"{v:,} dropped ({md(k)})" for k, v in comp["drops_by_reason"].items()]
            + [f"{v:,} failed ({md(k)})" for k, v in comp["failures_by_reason"].items()]) + ".")
        A("")
    if ci.reproduce:
        A(f"Reproduce: {md_code(scrub_text(ci.reproduce, reps))}")
        A("")


def _uses(A, ci: CardInput, cfg: dict, derived: bool) -> None:
    A("## Uses")
    A("")
    if derived:
        A("- Training and evaluating masked-face recognition models (ArcFace-family) in "
          "research.")
        A("- Measuring how face recognisers degrade with masks, per mask type and wear mode.")
    else:
        A("- Knowing, before any use, how the images spread over labelled groups, skin tone, "
          "pose and quality, and where face detection fails.")
    A("")
    A("### Out-of-scope uses")
    A("")
    A("- Identifying, tracking or surveilling people, or any decision about a person.")
    A("- Claims that a model is accurate or fair for a population: the data is not "
      "representative (see below).")
    A("- Inferring demographic attributes: the skin-tone values are coarse photometric "
      "measurements for auditing, not labels of people.")
    ds = ci.dataset
    if derived and ds is not None and ds.evaluation and not cfg.get("exclude_eval"):
        A(f"- Evaluating a model trained on it with {md(ds.pretty_name)}'s own verification "
          "protocol: this build keeps its evaluation identities (build with `--exclude-eval` "
          "for a disjoint training set).")
    A("")


def _bias(A, ci: CardInput, derived: bool) -> None:
    stats = ci.stats
    A("## Bias, risks and limitations")
    A("")
    A("Measured imbalances (from the balance report):")
    A("")
    if stats["warnings"]:
        for w in stats["warnings"]:
            A(f"- {md(w)}")
    else:
        A("- none above the report's thresholds.")
    A("")
    for c in (ci.dataset.caveats if ci.dataset else ()):
        A(f"- {c}")
    if derived and stats["masks"].get("masked"):
        A("- Masks are synthetic: mask designs warped onto detected landmarks. Real masks "
          "differ in fit, material, lighting and occlusion; results on this data need "
          "confirmation on real masked faces.")
    if any("failure rate" in w for w in stats["warnings"]):
        A("- The failure rates per skin tone use, for the failed images, a skin tone measured "
          "on the image centre (no landmarks): they show a trend, not an exact rate.")
    A("- Images where landmark detection failed are "
      + ("excluded" if derived else "counted as failed")
      + "; if the detector fails more for some groups, those groups shrink (failure rates per "
        "group are in the report).")
    A("- Skin tone is estimated with the Individual Typology Angle on uncalibrated "
      "photographs; lighting and white balance shift it (see the report's skin-tone check).")
    A("")
