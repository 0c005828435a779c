"""End-to-end evaluation on a small LFW subset with dlib's descriptor: Cases 1/2/3, the cache,
identification, groups, bad images, .bin writing and the CLI.

One session-scoped run embeds ~40 LFW images (unmasked + masked, ~10 s on one core); every other
test reuses its embedding cache.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from maskgen.eval.binfile import read_bin
from maskgen.eval.cache import EmbeddingCache
from maskgen.eval.pairs import read_pairs, write_pairs

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def subset(lfw_dir: Path, tmp_path_factory) -> dict:
    """10 matched + 10 mismatched pairs of fold 1, an images folder with LFW's identities linked
    in, plus one truncated JPEG and one missing file in two extra pairs."""
    root = tmp_path_factory.mktemp("lfw_subset")
    images = root / "images"
    images.mkdir()
    ps = read_pairs(lfw_dir / "pairs.txt").subset(list(range(10)) + list(range(300, 310)))
    for k in ps.keys():
        ident = Path(k).parent.name
        if not (images / ident).exists():
            (images / ident).symlink_to(lfw_dir / ident, target_is_directory=True)
    (images / "Broken").mkdir()
    good = (lfw_dir / ps.a[0]).read_bytes()
    (images / "Broken" / "Broken_0001.jpg").write_bytes(good[: len(good) // 3])
    write_pairs(ps, root / "pairs.txt")
    with open(root / "pairs_bad.txt", "w") as f:
        f.write((root / "pairs.txt").read_text())
        f.write(f"Broken/Broken_0001.jpg\t{ps.a[0]}\t0\t0\n")
        f.write(f"Missing/Missing_0001.jpg\t{ps.a[1]}\t0\t0\n")
    return {"root": root, "images": images, "pairs": root / "pairs.txt",
            "pairs_bad": root / "pairs_bad.txt", "ps": ps, "cache": root / "cache"}


@pytest.fixture(scope="session")
def three_cases(subset: dict) -> dict:
    from maskgen.eval.api import evaluate

    out = subset["root"] / "run1"
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        res = evaluate(model="dlib", pairs=str(subset["pairs_bad"]), images=str(subset["images"]),
                       out=str(out), cases=(1, 2, 3), seed=7, cache_dir=str(subset["cache"]))
    return {"res": res, "out": out, "progress": err.getvalue().splitlines()}


def test_three_cases_reported(three_cases, subset):
    res, out = three_cases["res"], three_cases["out"]
    assert {p.name for p in out.iterdir()} >= {"results.json", "results.md", "roc.png"}
    on_disk = json.loads((out / "results.json").read_text())
    assert set(on_disk["verification"]) == {"case1", "case2", "case3"}
    n_img = len(subset["ps"].keys()) + 1  # + the broken file (the missing one too)
    assert res["images"]["n"] == n_img + 1
    # the truncated and the missing file are counted with their reasons, never dropped silently
    bad = {k: v for k, v in res["images"]["status"].items() if k != "ok"}
    assert sum(bad.values()) == 2
    assert any("truncated" in k or "corrupt" in k for k in bad)
    assert any("not found" in k for k in bad)
    masking = res["images"]["masking"]
    assert sum(masking.values()) == res["images"]["status"]["ok"]
    for c in (1, 2, 3):
        v = res["verification"][f"case{c}"]
        assert v["pairs"] == 20 and v["pairs_skipped"] == 2
        assert 0.5 <= v["accuracy_cosine"]["mean"] <= 1.0
        assert set(v["tar_at_far"]) == {"1e-01", "1e-02", "1e-03", "1e-04"}
    # dlib is a strong unmasked baseline on these easy pairs
    assert res["verification"]["case1"]["accuracy_cosine"]["mean"] >= 0.9
    assert res["verification"]["case1"]["pairs_with_mask_failure"] == 0
    # masking changes the genuine scores: masked pairs are less alike on average
    md = (out / "results.md").read_text()
    assert "masked-unmasked" in md and "masked-masked" in md
    png = cv2.imread(str(out / "roc.png"))
    assert png is not None and png.shape[0] > 100
    # progress lines while embedding: done/total, rate and ETA, the last one at the end
    lines = three_cases["progress"]
    last = [x for x in lines if f"[eval] {n_img + 1}/{n_img + 1} images (100%) | " in x]
    assert last and "images/s | ETA 0:00:00" in last[-1] and "[eval] done: " in lines[-1]


def test_masked_embeddings_differ_and_cache_reuses_unmasked(three_cases, subset):
    from maskgen.eval.api import evaluate
    from maskgen.eval.extract import masked_variant

    cache_file = next(subset["cache"].glob("*.npz"))
    c = EmbeddingCache(cache_file)
    v7 = masked_variant(7, "random")
    masked_ok = [k for (k, v), s in c.mask_status.items() if v == v7 and s == "ok"]
    assert len(masked_ok) >= 0.8 * len(subset["ps"].keys())
    d = [np.linalg.norm(c.vectors[(k, "orig")] - c.vectors[(k, v7)]) for k in masked_ok]
    assert min(d) > 0.05  # a mask moves dlib's descriptor
    # Case 1 again: everything from the cache
    res = evaluate(model="dlib", pairs=str(subset["pairs"]), images=str(subset["images"]),
                   out=str(subset["root"] / "run2"), cases=(1,), cache_dir=str(subset["cache"]))
    assert res["timing"]["images_embedded"] == 0
    assert res["verification"]["case1"]["accuracy_cosine"] == \
        three_cases["res"]["verification"]["case1"]["accuracy_cosine"]


def test_same_seed_same_masks_fresh_cache_on_ray(three_cases, subset, tmp_path):
    """Determinism: a fresh run with the same seed, on two Ray workers, rebuilds identical
    unmasked and masked embeddings."""
    from maskgen.eval.api import evaluate
    from maskgen.eval.extract import masked_variant

    few = subset["ps"].subset([0, 1, 2])
    write_pairs(few, tmp_path / "few.txt")
    evaluate(model="dlib", pairs=str(tmp_path / "few.txt"), images=str(subset["images"]),
             out=str(tmp_path / "o"), cases=(3,), seed=7, cache_dir=str(tmp_path / "c"),
             identification=False, workers=2, batch_size=2)
    fresh = EmbeddingCache(next((tmp_path / "c").glob("*.npz")))
    old = EmbeddingCache(next(subset["cache"].glob("*.npz")))
    v7 = masked_variant(7, "random")
    for k in few.keys():
        np.testing.assert_allclose(fresh.vectors[(k, "orig")], old.vectors[(k, "orig")], atol=1e-5)
        if (k, v7) in old.vectors:
            np.testing.assert_allclose(fresh.vectors[(k, v7)], old.vectors[(k, v7)], atol=1e-5)


def test_identification_and_groups(three_cases, subset, tmp_path):
    from maskgen.eval.api import evaluate

    ident = three_cases["res"]["identification"]
    assert ident["gallery_size"] > 0 and ident["probes"] >= 10
    c1, c2 = ident["cases"]["case1"], ident["cases"]["case2"]
    assert c1["rank1"] >= 0.9 and c1["rank5"] >= c1["rank1"]
    assert c2["probe_variant"] == "masked" and c2["gallery_variant"] == "unmasked"
    # synthetic labels joined by identity (LFW has none): alternate two groups
    ids = sorted({Path(k).parent.name for k in subset["ps"].keys()})
    (tmp_path / "labels.csv").write_text("identity,group\n" + "".join(
        f"{n},{'A' if i % 2 else 'B'}\n" for i, n in enumerate(ids)))
    res = evaluate(model="dlib", pairs=str(subset["pairs"]), images=str(subset["images"]),
                   out=str(tmp_path / "g"), cases=(1, 2), seed=7, cache_dir=str(subset["cache"]),
                   labels=str(tmp_path / "labels.csv"))
    g = res["groups"]["group"]
    acc = g["case1_accuracy"]
    assert set(acc["groups"]) == {"A", "B"}
    assert sum(v["count"] for v in acc["groups"].values()) == 20
    assert acc["gap"] is None or acc["gap"]["gap"] >= 0
    assert "case2_rank1" in g and "mask_success" in g
    assert "| group |" in (tmp_path / "g" / "results.md").read_text()


def test_skin_tone_groups(subset, tmp_path):
    pytest.importorskip("maskgen.datasets.attributes")
    from maskgen.eval.api import evaluate

    res = evaluate(model="dlib", pairs=str(subset["pairs"]), images=str(subset["images"]),
                   out=str(tmp_path / "s"), cases=(1,), cache_dir=str(tmp_path / "c"),
                   skin_tone=True, max_pairs=4, identification=False)
    acc = res["groups"]["skin_tone"]["case1_accuracy"]
    assert sum(v["count"] for v in acc["groups"].values()) + acc["unlabelled"] == 4


def test_make_bin_round_trip_and_eval_on_bin(subset, lfw_dir, tmp_path):
    from maskgen.eval.api import evaluate
    from maskgen.eval.cli import make_bin

    runner = CliRunner()
    # raw bytes: read back identical to the files
    r = runner.invoke(make_bin, [str(subset["pairs"]), "--images", str(subset["images"]),
                                 "-o", str(tmp_path / "raw.bin"), "--no-align", "--max-pairs", "4"])
    assert r.exit_code == 0, r.output
    blobs, issame = read_bin(tmp_path / "raw.bin")
    ps = subset["ps"]
    assert issame.tolist() == ps.issame[:4].tolist()
    for i in range(4):
        assert blobs[2 * i] == (lfw_dir / ps.a[i]).read_bytes()
        assert blobs[2 * i + 1] == (lfw_dir / ps.b[i]).read_bytes()
    # aligned 112x112 crops (the insightface layout), mixed matched/mismatched pairs
    sel = read_pairs(subset["pairs"]).subset([0, 1, 10, 11])
    write_pairs(sel, tmp_path / "sel.txt")
    r = runner.invoke(make_bin, [str(tmp_path / "sel.txt"), "--images", str(subset["images"]),
                                 "-o", str(tmp_path / "al.bin")])
    assert r.exit_code == 0, r.output
    blobs, issame = read_bin(tmp_path / "al.bin")
    assert issame.tolist() == [True, True, False, False]
    crops = [cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR) for b in blobs]
    assert all(c.shape == (112, 112, 3) for c in crops)
    stats = json.loads((tmp_path / "al.bin.json").read_text())
    assert stats["pairs_written"] == 4
    # Case 2 .bin: first images as in Case 1, second images masked
    r = runner.invoke(make_bin, [str(tmp_path / "sel.txt"), "--images", str(subset["images"]),
                                 "-o", str(tmp_path / "m.bin"), "--case", "2", "--max-pairs", "2"])
    assert r.exit_code == 0, r.output
    mblobs, missame = read_bin(tmp_path / "m.bin")
    assert missame.tolist() == [True, True]
    assert mblobs[0] == blobs[0] and mblobs[2] == blobs[2]
    assert mblobs[1] != blobs[1] and mblobs[3] != blobs[3]
    assert json.loads((tmp_path / "m.bin.json").read_text()).get("masked", 0) == 2
    # evaluate the .bin itself (aligned-crop landmarks, no detection)
    res = evaluate(model="dlib", bin_file=str(tmp_path / "al.bin"), out=str(tmp_path / "be"),
                   cases=(1,), cache_dir=str(tmp_path / "bc"))
    assert res["verification"]["case1"]["pairs"] == 4
    assert res["images"]["landmarks"].get("aligned", 0) + \
        res["images"]["landmarks"].get("fallback_center", 0) == 8


def test_cli_eval(subset):
    from maskgen.cli import main

    runner = CliRunner()
    out = subset["root"] / "cli"
    r = runner.invoke(main, ["eval", "--pairs", str(subset["pairs"]), "--images", str(subset["images"]),
                             "--cases", "1,2,3", "--seed", "7", "-o", str(out),
                             "--cache-dir", str(subset["cache"])])
    assert r.exit_code == 0, r.output
    assert "unmasked-unmasked" in r.output and "Rank-1" in r.output
    assert (out / "results.json").is_file()
    r = runner.invoke(main, ["eval", "--cases", "4", "--pairs", str(subset["pairs"])])
    assert r.exit_code != 0 and "1, 2, 3" in r.output
    r = runner.invoke(main, ["eval", "--model", "nope", "--pairs", str(subset["pairs"]),
                             "--images", str(subset["images"]), "-o", str(subset["root"] / "x"),
                             "--cases", "1"])
    assert r.exit_code != 0 and "unknown model spec" in r.output
    r = runner.invoke(main, ["eval", "--mask-type", "balaclava", "--pairs", str(subset["pairs"]),
                             "--images", str(subset["images"]), "-o", str(subset["root"] / "x")])
    # checked with the option, before any image is read (the same check as every --mask-type)
    assert r.exit_code == 2 and r.stderr.startswith("Error: --mask-type: must be one of surgical") and "'balaclava'" in r.stderr


def test_checkpoint_embedder_with_mask_head(subset, tmp_path):
    """A maskgen training checkpoint (Multi-Task ArcFace, random weights) through ckpt:<path>."""
    torch = pytest.importorskip("torch")
    ckpt_mod = pytest.importorskip("maskgen.training.checkpoint")
    from maskgen.eval.api import evaluate
    from maskgen.eval.embedders import load_embedder

    config = {"model": "mobilefacenet", "embedding_size": 64, "num_classes": 8,
              "method": "multitask_arcface"}
    torch.manual_seed(0)
    method = ckpt_mod.build_method(config)
    torch.save({"config": config, "model": method.state_dict(), "ema": None}, tmp_path / "m.pt")
    emb = load_embedder(f"ckpt:{tmp_path / 'm.pt'}")
    assert emb.dim == 64 and emb.has_mask_head
    res = evaluate(model=f"ckpt:{tmp_path / 'm.pt'}", pairs=str(subset["pairs"]),
                   images=str(subset["images"]), out=str(tmp_path / "o"), cases=(1, 2), seed=7,
                   max_pairs=3, cache_dir=str(tmp_path / "c"), identification=False)
    assert res["verification"]["case2"]["pairs"] == 3
    mu = res["mask_usage"]
    assert mu["n"] >= 6 and mu["n_masked"] >= 1 and 0.0 <= mu["accuracy"] <= 1.0


def _save_run(run_dir: Path, config: dict, seed: int = 0) -> Path:
    """A checkpoint in the trainer's format (weights + config JSON) inside a run folder."""
    torch = pytest.importorskip("torch")
    from maskgen.training.checkpoint import build_method

    torch.manual_seed(seed)
    method = build_method(config)
    path = run_dir / "checkpoints" / "step_000000001.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": "maskgen-checkpoint", "version": 2, "step": 1, "model": method.state_dict(),
                "ema": None, "config_json": json.dumps(config)}, path)
    return path


def _bfm_config(threshold: float) -> dict:
    return {"model": "mobilefacenet", "embedding_size": 32, "num_classes": 8, "method": "bfm",
            "model_options": {"scale": 1, "blocks": [1, 1, 1, 1]},
            "method_options": {"classifier_width": 4, "route_threshold": threshold}}


def test_bfm_scored_with_its_routed_protocol_from_checkpoint_and_onnx(subset, tmp_path):
    """ckpt:runs/<name> of a BFM model routes every pair (threshold 0: all to E_P; above 1: all
    to E_F); its ONNX export (embedding + mask_logits + routing metadata) scores the same."""
    pytest.importorskip("onnxruntime")
    from maskgen.eval.api import evaluate
    from maskgen.training.export import export_onnx

    common = dict(pairs=str(subset["pairs"]), images=str(subset["images"]), cases=(1, 2), seed=7,
                  max_pairs=4, identification=False)
    got = {}
    for name, thr in (("all_partial", 0.0), ("all_full", 1.01)):
        run = tmp_path / "runs" / name
        _save_run(run, _bfm_config(thr))
        got[name] = evaluate(model=f"ckpt:{run}", out=str(tmp_path / name), cache_dir=str(tmp_path / f"c-{name}"),
                             **common)
        assert got[name]["config"]["protocol"] == "bfm"
    for c in ("case1", "case2"):
        assert got["all_partial"]["verification"][c]["pairs_routed_to_partial"] == 1.0
        assert got["all_full"]["verification"][c]["pairs_routed_to_partial"] == 0.0
    onnx_path = export_onnx(tmp_path / "runs" / "all_partial", tmp_path / "bfm.onnx")
    via_onnx = evaluate(model=f"onnx:{onnx_path}", out=str(tmp_path / "o"), cache_dir=str(tmp_path / "co"), **common)
    assert via_onnx["config"]["protocol"] == "bfm" and via_onnx["config"]["route_threshold"] == 0.0
    for c in ("case1", "case2"):
        a = via_onnx["verification"][c]["accuracy_cosine"]
        b = got["all_partial"]["verification"][c]["accuracy_cosine"]
        assert a["mean"] == pytest.approx(b["mean"]) and via_onnx["verification"][c]["pairs_routed_to_partial"] == 1.0
    assert "mask_usage" in via_onnx  # the second ONNX output is read as the mask head


def test_feature_concatenation_and_model_specs(tmp_path):
    """--model ckpt:a+ckpt:b: L2-normalised features side by side, cosine = mean of cosines."""
    from maskgen.eval.embedders import ConcatEmbedder, load_embedder, onnx_providers, split_specs

    arc = {"model": "mobilefacenet", "embedding_size": 16, "num_classes": 4, "method": "arcface",
           "model_options": {"scale": 1, "blocks": [1, 1, 1, 1]}}
    a = _save_run(tmp_path / "runs" / "a", arc, seed=0)
    _save_run(tmp_path / "runs" / "b", dict(arc, embedding_size=24), seed=1)
    cat = load_embedder(f"ckpt:{a}+ckpt:{tmp_path / 'runs' / 'b'}", device="cpu")  # a file + a run folder
    assert isinstance(cat, ConcatEmbedder) and cat.dim == 40
    crops = list(np.random.default_rng(0).integers(0, 256, (4, 112, 112, 3), dtype=np.uint8))
    e = cat.embed(crops)
    parts = [p.embed(crops) for p in cat.parts]

    def cos(x, y):
        return np.sum(x * y, 1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1))

    assert np.allclose(cos(e[:2], e[2:]), (cos(parts[0][:2], parts[0][2:]) + cos(parts[1][:2], parts[1][2:])) / 2,
                       atol=1e-5)
    assert split_specs("ckpt:x+y.pt+onnx:m.onnx") == ["ckpt:x+y.pt", "onnx:m.onnx"]
    with pytest.raises(ValueError, match="own crop"):
        load_embedder(f"dlib+ckpt:{a}")
    assert onnx_providers("auto", ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert onnx_providers("auto", ["CUDAExecutionProvider", "CPUExecutionProvider"])[0] == "CUDAExecutionProvider"
    assert onnx_providers("cpu", ["CUDAExecutionProvider", "CPUExecutionProvider"]) == ["CPUExecutionProvider"]


def test_make_bin_writes_case2_and_case3_packs_deterministically(subset, tmp_path):
    from maskgen.eval.cli import make_bin

    runner = CliRunner()
    sel = read_pairs(subset["pairs"]).subset([0, 1, 10])
    write_pairs(sel, tmp_path / "sel.txt")
    args = [str(tmp_path / "sel.txt"), "--images", str(subset["images"]), "--case", "1,2,3", "--seed", "3"]
    r = runner.invoke(make_bin, args + ["-o", str(tmp_path / "lfw_{case}.bin")])
    assert r.exit_code == 0, r.output
    packs = {c: read_bin(tmp_path / f"lfw_{c}.bin") for c in (1, 2, 3)}
    b1, b2, b3 = (packs[c][0] for c in (1, 2, 3))
    assert all(packs[c][1].tolist() == [True, True, False] for c in packs)
    assert b2[0::2] == b1[0::2] and all(x != y for x, y in zip(b2[1::2], b1[1::2]))  # Case 2: second masked
    assert b3[1::2] == b2[1::2] and all(x != y for x, y in zip(b3[0::2], b1[0::2]))  # Case 3: both masked
    stats = json.loads((tmp_path / "lfw_3.bin.json").read_text())
    assert stats["case"] == 3 and stats["masked"] + stats["mask_failed"] == 6
    # the same seed: the same bytes (one case alone, another output name); another seed: other masks
    r = runner.invoke(make_bin, [str(tmp_path / "sel.txt"), "--images", str(subset["images"]), "--case", "3",
                                 "--seed", "3", "-o", str(tmp_path / "again.bin")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "again.bin").read_bytes() == (tmp_path / "lfw_3.bin").read_bytes()
    r = runner.invoke(make_bin, [str(tmp_path / "sel.txt"), "--images", str(subset["images"]), "--case", "2,3",
                                 "--seed", "4", "-o", str(tmp_path / "other.bin")])
    assert r.exit_code == 0, r.output
    assert read_bin(tmp_path / "other_case3.bin")[0] != b3
