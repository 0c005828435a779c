"""Pair files, insightface .bin I/O and the ONNX embedder (no face detection needed)."""

from __future__ import annotations

import pickle

import cv2
import numpy as np
import pytest

from maskgen.eval.binfile import read_bin, write_bin
from maskgen.eval.pairs import identity_of, read_pairs, write_pairs


def test_lfw_view2_pairs(lfw_dir):
    ps = read_pairs(lfw_dir / "pairs.txt")
    assert len(ps) == 6000
    assert ps.issame.sum() == 3000
    assert np.bincount(ps.folds).tolist() == [600] * 10
    # fold 0: 300 matched then 300 mismatched, in file order
    assert ps.issame[:300].all() and not ps.issame[300:600].any()
    assert ps.a[0] == "Abel_Pacheco/Abel_Pacheco_0001.jpg"
    assert ps.b[0] == "Abel_Pacheco/Abel_Pacheco_0004.jpg"
    assert all((lfw_dir / k).is_file() for k in ps.keys()[:50])
    assert identity_of(ps.a[0]) == "Abel_Pacheco"
    sub = read_pairs(lfw_dir / "pairs.txt", max_folds=2)
    assert len(sub) == 1200 and set(sub.folds.tolist()) == {0, 1}
    dev = read_pairs(lfw_dir / "pairsDevTest.txt")
    assert len(dev) == 1000 and dev.issame.sum() == 500 and set(dev.folds.tolist()) == {0}


def test_generic_pairs_round_trip(tmp_path):
    p = tmp_path / "p.txt"
    p.write_text("a/1.jpg b/2.jpg 1\nc/3.jpg d/4.jpg 0\n")
    ps = read_pairs(p)
    assert ps.a == ["a/1.jpg", "c/3.jpg"] and ps.issame.tolist() == [True, False]
    write_pairs(ps, tmp_path / "q.txt")
    qs = read_pairs(tmp_path / "q.txt")
    assert qs.a == ps.a and qs.b == ps.b and qs.issame.tolist() == ps.issame.tolist()
    assert qs.folds.tolist() == ps.folds.tolist()
    bad = tmp_path / "bad.txt"
    bad.write_text("10 300\nname 1\n")
    with pytest.raises(ValueError, match="expected 3 or 4 fields"):
        read_pairs(bad)


def _jpeg(seed: int) -> bytes:
    img = np.random.default_rng(seed).integers(0, 255, (112, 112, 3), dtype=np.uint8)
    return cv2.imencode(".jpg", img)[1].tobytes()


def test_bin_round_trip_and_legacy_encodings(tmp_path):
    blobs = [_jpeg(i) for i in range(6)]
    labels = [True, False, True]
    write_bin(tmp_path / "x.bin", blobs, labels)
    got, issame = read_bin(tmp_path / "x.bin")
    assert got == blobs and issame.tolist() == labels
    # insightface files made with other tools hold numpy buffers or bytearrays
    with open(tmp_path / "np.bin", "wb") as f:
        pickle.dump(([np.frombuffer(b, np.uint8) for b in blobs[:2]], [np.bool_(False)]), f)
    got, issame = read_bin(tmp_path / "np.bin")
    assert got == blobs[:2] and issame.tolist() == [False]
    with open(tmp_path / "odd.bin", "wb") as f:
        pickle.dump((blobs[:3], [True]), f)
    with pytest.raises(ValueError, match="expected 2 per pair"):
        read_bin(tmp_path / "odd.bin")
    with pytest.raises(ValueError, match="expected 2 per pair"):
        write_bin(tmp_path / "y.bin", blobs[:3], [True])


def _tiny_onnx(path, dim: int = 8, mask_head: bool = False) -> np.ndarray:
    """A real ONNX graph: global average pool -> flatten -> matmul (+ a 1-logit mask output)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(0).normal(size=(3, dim)).astype(np.float32)
    nodes = [helper.make_node("GlobalAveragePool", ["input"], ["gap"]),
             helper.make_node("Flatten", ["gap"], ["flat"]),
             helper.make_node("MatMul", ["flat", "w"], ["embedding"])]
    outputs = [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", dim])]
    inits = [numpy_helper.from_array(w, "w")]
    if mask_head:
        inits.append(numpy_helper.from_array(np.array([[10.0], [0.0], [0.0]], np.float32), "wm"))
        nodes.append(helper.make_node("MatMul", ["flat", "wm"], ["mask_logits"]))
        outputs.append(helper.make_tensor_value_info("mask_logits", TensorProto.FLOAT, ["N", 1]))
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info(
        "input", TensorProto.FLOAT, ["N", 3, 112, 112])], outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return w


def test_onnx_embedder_batches_flip_and_mask_head(tmp_path):
    pytest.importorskip("onnxruntime")
    from maskgen.eval.embedders import load_embedder

    w = _tiny_onnx(tmp_path / "m.onnx", mask_head=True)
    emb = load_embedder(f"onnx:{tmp_path / 'm.onnx'}")
    assert emb.dim == 8 and emb.has_mask_head
    rng = np.random.default_rng(1)
    crops = [rng.integers(0, 255, (112, 112, 3), dtype=np.uint8) for _ in range(5)]
    out = emb.embed(crops)
    x = np.stack(crops).astype(np.float32) / 127.5 - 1.0
    np.testing.assert_allclose(out, x.mean(axis=(1, 2)) @ w, rtol=1e-4, atol=1e-5)
    # the mean pool is mirror-invariant: the flip test doubles the embedding
    np.testing.assert_allclose(emb.embed(crops, flip=True), 2 * out, rtol=1e-4, atol=1e-5)
    red = np.zeros((112, 112, 3), np.uint8)
    red[..., 0] = 255
    p = emb.mask_prob([red, np.zeros_like(red)])
    assert p[0] > 0.99 and p[1] < 0.01


def test_dlib_embedder_flip_is_the_mean_of_both_views(astronaut):
    from maskgen.eval.embedders import load_embedder
    from maskgen.eval.extract import find_landmarks

    lm, status = find_landmarks(astronaut, "dlib")
    assert status == "detected"
    emb = load_embedder("dlib")
    chip = emb.crop(astronaut, lm)
    assert chip.shape == (150, 150, 3)
    plain = emb.embed([chip])
    mirrored = emb.embed([chip[:, ::-1].copy()])
    np.testing.assert_allclose(emb.embed([chip], flip=True), (plain + mirrored) / 2, atol=1e-5)
    assert plain.shape == (1, 128) and 0.3 < np.linalg.norm(plain) < 1.5
