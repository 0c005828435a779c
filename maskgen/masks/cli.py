"""Commands of the masks stage: ``maskgen mask``, ``maskgen landmarks``, ``maskgen contact-sheet``.

Each input gets one JSON line with its status; unreadable or faceless inputs are reported with
a reason and the rest continue.
"""

from __future__ import annotations

import json
import sys
import zlib
from collections import Counter
from pathlib import Path
from typing import Iterator

import click

from maskgen.masks.options import BACKEND, MASK_TYPE, SELECT
from maskgen.options import OUT, QUALITY, QUIET, REQUIRED, SEED, Alias, Config, Field, Schema, existing

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm", ".pgm"}


def iter_inputs(src: Path, recursive: bool = True) -> Iterator[Path]:
    """The image files of a file or folder, sorted (every file with an image extension)."""
    if not src.is_dir():  # a file, or a FIFO/device that load_image refuses with its reason
        yield src
        return
    from maskgen.outputs import is_owned

    owned: dict[Path, bool] = {}  # folders holding maskgen's marker: outputs, never inputs

    def in_owned(p: Path) -> bool:
        for d in p.parents:
            if d == src.parent:
                return False
            if d not in owned:
                owned[d] = is_owned(d)
            if owned[d]:
                return True
        return False

    pattern = "**/*" if recursive else "*"
    for p in sorted(src.glob(pattern)):
        if p.suffix.lower() in IMAGE_EXTS and not p.is_dir() and not in_owned(p):
            yield p


def path_seed(seed: int, rel: str) -> int:
    """A per-image seed from the run seed and the image's relative path (order-independent)."""
    return (int(seed) * 1_000_003 + zlib.crc32(rel.encode("utf-8", "surrogateescape"))) % (2**32)


GROUP_IMAGES = 64  # images loaded and detected together (batched landmark fits)
GROUP_PIXELS = 24 * 1024 * 1024


def load_with_faces(paths, backend: str, select: str, group: int | None = None, jpeg: bool = False) -> Iterator[tuple]:
    """``(path, image, reason, faces)`` for each path, in order. The images are detected a group
    at a time (``detect_faces_many``: batched landmark fits for the ``cnn`` and ``dlib``
    backends, the same faces as one by one); ``faces`` is None where the caller detects (an
    image that failed to load, a group whose batch failed). With ``jpeg``, a fifth item: the
    file's JPEG look (``jpeglook.JpegLook``, read from its headers) or None."""
    from maskgen.masks import decode_image
    from maskgen.masks.api import check_image
    from maskgen.masks.imageio import read_regular_file
    from maskgen.masks.jpeglook import look_of_image
    from maskgen.masks.landmarks import detect_faces_many

    group = group or GROUP_IMAGES
    buf: list[tuple] = []
    pixels = 0

    def flush():
        ok = [i for i, b in enumerate(buf) if b[1] is not None and check_image(b[1]) is None]
        faces: list = [None] * len(buf)
        if len(ok) > 1:
            try:
                for i, f in zip(ok, detect_faces_many([buf[i][1] for i in ok], backend, select)):
                    faces[i] = f
            except Exception:  # each image then meets its own problem alone
                faces = [None] * len(buf)
        out = [(*b[:3], f, *b[3:]) for b, f in zip(buf, faces)]
        buf.clear()
        return out

    for p in paths:
        data, reason = read_regular_file(p)
        img, reason = (None, reason) if data is None else decode_image(data)
        buf.append((p, img, reason, look_of_image(data, img)) if jpeg else (p, img, reason))
        pixels += 0 if img is None else img.shape[0] * img.shape[1]
        if len(buf) >= group or pixels >= GROUP_PIXELS:
            yield from flush()
            pixels = 0
    yield from flush()


def _rel(p: Path, root: Path) -> str:
    return p.name if root.is_file() else p.relative_to(root).as_posix()


MASK = Schema("mask", [
    Field("src", str, REQUIRED, "An image or a folder of images.", argument=True, validator=existing("any")),
    OUT,
    MASK_TYPE.with_(default="surgical",
                    help="A mask design (maskgen.masks.MASK_TYPES: surgical, n95, kn95, cloth, bandana, ...), "
                         "pack:<name>, or random (a seeded draw from the default mix).",
                    aliases=(Alias(flags=("--type",), key="type"),)),
    Field("color", str | None, None, "Palette name, #rrggbb or random (one of the design's colours; default: its own)."),
    Field("texture", str | None, None,
          "A print (checks, stripes, dots, floral, brand, cartoon, flag, plaid, knit, lace, camo; name:K for one "
          "variant), random, or an image file (tiled)."),
    Field("wear", str, "correct", "How the mask is worn.", choices=("correct", "below_nose", "chin", "random")),
    Field("valve", bool, False, "Exhalation valve (n95, kn95)."),
    Field("pack", str | None, None, "MaskTheFace-format template pack folder (for pack:<name>).",
          validator=existing("dir"), metavar="DIR"),
    SEED,
    BACKEND,
    SELECT,
    Field("format", str, "jpg", "Image format written.", choices=("jpg", "png")),
    QUALITY,
    Field("alpha", bool, False, "Also write the mask alpha as <name>.alpha.png."),
    Field("min_fit", float | None, None,
          "Reject renders whose fit score is below this (reason: fit score below threshold).", min=0, max=1),
    QUIET,
])


@MASK.command("mask")
def mask(cfg: Config) -> None:
    """Put masks on the faces of SRC (an image or a folder); write images and results.jsonl to OUT."""
    src, out, mask_type, color, texture = Path(cfg.src), Path(cfg.out), cfg.mask_type, cfg.color, cfg.texture
    wear, valve, pack, seed, backend, select = cfg.wear, cfg.valve, cfg.pack, cfg.seed, cfg.backend, cfg.select
    fmt, quality, save_alpha, min_fit, quiet = cfg.format, cfg.quality, cfg.alpha, cfg.min_fit, cfg.quiet
    import cv2
    import numpy as np

    from maskgen.masks import WEAR_MODES, MaskSpec, mask_face

    try:
        base = None
        if mask_type != "random":
            base = MaskSpec(
                type=mask_type,
                color=color,
                texture=texture,
                wear=wear if wear != "random" else "correct",
                valve=valve,
                pack=pack,
            )
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    from maskgen.masks.outfiles import RESULTS, alpha_name, check_apart, json_name, output_names
    from maskgen.outputs import claim
    from maskgen.progress import Progress

    check_apart(src, out)
    inputs = list(iter_inputs(src))
    names = output_names([_rel(p, src) for p in inputs], fmt, alpha=save_alpha)
    counts: Counter[str] = Counter()
    n = written = 0
    with claim(out, "mask"), open(out / RESULTS, "w", encoding="utf-8") as log, \
            Progress("mask", len(inputs), quiet=quiet) as prog:
        for p, img, reason, faces, look in load_with_faces(inputs, backend, select, jpeg=True):
            rel = _rel(p, src)
            s = path_seed(seed, rel)
            rec: dict = {"path": json_name(rel), "seed": s}
            if img is None:
                rec.update(status="failed", reason=reason)
            else:
                if base is None:
                    # a seeded random design; explicit --color/--texture/--wear still apply
                    spec = MaskSpec.random(s)  # the default mix, as a build draws it
                    over = {k: v for k, v in (("color", color), ("texture", texture)) if v is not None}
                    if wear != "random":
                        over["wear"] = wear
                    if over:
                        spec = MaskSpec(**{**spec.to_json(), **over})
                else:
                    spec = base
                    if wear == "random":
                        rng = np.random.default_rng(s)
                        spec = MaskSpec(**{**spec.to_json(), "wear": str(rng.choice(WEAR_MODES))})
                res = mask_face(img, spec, seed=s, faces=faces, backend=backend, select=select, min_fit=min_fit,
                                jpeg_quality=look and look.quality, jpeg_sampling=look and look.sampling)
                rec.update(res.to_json())
                if res.ok:
                    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if fmt == "jpg" else []
                    ok, enc = cv2.imencode(f".{fmt}", cv2.cvtColor(res.image, cv2.COLOR_RGB2BGR), params)
                    if ok:
                        dst = out / names[rel]
                        _write(dst, enc.tobytes())  # disk full, read-only: the run ends with one line
                        written += 1
                        rec["output"] = json_name(names[rel])
                        rec["reason"] = None
                        if save_alpha:
                            a = np.clip(res.alpha * 255 + 0.5, 0, 255).astype(np.uint8)
                            _write(out / alpha_name(names[rel], fmt), cv2.imencode(".png", a)[1].tobytes())
                    else:
                        rec.update(status="failed", reason=f"encode failed: {fmt}")
                else:
                    rec.update(status="failed", reason=res.status)
            counts[rec["status"] if rec["status"] == "ok" else str(rec["reason"])] += 1
            n += 1
            log.write(json.dumps(rec) + "\n")
            prog.advance(1, ok=int(rec["status"] == "ok"), failed=int(rec["status"] != "ok"))
    summary = ", ".join(f"{k}: {v}" for k, v in counts.most_common())
    if not quiet:
        click.echo(f"{n} images, {written} written -> {out} ({summary})", err=True)


def _write(path: Path, data: bytes) -> None:
    """Write one output file atomically (temp name unique to this run, then rename)."""
    from maskgen.outputs import replacing

    with replacing(path, hint="") as tmp:
        tmp.write_bytes(data)


LANDMARKS = Schema("landmarks", [
    Field("src", str, REQUIRED, "An image or a folder of images.", argument=True, validator=existing("any")),
    OUT.with_(default="-", help="JSON-lines file ('-' = stdout).", metavar="FILE"),
    BACKEND,
    SELECT,
])


@LANDMARKS.command("landmarks")
def landmarks(cfg: Config) -> None:
    """Print (or write) 68 landmarks, box, score and head pose of every face in SRC, one JSON line per image."""
    src, out, backend, select = Path(cfg.src), cfg.out, cfg.backend, cfg.select
    from maskgen.masks import detect_faces
    from maskgen.masks.outfiles import json_name

    fh = sys.stdout if out == "-" else open(out, "w", encoding="utf-8")
    try:
        for p, img, reason, found in load_with_faces(iter_inputs(src), backend, select):
            rel = _rel(p, src)
            if img is None:
                rec = {"path": json_name(rel), "status": "failed", "reason": reason, "faces": []}
            else:
                faces = found if found is not None else detect_faces(img, backend=backend, select=select)
                rec = {
                    "path": json_name(rel),
                    "status": "ok" if faces else "failed",
                    "reason": None if faces else "no_face",
                    "detail": None if faces else getattr(faces, "reason", None),
                    "width": int(img.shape[1]),
                    "height": int(img.shape[0]),
                    "faces": [f.to_json() for f in faces],
                }
            fh.write(json.dumps(rec) + "\n")
    finally:
        if fh is not sys.stdout:
            fh.close()


CONTACT_SHEET = Schema("contact-sheet", [
    OUT.with_(help="PNG file to write.", metavar="FILE"),
    Field("faces", int, 3, "How many LFW faces (head poses).", min=1, max=12),
    SEED,
    Field("cell", int, 176, "Cell size in pixels.", min=1),
    Field("data_home", str | None, None, "Data folder (default: $MASKGEN_DATA_HOME).", metavar="DIR"),
    Field("pack", str | None, None, "Also show this MaskTheFace-format pack's surgical template.", metavar="DIR"),
    Field("real", str | None, None,
          "Folder of your own real masked photos, shown beside the synthetic ones at the same size.", metavar="DIR"),
])


@CONTACT_SHEET.command("contact-sheet")
def contact_sheet(cfg: Config) -> None:
    """Write a PNG of every mask design x wear mode x head pose on LFW faces (astronaut when LFW is absent)."""
    out, n_faces, seed, cell, data_home, pack = Path(cfg.out), cfg.faces, cfg.seed, cfg.cell, cfg.data_home, cfg.pack
    real = None if cfg.real is None else Path(cfg.real)
    from maskgen.masks.sheet import make_contact_sheet

    from maskgen.errors import MaskgenError

    try:
        img, info = make_contact_sheet(n_faces=n_faces, seed=seed, cell=cell, data_home=data_home, pack=pack, real=real)
    except MaskgenError as exc:  # one line, no traceback
        raise click.ClickException(str(exc)) from exc
    import cv2

    out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out), cv2.cvtColor(img, cv2.COLOR_RGB2BGR)):
        raise click.ClickException(f"could not write {out}")
    click.echo(f"{out}: {img.shape[1]}x{img.shape[0]} px, faces: {', '.join(info)}", err=True)



LANDMARKS_MODEL = Schema("landmarks-model", [
    Field("photos", str | None, None,
          "Folder of face photos to distil from (default: fairface-val in the data home).", metavar="DIR"),
    OUT.with_(default=None, help="Model file (default: aligned68.dat in ~/.cache/maskgen/models or $MASKGEN_MODEL_DIR).",
              metavar="FILE"),
    Field("max_photos", int | None, None, "Use the first N photos only (quick, less accurate).", min=1),
    Field("jitters", int, 2, "Jittered alignments per face, plus the exact one.", min=0),
    Field("cascade", int, 12, "Cascade levels.", min=1),
    Field("trees", int, 60, "Trees per level.", min=1),
    Field("threads", int, 2, "Threads of dlib's trainer.", min=1),
    SEED,
    Field("lfw", str | None, None,
          "Evaluate on aligned crops of this LFW folder (default: lfw in the data home, when present).", metavar="DIR"),
    Field("eval_n", int, 1000, "LFW photos to evaluate on.", min=1),
    Field("eval_only", bool, False, "Evaluate an existing model, do not train.", negatable=False),
    QUIET,
])


@LANDMARKS_MODEL.command("landmarks-model")
def landmarks_model(cfg: Config) -> None:
    """Build maskgen's compact 68-point model for aligned crops (distilled from dlib's)."""
    photos, out, max_photos, jitters, cascade, trees = cfg.photos, cfg.out, cfg.max_photos, cfg.jitters, cfg.cascade, cfg.trees
    threads, seed, lfw, eval_n, eval_only = cfg.threads, cfg.seed, cfg.lfw, cfg.eval_n, cfg.eval_only
    out = None if out is None else Path(out)
    import cv2

    from maskgen.data_home import dataset_dir
    from maskgen.masks import distill
    from maskgen.masks.landmarks import aligned_model_path

    cv2.setNumThreads(1)
    out = out or aligned_model_path()
    if not eval_only:
        src = photos or dataset_dir("fairface-val")
        files = distill.photo_files(src)[: max_photos or None]
        if not files:
            raise click.ClickException(f"no face photos under {src} (pass --photos)")
        imgs, lms = distill.teacher_samples(files, jitters, seed, quiet=cfg.quiet)
        distill.train_model(imgs, lms, out, distill.TrainOptions(cascade=cascade, trees=trees, threads=threads, seed=seed),
                            quiet=cfg.quiet)
    elif not Path(out).is_file():
        raise click.ClickException(f"no model at {out}")
    lfw = lfw or dataset_dir("lfw")
    files = sorted(Path(lfw).glob("*/*.jpg"))
    if files:
        click.echo(f"evaluation on aligned crops of {min(eval_n, len(files))} LFW photos "
                   "(error: mean over 68 points / outer-eye-corner distance, against dlib on the photo)")
        distill.evaluate_model(files[:: max(1, len(files) // eval_n)][:eval_n], out, log=click.echo, quiet=cfg.quiet)
    else:
        click.echo(f"no LFW photos under {lfw}: evaluation skipped")
