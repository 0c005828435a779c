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

from maskgen.masks.landmarks import backend_option

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


@click.command("mask")
@click.argument("src", type=click.Path(exists=True, path_type=Path))
@click.option("-o", "--out", "out", required=True, type=click.Path(path_type=Path), help="Output folder.")
@click.option("--type", "mask_type", default="surgical", show_default=True,
              help="A mask design (maskgen.masks.MASK_TYPES: surgical, n95, kn95, cloth, bandana, ...), pack:<name>, "
                   "or random (a seeded draw from the default mix).")
@click.option("--color", default=None, help="Palette name, #rrggbb or random (one of the design's colours; default: its own).")
@click.option("--texture", default=None,
              help="A print (checks, stripes, dots, floral, brand, cartoon, flag, plaid, knit, lace, camo; name:K for one "
                   "variant), random, or an image file (tiled).")
@click.option("--wear", default="correct", show_default=True, type=click.Choice(["correct", "below_nose", "chin", "random"]))
@click.option("--valve/--no-valve", default=False, help="Exhalation valve (n95, kn95).")
@click.option("--pack", default=None, type=click.Path(exists=True, file_okay=False), help="MaskTheFace-format template pack folder (for pack:<name>).")
@click.option("--seed", default=0, show_default=True, type=int)
@backend_option()
@click.option("--select", default="all", show_default=True, type=click.Choice(["all", "largest", "center"]))
@click.option("--format", "fmt", default="jpg", show_default=True, type=click.Choice(["jpg", "png"]))
@click.option("--quality", default=95, show_default=True, type=int, help="JPEG quality.")
@click.option("--alpha/--no-alpha", "save_alpha", default=False, help="Also write the mask alpha as <name>.alpha.png.")
@click.option("--min-fit", default=None, type=click.FloatRange(0.0, 1.0),
              help="Reject renders whose fit score is below this (reason: fit score below threshold).")
def mask(
    src: Path,
    out: Path,
    mask_type: str,
    color: str | None,
    texture: str | None,
    wear: str,
    valve: bool,
    pack: str | None,
    seed: int,
    backend: str,
    select: str,
    fmt: str,
    quality: int,
    save_alpha: bool,
    min_fit: float | None,
) -> None:
    """Put masks on the faces of SRC (an image or a folder); write images and results.jsonl to OUT."""
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

    check_apart(src, out)
    inputs = list(iter_inputs(src))
    names = output_names([_rel(p, src) for p in inputs], fmt, alpha=save_alpha)
    counts: Counter[str] = Counter()
    n = written = 0
    with claim(out, "mask"), open(out / RESULTS, "w", encoding="utf-8") as log:
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
    summary = ", ".join(f"{k}: {v}" for k, v in counts.most_common())
    click.echo(f"{n} images, {written} written -> {out} ({summary})", err=True)


def _write(path: Path, data: bytes) -> None:
    """Write one output file atomically (temp name unique to this run, then rename)."""
    from maskgen.outputs import replacing

    with replacing(path, hint="") as tmp:
        tmp.write_bytes(data)


@click.command("landmarks")
@click.argument("src", type=click.Path(exists=True, path_type=Path))
@click.option("-o", "--out", "out", default="-", show_default=True, help="JSON-lines file ('-' = stdout).")
@backend_option()
@click.option("--select", default="all", show_default=True, type=click.Choice(["all", "largest", "center"]))
def landmarks(src: Path, out: str, backend: str, select: str) -> None:
    """Print (or write) 68 landmarks, box, score and head pose of every face in SRC, one JSON line per image."""
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


@click.command("contact-sheet")
@click.option("-o", "--out", "out", required=True, type=click.Path(path_type=Path), help="PNG file to write.")
@click.option("--faces", "n_faces", default=3, show_default=True, type=click.IntRange(1, 12), help="How many LFW faces (head poses).")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--cell", default=176, show_default=True, type=int, help="Cell size in pixels.")
@click.option("--data-home", default=None, type=click.Path(file_okay=False), help="Data folder (default: $MASKGEN_DATA_HOME).")
@click.option("--pack", default=None, type=click.Path(file_okay=False), help="Also show this MaskTheFace-format pack's surgical template.")
@click.option("--real", "real", default=None, type=click.Path(file_okay=False, path_type=Path),
              help="Folder of your own real masked photos, shown beside the synthetic ones at the same size.")
def contact_sheet(out: Path, n_faces: int, seed: int, cell: int, data_home: str | None, pack: str | None, real: Path | None) -> None:
    """Write a PNG of every mask design x wear mode x head pose on LFW faces (astronaut when LFW is absent)."""
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



@click.command("landmarks-model")
@click.option("--photos", type=click.Path(path_type=Path), default=None,
              help="Folder of face photos to distil from (default: fairface-val in the data home).")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Model file (default: aligned68.dat in ~/.cache/maskgen/models or $MASKGEN_MODEL_DIR).")
@click.option("--max-photos", type=int, default=None, help="Use the first N photos only (quick, less accurate).")
@click.option("--jitters", type=int, default=2, show_default=True, help="Jittered alignments per face, plus the exact one.")
@click.option("--cascade", type=int, default=12, show_default=True, help="Cascade levels.")
@click.option("--trees", type=int, default=60, show_default=True, help="Trees per level.")
@click.option("--threads", type=int, default=2, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--lfw", type=click.Path(path_type=Path), default=None,
              help="Evaluate on aligned crops of this LFW folder (default: lfw in the data home, when present).")
@click.option("--eval-n", type=int, default=1000, show_default=True, help="LFW photos to evaluate on.")
@click.option("--eval-only", is_flag=True, help="Evaluate an existing model, do not train.")
def landmarks_model(photos, out, max_photos, jitters, cascade, trees, threads, seed, lfw, eval_n, eval_only) -> None:
    """Build maskgen's compact 68-point model for aligned crops (distilled from dlib's)."""
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
        click.echo(f"distilling from {len(files):,} photos under {src}")
        imgs, lms = distill.teacher_samples(files, jitters, seed, log=click.echo)
        distill.train(imgs, lms, out, distill.TrainOptions(cascade=cascade, trees=trees, threads=threads, seed=seed),
                      log=click.echo)
    elif not Path(out).is_file():
        raise click.ClickException(f"no model at {out}")
    lfw = lfw or dataset_dir("lfw")
    files = sorted(Path(lfw).glob("*/*.jpg"))
    if files:
        click.echo(f"evaluation on aligned crops of {min(eval_n, len(files))} LFW photos "
                   "(error: mean over 68 points / outer-eye-corner distance, against dlib on the photo)")
        distill.evaluate(files[:: max(1, len(files) // eval_n)][:eval_n], out, log=click.echo)
    else:
        click.echo(f"no LFW photos under {lfw}: evaluation skipped")
