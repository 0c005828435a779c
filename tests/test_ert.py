"""The batched shape predictor (maskgen.masks.ert) against dlib's own, on the same model files."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from maskgen.masks import ert
from maskgen.masks.landmarks import DlibBackend, detect_faces, detect_faces_many, get_detector, predictor_path, to_gray


# --- a tiny random model written in dlib's serialisation, loaded by dlib and by maskgen ---------


def _pack_int(v: int) -> bytes:
    neg = 0x80 if v < 0 else 0
    v = abs(v)
    body = bytearray()
    while True:
        body.append(v & 0xFF)
        v >>= 8
        if v == 0:
            break
    return bytes([len(body) | neg]) + bytes(body)


def _pack_float(x: float) -> bytes:
    m, e = math.frexp(float(np.float32(x)))
    return _pack_int(int(m * (1 << 24))) + _pack_int(e - 24)


def _pack_matrix(values) -> bytes:
    values = list(values)
    return _pack_int(-len(values)) + _pack_int(-1) + b"".join(_pack_float(v) for v in values)


def _tiny_model(path: Path, seed: int, points: int = 6, levels: int = 3, trees: int = 12, depth: int = 3, feats: int = 24) -> None:
    rng = np.random.default_rng(seed)
    splits = 2**depth - 1
    out = bytearray(_pack_int(1))
    init = rng.uniform(0.2, 0.8, 2 * points).astype(np.float32)
    out += _pack_matrix(init)
    out += _pack_int(levels)
    for _ in range(levels):
        out += _pack_int(trees)
        for _ in range(trees):
            out += _pack_int(splits)
            for _ in range(splits):
                i1, i2 = rng.integers(0, feats, 2)
                out += _pack_int(int(i1)) + _pack_int(int(i2)) + _pack_float(rng.uniform(-60, 60))
            out += _pack_int(splits + 1)
            for _ in range(splits + 1):
                out += _pack_matrix(rng.normal(0, 0.01, 2 * points).astype(np.float32))
    out += _pack_int(levels)
    for _ in range(levels):
        out += _pack_int(feats) + b"".join(_pack_int(int(a)) for a in rng.integers(0, points, feats))
    out += _pack_int(levels)
    for _ in range(levels):
        out += _pack_int(feats) + b"".join(_pack_float(v) for v in rng.normal(0, 0.15, 2 * feats))
    path.write_bytes(bytes(out))


def _dlib_fit(predictor, gray: np.ndarray, box) -> np.ndarray:
    import dlib

    shape = predictor(gray, dlib.rectangle(*box))
    return np.array([(shape.part(i).x, shape.part(i).y) for i in range(shape.num_parts)], np.float32)


def test_tiny_random_models_match_dlib(tmp_path: Path, astronaut: np.ndarray) -> None:
    """Random models (other depths, sizes, point counts) give dlib's integers, boxes inside,
    across and outside the image edge (feature pixels off the image read 0)."""
    import dlib

    gray = to_gray(astronaut)
    h, w = gray.shape
    rng = np.random.default_rng(0)
    boxes = [(150, 40, 260, 170), (-30, -20, 60, 90), (w - 50, h - 40, w + 40, h + 70), (5, 5, 9, 9)]
    boxes += [tuple(int(v) for v in (x, y, x + s, y + s)) for x, y, s in rng.integers(0, 400, (20, 3))]
    for seed, kw in enumerate([{}, {"depth": 2, "points": 3}, {"depth": 4, "levels": 2, "feats": 40}]):
        path = tmp_path / f"tiny{seed}.dat"
        _tiny_model(path, seed, **kw)
        model = ert.ShapeModel.from_arrays(ert.parse_dlib_shape_predictor(path))
        ref = np.stack([_dlib_fit(dlib.shape_predictor(str(path)), gray, b) for b in boxes])
        got = model.fit([gray] * len(boxes), boxes)
        np.testing.assert_array_equal(got, ref)


def test_corrupt_model_files_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.dat"
    _tiny_model(path, 0)
    data = path.read_bytes()
    (tmp_path / "cut.dat").write_bytes(data[: len(data) // 2])
    with pytest.raises(ert.ModelFormatError, match="truncated"):
        ert.parse_dlib_shape_predictor(tmp_path / "cut.dat")
    (tmp_path / "tail.dat").write_bytes(data + b"\x00")
    with pytest.raises(ert.ModelFormatError, match="after the model"):
        ert.parse_dlib_shape_predictor(tmp_path / "tail.dat")
    (tmp_path / "v2.dat").write_bytes(_pack_int(2) + data[1:])
    with pytest.raises(ert.ModelFormatError, match="version 2"):
        ert.parse_dlib_shape_predictor(tmp_path / "v2.dat")
    (tmp_path / "text.dat").write_bytes(b"not a model at all")
    with pytest.raises(ert.ModelFormatError):
        ert.parse_dlib_shape_predictor(tmp_path / "text.dat")


def test_model_cache_is_written_once_and_follows_its_source(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MASKGEN_MODEL_DIR", str(tmp_path / "models"))
    path = tmp_path / "m.dat"
    _tiny_model(path, 1)
    assert ert.ensure_cache(path) is True and ert.ensure_cache(path) is False
    cached = ert._read_cache(ert.cache_dir_for(path), ert._source_id(path))
    parsed = ert.parse_dlib_shape_predictor(path)
    # a plain ndarray over the file's map: shared pages, without np.memmap's cost per index
    assert cached is not None and type(cached["leaves"]) is np.ndarray
    assert isinstance(cached["leaves"].base, np.memmap) and not cached["leaves"].flags.writeable
    for k in parsed:
        np.testing.assert_array_equal(cached[k], parsed[k])
    _tiny_model(path, 2, points=4)  # the source changed: the cache is rebuilt from it
    assert ert.ensure_cache(path) is True
    again = ert._read_cache(ert.cache_dir_for(path), ert._source_id(path))
    assert again is not None and again["initial"].size == 8
    assert not list((tmp_path / "models").glob("*.tmp*"))


# --- dlib's 68-point model ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def model() -> ert.ShapeModel:
    return get_detector("dlib").batch_model


def test_parsed_68_point_model_shape(model: ert.ShapeModel) -> None:
    assert model.n_points == 68 and model.depth == 4
    assert model.idx1.shape == (15, 500, 15) and model.leaves.shape == (15, 500, 16, 136)
    assert model.anchors.shape == (15, 500) and np.isfinite(model.leaves).all()


def _lfw_candidates(lfw_dir: Path, n: int) -> tuple[list[np.ndarray], list[tuple]]:
    det: DlibBackend = get_detector("dlib")
    files = sorted(lfw_dir.glob("*/*.jpg"))
    grays, boxes = [], []
    for f in files[:: max(1, len(files) // n)][:n]:
        g = cv2.imread(str(f), cv2.IMREAD_GRAYSCALE)
        for box, _ in det._fast_boxes(g) + det._full_boxes(g)[:2]:  # true faces and false boxes
            grays.append(g)
            boxes.append(box)
    return grays, boxes


def test_batched_fits_are_dlibs_on_lfw(lfw_dir: Path, astronaut: np.ndarray, monkeypatch) -> None:
    det: DlibBackend = get_detector("dlib")
    grays, boxes = _lfw_candidates(lfw_dir, 120)
    g = to_gray(astronaut)
    grays += [g, g]
    boxes += [detect_faces(astronaut)[0].box, (-40.0, 300.0, 180.0, 560.0)]
    ref = np.stack([det.fit(gr, b) for gr, b in zip(grays, boxes)])
    got = np.stack(det.fit_many(grays, boxes))
    assert len(boxes) > 200
    np.testing.assert_array_equal(got, ref)
    # a face's landmarks do not depend on the batch it is fitted in
    rev = np.stack(det.fit_many(grays[::-1], boxes[::-1]))[::-1]
    np.testing.assert_array_equal(rev, got)
    # the NumPy form too, with both ways of adding the leaves (loop over trees for large
    # batches, gather-and-sum for small ones): dlib's order
    monkeypatch.setattr(ert, "_KERNEL", [None])
    for min_faces in (1, 10**9):
        monkeypatch.setattr(ert, "TREE_LOOP_MIN_FACES", min_faces)
        np.testing.assert_array_equal(np.stack(det.fit_many(grays[:120], boxes[:120])), ref[:120])


def test_compiled_cascade_is_the_numpy_cascade_bit_for_bit(lfw_dir: Path, astronaut: np.ndarray, tmp_path: Path) -> None:
    """The Numba kernel and the NumPy form give the same float32 shapes (before rounding), for
    dlib's model on LFW boxes (true and false ones, one across the edge) and for random models
    of other depths and sizes."""
    pytest.importorskip("numba")
    det: DlibBackend = get_detector("dlib")
    grays, boxes = _lfw_candidates(lfw_dir, 60)
    g = to_gray(astronaut)
    grays += [g, g]
    boxes += [detect_faces(astronaut)[0].box, (-40.0, 300.0, 180.0, 560.0)]
    b = np.array([[int(round(v)) for v in box] for box in boxes], np.float64)
    model = det.batch_model
    assert ert._kernel() is not None
    np.testing.assert_array_equal(model.shapes(grays, b, compiled=True), model.shapes(grays, b, compiled=False))
    for seed, kw in enumerate([{}, {"depth": 2, "points": 3}, {"depth": 4, "levels": 2, "feats": 40, "points": 20}]):
        path = tmp_path / f"tiny{seed}.dat"
        _tiny_model(path, seed, **kw)
        tiny = ert.ShapeModel.from_arrays(ert.parse_dlib_shape_predictor(path))
        got = tiny.shapes(grays[:40], b[:40], compiled=True)
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, tiny.shapes(grays[:40], b[:40], compiled=False))


def test_batches_split_by_pixels_give_the_same_landmarks(lfw_dir: Path, monkeypatch) -> None:
    det: DlibBackend = get_detector("dlib")
    grays, boxes = _lfw_candidates(lfw_dir, 20)
    whole = np.stack(det.fit_many(grays, boxes))
    monkeypatch.setattr(ert, "MAX_BATCH_PIXELS", 3 * 250 * 250)
    np.testing.assert_array_equal(np.stack(det.fit_many(grays, boxes)), whole)


def test_detect_many_is_detect_image_by_image(lfw_dir: Path, astronaut: np.ndarray) -> None:
    """Fast path, full-frame fallback, no face, small and grayscale images: the same faces."""
    files = sorted(lfw_dir.glob("*/*.jpg"))
    imgs = [cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB) for f in files[:: max(1, len(files) // 40)][:40]]
    rng = np.random.default_rng(0)
    imgs += [
        astronaut,
        to_gray(astronaut),
        cv2.resize(astronaut, (150, 150)),  # below the fast path's size
        rng.integers(0, 255, (200, 200, 3), dtype=np.uint8),  # no face
        np.ascontiguousarray(astronaut[::-1]),  # upside down: no plausible face
    ]
    for select in ("center", "all"):
        many = detect_faces_many(imgs, "dlib", select)
        one = [detect_faces(im, "dlib", select) for im in imgs]
        assert [len(f) for f in many] == [len(f) for f in one]
        for fm, fo in zip(many, one):
            for a, b in zip(fm, fo):
                np.testing.assert_array_equal(a.landmarks, b.landmarks)
                assert a.box == b.box and a.score == b.score and a.pose == b.pose
    assert sum(bool(f) for f in many) >= 40


def test_analyze_rows_batches_without_changing_results(tmp_path: Path, lfw_dir: Path, monkeypatch) -> None:
    """The build's landmarks stage: batched rows equal the single-image path; a corrupt file
    and a missing one fail alone."""
    from maskgen.datasets import faces as A

    files = sorted(lfw_dir.glob("*/*.jpg"))[::400][:30]
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(files[0].read_bytes()[:300])
    paths = [*map(str, files[:10]), str(bad), str(tmp_path / "missing.jpg"), *map(str, files[10:])]
    rows = [{"source": "folder", "path": p, "offset": None, "nbytes": None, "_cache_key": p} for p in paths]
    monkeypatch.setattr(A, "BATCH_PIXELS", 4 * 250 * 250)  # several flushes
    got = A.analyze_rows(rows, "dlib")
    assert got[10]["a_status"] == "failed" and got[11]["a_status"] == "failed"
    assert "unreadable" in got[11]["a_reason"]
    for r, res in zip(rows, got):
        if res["a_status"] != "ok":
            continue
        img = cv2.cvtColor(cv2.imread(r["path"]), cv2.COLOR_BGR2RGB)
        f = detect_faces(img, "dlib", "center")[0]
        assert res["landmarks"] == f.landmarks.reshape(-1).tolist()
        assert res["box"] == list(f.box) and res["det_score"] == f.score
    assert sum(r["a_status"] == "ok" for r in got) >= 25


def test_predictor_path_is_dlibs_model() -> None:
    assert predictor_path().name == "shape_predictor_68_face_landmarks.dat" and predictor_path().is_file()
