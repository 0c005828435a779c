"""Trainer, loader, checkpoints and export on shards built from real LFW faces (CPU, small)."""

from __future__ import annotations

import io
import json
import re
import tarfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from maskgen.training.augment import AugmentConfig, augment
from maskgen.errors import InputError, OutputError
from maskgen.training.checkpoint import list_checkpoints, load_model, resolve_checkpoint
from maskgen.training.loader import (
    LoaderConfig,
    expand_shards,
    make_loader,
    normalize_images,
    read_dataset_info,
)
from maskgen.training.schedules import lr_factor
from maskgen.training.trainer import train



pytestmark = pytest.mark.usefixtures("one_torch_thread")

N_IDS, PER_ID, PER_SHARD = 12, 12, 48
# Small but real: IResNet-18 at 32x32 input (images are resized by the loader) keeps a CPU step
# around a second or two on a busy 2-core machine (one thread: OpenMP spinning on an oversubscribed
# machine makes two threads slower, not faster).
TINY = {"model": "iresnet18", "model_options": {"input_size": 32}, "image_size": 32, "batch_size": 16,
        "num_workers": 0, "shuffle_buffer": 64, "threads": 1, "log_every": 1, "warmup_steps": 0,
        "schedule": "constant", "save_every": 0, "augment": {"flip": 0.5}}


def _lfw_identities(lfw_dir: Path, n: int, per: int) -> list[tuple[str, list[Path]]]:
    people = sorted((d for d in lfw_dir.iterdir() if d.is_dir()), key=lambda d: d.name)
    rich = [(d.name, sorted(d.glob("*.jpg"))[:per]) for d in people]
    rich = [(name, files) for name, files in rich if len(files) >= per]
    return rich[:n]


def _crop112(path: Path) -> np.ndarray:
    """Centre face region of a 250x250 deep-funneled LFW image, resized to 112x112 (BGR)."""
    img = cv2.imread(str(path))
    return cv2.resize(img[50:200, 50:200], (112, 112), interpolation=cv2.INTER_AREA)


def _fixture_mask(img: np.ndarray) -> np.ndarray:
    """A flat lower-face occluder standing in for a rendered mask in this loader fixture."""
    out = img.copy()
    cv2.fillPoly(out, [np.array([[25, 62], [87, 62], [80, 100], [32, 100]])], (200, 170, 90))
    return out


def write_shards(out: Path, samples: list[tuple[str, int, np.ndarray, np.ndarray, str]], per_shard: int,
                 corrupt: dict[str, dict[str, bytes | None]] | None = None) -> list[Path]:
    """DESIGN-format shards: <key>.jpg/.cls/.json plus twins <key>.orig.jpg/<key>.masked.jpg."""
    (out / "shards").mkdir(parents=True, exist_ok=True)
    corrupt = corrupt or {}
    paths, lengths = [], {}
    for s in range(0, len(samples), per_shard):
        path = out / "shards" / f"train-{s // per_shard:06d}.tar"
        chunk = samples[s : s + per_shard]
        with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tf:
            for key, label, img, msk, ident in chunk:
                masked = label % 4 == 0
                members: dict[str, bytes | None] = {
                    "jpg": cv2.imencode(".jpg", msk if masked else img)[1].tobytes(),
                    "orig.jpg": cv2.imencode(".jpg", img)[1].tobytes(),
                    "masked.jpg": cv2.imencode(".jpg", msk)[1].tobytes(),
                    "cls": str(label).encode(),
                    "json": json.dumps({"identity": ident, "masked": masked}).encode(),
                }
                members.update(corrupt.get(key, {}))
                for ext in sorted(members):
                    data = members[ext]
                    if data is None:
                        continue
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))
        paths.append(path)
        lengths[path.name] = len(chunk)
    meta = {"num_samples": len(samples), "num_classes": len({s[1] for s in samples}),
            "twins": True, "shards": [{"name": k, "num_samples": v} for k, v in lengths.items()]}
    (out / "dataset.json").write_text(json.dumps(meta))
    return paths


@pytest.fixture(scope="module")
def lfw_samples(lfw_dir: Path) -> list[tuple[str, int, np.ndarray, np.ndarray, str]]:
    samples = []
    for label, (name, files) in enumerate(_lfw_identities(lfw_dir, N_IDS, PER_ID)):
        for j, f in enumerate(files):
            img = _crop112(f)
            samples.append((f"{label:05d}-{j:05d}", label, img, _fixture_mask(img), name))
    order = np.random.default_rng(0).permutation(len(samples))
    return [samples[i] for i in order]


@pytest.fixture(scope="module")
def shards(tmp_path_factory, lfw_samples) -> Path:
    out = tmp_path_factory.mktemp("lfw_build")
    write_shards(out, lfw_samples, PER_SHARD)
    return out


@pytest.fixture(scope="module")
def built_shards(tmp_path_factory, lfw_dir: Path) -> Path:
    """Shards from the real ``maskgen build`` pipeline when it is available."""
    pipelines = pytest.importorskip("maskgen.pipelines")
    build = getattr(pipelines, "build", None)
    if build is None:
        pytest.skip("maskgen.pipelines.build is not available")
    out = tmp_path_factory.mktemp("maskgen_build")
    build(source="lfw", out=str(out), ratio=0.1, twins=True, min_images=PER_ID, max_images=PER_ID,
          max_identities=N_IDS, seed=0, quiet=True, report=False)
    return out


@pytest.fixture(scope="module")
def train_shards(request, shards: Path) -> Path:
    """Real ``maskgen build`` shards when the build pipeline is importable, else the LFW fixture."""
    try:
        return request.getfixturevalue("built_shards")
    except pytest.skip.Exception:
        return shards


def _loader_cfg(shard_dir: Path, **kw) -> LoaderConfig:
    shard_list = expand_shards(str(shard_dir / "shards" / "*.tar"))
    info = read_dataset_info(shard_list)
    base = dict(shards=shard_list, batch_size=16, steps_per_epoch=info.num_samples // 16,
                num_classes=info.num_classes, shuffle_buffer=32, seed=3)
    base.update(kw)
    return LoaderConfig(**base)


def _batches(cfg: LoaderConfig, epoch: int = 0, step: int = 0) -> list[dict]:
    loader, stream = make_loader(cfg)
    stream.set_position(epoch, step)
    return list(loader)


# -- shard lists and dataset.json ------------------------------------------------------------------
def test_expand_shards_glob_brace_and_list(shards: Path):
    d = shards / "shards"
    by_glob = expand_shards(str(d / "*.tar"))
    assert [Path(p).name for p in by_glob] == ["train-000000.tar", "train-000001.tar", "train-000002.tar"]
    assert expand_shards(str(d / "train-{000000..000002}.tar")) == by_glob
    assert expand_shards(by_glob) == by_glob
    assert expand_shards("::".join(by_glob[:2])) == by_glob[:2]
    info = read_dataset_info(by_glob[:2])  # a subset counts only its shards
    assert (info.num_samples, info.num_classes) == (2 * PER_SHARD, N_IDS)
    with pytest.raises(InputError, match="no shard matches"):
        expand_shards(str(d / "nothing-*.tar"))
    with pytest.raises(InputError, match="shard not found"):
        expand_shards(str(d / "train-{000000..000009}.tar"))


# -- loader ----------------------------------------------------------------------------------------
def test_loader_yields_equal_deterministic_batches(shards: Path):
    cfg = _loader_cfg(shards)
    first, again = _batches(cfg), _batches(cfg)
    assert len(first) == cfg.steps_per_epoch == N_IDS * PER_ID // 16
    b = first[0]
    assert b["image"].dtype == torch.uint8 and tuple(b["image"].shape) == (16, 112, 112, 3)
    assert b["label"].dtype == torch.long and len(b["key"]) == 16
    assert all(torch.equal(x["image"], y["image"]) and x["key"] == y["key"] for x, y in zip(first, again))
    keys = [k for x in first for k in x["key"]]
    assert len(set(keys)) == len(keys)  # one epoch without resampling: no sample twice
    other_epoch = _batches(cfg, epoch=1)
    assert [k for x in other_epoch for k in x["key"]] != keys
    # the twins flag of <key>.jpg comes from <key>.json
    masked = torch.cat([x["masked"] for x in first])
    labels = torch.cat([x["label"] for x in first])
    assert torch.equal(masked, (labels % 4 == 0).long())


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_resume_position_gives_the_same_batches(shards: Path, workers: int):
    cfg = _loader_cfg(shards, num_workers=workers)
    full = _batches(cfg, epoch=2)
    for start in (1, 4):
        tail = _batches(cfg, epoch=2, step=start)
        assert [x["key"] for x in tail] == [x["key"] for x in full[start:]]
        assert all(torch.equal(a["image"], b["image"]) for a, b in zip(tail, full[start:]))


def test_loader_ranks_split_and_stay_equal(shards: Path):
    steps = PER_SHARD // 16  # 3 shards over 2 ranks: rank 1 holds one shard, exactly 3 batches
    keys = []
    for rank in (0, 1):
        got = _batches(_loader_cfg(shards, rank=rank, world_size=2, steps_per_epoch=steps))
        assert len(got) == steps
        keys.append({k for x in got for k in x["key"]})
    assert not keys[0] & keys[1]


def test_train_mask_ratio_and_pairs(shards: Path):
    all_masked = _batches(_loader_cfg(shards, train_mask_ratio=1.0))
    assert all(int(x["masked"].min()) == 1 for x in all_masked)
    half = torch.cat([x["masked"] for x in _batches(_loader_cfg(shards, train_mask_ratio=0.5))])
    assert 0.3 < half.float().mean().item() < 0.7
    pairs = _batches(_loader_cfg(shards, pairs=True, augment=AugmentConfig(flip=0.5, crop=0.5)))[0]
    orig, msk = pairs["image_orig"].numpy(), pairs["image_masked"].numpy()
    assert orig.shape == msk.shape == (16, 112, 112, 3)
    # same geometry for both images of a pair: the unmasked upper face is identical
    assert np.abs(orig[:, :45].astype(int) - msk[:, :45].astype(int)).mean() < 2.0
    assert np.abs(orig[:, 70:100].astype(int) - msk[:, 70:100].astype(int)).mean() > 10.0
    chosen = np.where(pairs["masked"].numpy()[:, None, None, None] == 1, msk, orig)
    assert np.array_equal(pairs["image"].numpy(), chosen)


def test_corrupt_samples_are_skipped_and_counted(tmp_path: Path, lfw_samples):
    samples = lfw_samples[:64]
    bad_jpeg, no_label = samples[5][0], samples[20][0]
    truncated = samples[40][0]
    jpg = cv2.imencode(".jpg", samples[40][2])[1].tobytes()
    write_shards(tmp_path, samples, 64, corrupt={
        bad_jpeg: {"jpg": b"\xff\xd8 this is not a jpeg"},
        no_label: {"cls": None},
        truncated: {"jpg": jpg[:40]},
    })
    # one shard read in order (no shuffle): the 48 good samples of 3 batches lie past all 3 bad ones
    cfg = _loader_cfg(tmp_path, steps_per_epoch=3, shuffle_buffer=0)
    got = _batches(cfg)
    assert len(got) == 3 and all(len(x["key"]) == 16 for x in got)
    skipped: dict[str, int] = {}
    for x in got:
        for k, v in x["_skipped"].items():
            skipped[k] = skipped.get(k, 0) + v
    keys = {k for x in got for k in x["key"]}
    assert bad_jpeg not in keys and no_label not in keys and truncated not in keys
    assert skipped == {"decode_failed": 2, "missing_label": 1}


def test_augment_is_seeded_and_keeps_shape(lfw_samples):
    img = np.ascontiguousarray(lfw_samples[0][2][:, :, ::-1])
    cfg = AugmentConfig(flip=0.5, crop=1.0, blur=1.0, motion_blur=1.0, rgb_shift=1.0, jpeg=1.0, affine=1.0)
    a = augment(img, np.random.default_rng(7), cfg)
    b = augment(img, np.random.default_rng(7), cfg)
    c = augment(img, np.random.default_rng(8), cfg)
    assert a.shape == img.shape and a.dtype == np.uint8 and a.flags["C_CONTIGUOUS"]
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    x = normalize_images(a[None])
    assert tuple(x.shape) == (1, 3, 112, 112) and -1.0 <= x.min() and x.max() <= 1.0


# -- schedules -------------------------------------------------------------------------------------
def test_schedules():
    assert lr_factor(0, 100, "cosine", warmup_steps=10) == pytest.approx(0.1)
    assert lr_factor(10, 100, "cosine", warmup_steps=10) == pytest.approx(1.0)
    assert lr_factor(55, 100, "cosine", warmup_steps=10) == pytest.approx(0.5)
    assert lr_factor(99, 100, "cosine") < 0.01
    assert lr_factor(50, 100, "poly", poly_power=2) == pytest.approx(0.25)
    assert lr_factor(30, 100, "step", milestones=[20, 40]) == pytest.approx(0.1)
    assert lr_factor(45, 100, "step", milestones=[20, 40]) == pytest.approx(0.01)
    # SGDR: restarts at 10, then 10+20=30 with cycle_mult 2
    sgdr = [lr_factor(s, 100, "sgdr", cycle_steps=10, cycle_mult=2.0) for s in range(40)]
    assert sgdr[0] == sgdr[10] == sgdr[30] == pytest.approx(1.0)
    assert sgdr[9] < 0.05 and sgdr[29] < 0.01 and sgdr[20] == pytest.approx(0.5)


# -- training --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory, train_shards: Path):
    """24 steps of IResNet-18 (ArcFace, AdamW) on 12 LFW identities x 12 images built by
    ``maskgen build`` (10% masked), saved as a run (~40-60 s on a busy 2-core machine)."""
    out = tmp_path_factory.mktemp("runs")
    result = train(dict(TINY), shards=str(train_shards / "shards" / "*.tar"), out=str(out), name="fall",
                   max_steps=24, optimizer="adamw", lr=1e-3, weight_decay=0.05, ema=0.9, save_every=10,
                   keep_checkpoints=2)
    return result


def test_loss_falls(trained):
    losses = [row["loss"] for row in trained.history]
    assert len(losses) == 24
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    assert last < 0.8 * first, (first, last)
    accs = [row["acc"] for row in trained.history]
    assert np.mean(accs[-5:]) > np.mean(accs[:5])
    log_rows = [json.loads(x) for x in (trained.run_dir / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log_rows] == list(range(1, 25))
    assert {"loss", "lr", "samples_per_s", "acc", "data_wait"} <= set(log_rows[0])
    saved = (trained.run_dir / "config.yaml").read_text()
    assert "num_classes: 12" in saved and "model: iresnet18" in saved
    # every 10 steps, every epoch end (9 steps) and the last step; the 2 newest kept
    assert [p.name for p in list_checkpoints(trained.run_dir)] == ["step_000000020.pt", "step_000000024.pt"]


def test_resume_continues_the_same_run(tmp_path: Path, shards: Path):
    # MobileFaceNet keeps this cheap; partial-FC class sampling draws from the global RNG, crops
    # from the per-sample seeds, batches come from 2 loader processes: all must continue exactly
    # after the resume (at step 3, which is not a multiple of the worker count).
    common = dict(TINY, shards=str(shards / "shards" / "*.tar"), out=str(tmp_path),
                  model="mobilefacenet", max_steps=6, schedule="cosine", augment={"flip": 0.5, "crop": 0.3},
                  method_options={"sample_rate": 0.5}, ema=0.99, num_workers=2)
    full = train(common, name="full")
    part = train(common, name="split", stop_after=3)
    assert part.step == 3 and resolve_checkpoint("latest", part.run_dir).name == "step_000000003.pt"
    rest = train(common, name="split", resume="latest")
    assert rest.step == 6
    a = [r["loss"] for r in full.history]
    b = [r["loss"] for r in part.history] + [r["loss"] for r in rest.history]
    assert np.allclose(a, b, rtol=1e-4, atol=1e-4), (a, b)
    assert len((rest.run_dir / "log.jsonl").read_text().splitlines()) == 6
    with pytest.raises(OutputError, match="already has checkpoints"):
        train(common, name="split")


def test_load_embedder_and_onnx_export(trained, tmp_path: Path, lfw_samples):
    pytest.importorskip("onnxruntime")
    from maskgen.training.export import export_onnx, onnx_cosine

    embedder, config = load_model(trained.run_dir)  # run folder -> newest checkpoint, EMA weights
    assert config["model"] == "iresnet18" and not embedder.training
    imgs = np.stack([cv2.resize(s[2], (32, 32))[:, :, ::-1] for s in lfw_samples[:4]])
    x = normalize_images(imgs)
    with torch.no_grad():
        emb = embedder(x)
    assert tuple(emb.shape) == (4, 512) and torch.isfinite(emb).all()
    raw, _ = load_model(trained.checkpoint, use_ema=False)
    with torch.no_grad():
        assert not torch.allclose(raw(x), emb)
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = export_onnx(trained.checkpoint, tmp_path / "model.onnx", input_size=32)
    # the supported exporter (dynamo): no "will be removed" / deprecation warning from the export
    assert not [w for w in caught if "remove" in str(w.message) or "deprecat" in str(w.message).lower()], \
        [str(w.message) for w in caught]
    cos = onnx_cosine(path, embedder, x)
    assert cos.min() > 0.999
    cos8 = onnx_cosine(path, embedder, torch.cat([x, x]))  # dynamic batch
    assert cos8.shape == (8,) and cos8.min() > 0.999


def test_corrupt_sample_counted_by_the_trainer(tmp_path: Path, lfw_samples):
    samples = lfw_samples[:48]
    write_shards(tmp_path / "data", samples, 48, corrupt={samples[3][0]: {"jpg": b"garbage"}})
    res = train(dict(TINY), shards=str(tmp_path / "data" / "shards" / "*.tar"), out=str(tmp_path / "runs"),
                max_steps=2, batch_size=8, shuffle_buffer=0)  # read in order: sample 4 is the bad one
    assert res.step == 2 and res.skipped == {"decode_failed": 1}
    assert res.history[-1]["skipped"] == {"decode_failed": 1}


def test_real_build_twins_train_mask_ratio(built_shards: Path, tmp_path: Path):
    info = read_dataset_info(expand_shards(str(built_shards / "shards" / "*.tar")))
    assert (info.num_samples, info.num_classes, info.twins) == (N_IDS * PER_ID, N_IDS, True)
    cfg = _loader_cfg(built_shards, train_mask_ratio=1.0, steps_per_epoch=2)
    assert all(int(b["masked"].min()) == 1 for b in _batches(cfg))
    res = train(dict(TINY), shards=str(built_shards / "shards" / "*.tar"), out=str(tmp_path), max_steps=3,
                train_mask_ratio=0.5)
    assert res.step == 3 and all(np.isfinite(r["loss"]) for r in res.history) and not res.skipped


def test_cli_train_yaml_flags_and_export(tmp_path: Path, shards: Path):
    pytest.importorskip("onnxruntime")
    from click.testing import CliRunner

    from maskgen.training.cli import export as export_cmd
    from maskgen.training.cli import train as train_cmd

    cfg = tmp_path / "train.yaml"
    cfg.write_text("model: mobilefacenet\nbatch_size: 64\nmax_steps: 50\nnum_workers: 0\nthreads: 2\n"
                   "image_size: 32\nmodel_options: {input_size: 32}\nmethod: cosface\nlog_every: 1\n")
    args = ["--config", str(cfg), "--shards", str(shards / "shards" / "*.tar"), "--batch-size", "8",
            "--max-steps", "2", "-o", str(tmp_path / "runs"), "--name", "cli",
            "--set", "method_options.s=32", "--set", "augment.crop=0.5", "--compile", "false"]
    res = CliRunner().invoke(train_cmd, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    run = tmp_path / "runs" / "cli"
    saved = (run / "config.yaml").read_text()
    # YAML values kept unless a flag overrides them; nested --set merged into the YAML mapping
    assert "batch_size: 8" in saved and "max_steps: 2" in saved and "method: cosface" in saved
    assert "s: 32" in saved and "crop: 0.5" in saved and "input_size: 32" in saved
    res = CliRunner().invoke(train_cmd, args + ["--max-steps", "3", "--resume", "latest"], catch_exceptions=False)
    assert res.exit_code == 0 and "done: step 3" in res.output, res.output
    res = CliRunner().invoke(export_cmd, [str(run), "-o", str(tmp_path / "m.onnx")], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert float(res.output.split("cosine: min ")[1].split()[0]) > 0.999
    from maskgen.cli import main

    bad = CliRunner().invoke(main, ["train", "--shards", "x.tar", "--optimizer", "lion"])
    assert bad.exit_code == 2 and bad.stderr == "Error: --optimizer: must be one of sgd, adamw; got 'lion'\n"


def test_ddp_two_cpu_processes_with_torchrun(tmp_path: Path, shards: Path):
    """The multi-GPU code path on the CPU: torchrun, gloo, torch.compile + DDP, rank-split shards,
    the classifier sharded with one checkpoint file per rank."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "maskgen", "train", "--shards", str(shards / "shards" / "*.tar"), "--model", "mobilefacenet",
           "--set", "model_options.input_size=32", "--image-size", "32", "--batch-size", "4",
           "--max-steps", "3", "--num-workers", "0", "--device", "cpu", "--log-every", "1",
           "-o", str(tmp_path), "--name", "ddp", "--compile", "eager"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "global batch 8" in proc.stderr and "x2" in proc.stderr
    assert "classifier sharded over 2 ranks" in proc.stderr
    # PyTorch's order for compiled DDP models: compile the inner module in place, then wrap it
    assert "compiled in place (eager), then DDP over 2 ranks" in proc.stderr
    from maskgen.training.checkpoint import list_checkpoints as ckpts

    last = ckpts(tmp_path / "ddp")[-1]
    assert len(list(last.parent.glob(f"{last.stem}.rank*of2.pt"))) == 2 and not any(
        "_orig_mod" in k for k in torch.load(last, weights_only=True)["model"])
    # resume: every rank reloads its own classifier rows and optimizer state
    resumed = subprocess.run([*cmd[:cmd.index("--max-steps") + 1], "4", *cmd[cmd.index("--max-steps") + 2:],
                              "--resume", "latest"], env=env, capture_output=True, text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "resumed" in resumed.stderr and "done: step 4" in resumed.stdout
    # inference needs no classifier: the main file alone gives the model (one process)
    model, config = load_model(tmp_path / "ddp")
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 512) and config["num_classes"] == N_IDS
    rows = [json.loads(x) for x in (tmp_path / "ddp" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]  # rank 0 alone writes the log
    assert resolve_checkpoint("latest", tmp_path / "ddp").name == "step_000000004.pt"


def test_init_from_and_freeze_train_only_the_last_layers(trained, tmp_path: Path, train_shards: Path):
    """FaceNet-style transfer: start from a run's backbone, train only fc/features and the head."""
    from maskgen.training.checkpoint import backbone_state, load_checkpoint

    res = train(dict(TINY), shards=str(train_shards / "shards" / "*.tar"), out=str(tmp_path),
                init_from=str(trained.checkpoint), freeze=["backbone.fc", "backbone.features", "head"],
                freeze_bn=True, max_steps=2, method="cosface")
    source = backbone_state(trained.checkpoint)  # EMA weights of the source run
    after = load_checkpoint(res.checkpoint)["model"]
    assert torch.equal(after["backbone.conv1.weight"], source["conv1.weight"])
    assert torch.equal(after["backbone.layer2.0.bn1.running_mean"], source["layer2.0.bn1.running_mean"])
    assert not torch.equal(after["backbone.fc.weight"], source["fc.weight"])
    with pytest.raises(ValueError, match="match no parameter"):
        train(dict(TINY), shards=str(train_shards / "shards" / "*.tar"), out=str(tmp_path), name="bad",
              freeze=["backbone.nothing"], max_steps=1)


def test_loader_reads_shards_over_http(shards: Path):
    """URLs go through webdataset's openers; a local HTTP server stands in for remote storage."""
    import functools
    import http.server
    import shutil
    import threading

    if shutil.which("curl") is None:
        pytest.skip("webdataset opens http URLs with curl, which is not installed")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(shards))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/shards/train-{{000000..000002}}.tar"
        urls = expand_shards(url)
        assert len(urls) == 3 and all(u.startswith("http://") for u in urls)
        local = _loader_cfg(shards, steps_per_epoch=4)
        remote = LoaderConfig(**{**local.__dict__, "shards": urls})
        names = [Path(u).name for u in local.shards]
        assert [Path(u).name for u in urls] == names
        got, want = _batches(remote), _batches(local)
        assert [b["key"] for b in got] == [b["key"] for b in want]
        assert all(torch.equal(a["image"], b["image"]) for a, b in zip(got, want))
    finally:
        server.shutdown()


# -- safety: checkpoints are data, shards that end early are errors ---------------------------------
class _Payload:
    """Unpickling this creates ``marker``: what a hostile checkpoint would do with code."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _malicious_checkpoint(path: Path, marker: Path, config: dict | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"step": 5, "model": {"x": _Payload(marker)}, "config": config or {}}, path)
    return path


def test_malicious_checkpoints_never_run_through_any_entry_point(tmp_path: Path, shards: Path, lfw_dir: Path):
    from click.testing import CliRunner

    from maskgen.eval.cli import eval_cmd
    from maskgen.training.checkpoint import UnsafeCheckpointError
    from maskgen.training.cli import export as export_cmd
    from maskgen.training.cli import train as train_cmd

    marker = tmp_path / "pwned"
    evil = _malicious_checkpoint(tmp_path / "evil.pt", marker)
    runner = CliRunner()
    pattern = str(shards / "shards" / "*.tar")
    base = ["--shards", pattern, "--model", "mobilefacenet", "--set", "model_options.input_size=32",
            "--image-size", "32", "--batch-size", "4", "--max-steps", "1", "--num-workers", "0",
            "-o", str(tmp_path / "runs")]
    # maskgen export
    res = runner.invoke(export_cmd, [str(evil), "-o", str(tmp_path / "m.onnx")])
    assert isinstance(res.exception, UnsafeCheckpointError), res.output
    # train --init-from
    res = runner.invoke(train_cmd, base + ["--name", "init", "--init-from", str(evil)])
    assert isinstance(res.exception, UnsafeCheckpointError), res.output
    # train --resume latest: a hostile file planted as the newest checkpoint of the run
    _malicious_checkpoint(tmp_path / "runs" / "res" / "checkpoints" / "step_000000005.pt", marker)
    res = runner.invoke(train_cmd, base + ["--name", "res", "--resume", "latest"])
    assert isinstance(res.exception, UnsafeCheckpointError), res.output
    # maskgen eval --model ckpt:
    person = sorted(p for p in lfw_dir.iterdir() if p.is_dir() and len(list(p.glob("*.jpg"))) >= 2)[0]
    a, b = sorted(person.glob("*.jpg"))[:2]
    pairs = tmp_path / "pairs.txt"
    pairs.write_text(f"{person.name}/{a.name} {person.name}/{b.name} 1\n")
    res = runner.invoke(eval_cmd, ["--model", f"ckpt:{evil}", "--pairs", str(pairs), "--images", str(lfw_dir),
                                   "--cases", "1", "--no-identification", "-o", str(tmp_path / "ev")])
    assert isinstance(res.exception, UnsafeCheckpointError), res.output
    # and the library calls behind them
    from maskgen.training.checkpoint import backbone_state, load_checkpoint, load_model

    for call in (load_checkpoint, load_model, backbone_state):
        with pytest.raises(UnsafeCheckpointError) as info:
            call(evil)
        assert "\n" not in str(info.value) and "refused" in str(info.value)
    assert not marker.exists()


def test_truncated_newest_checkpoint_resumes_from_the_newest_good_one(tmp_path: Path, shards: Path, caplog):
    common = dict(TINY, model="mobilefacenet", shards=str(shards / "shards" / "*.tar"), out=str(tmp_path),
                  name="cut", batch_size=8, save_every=2, keep_checkpoints=3)
    first = train(common, max_steps=4)
    names = [p.name for p in list_checkpoints(first.run_dir)]
    assert names == ["step_000000002.pt", "step_000000004.pt"]
    newest = list_checkpoints(first.run_dir)[-1]
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # a real truncated file
    with caplog.at_level("WARNING", logger="maskgen.train"):
        rest = train(common, max_steps=6, resume="latest")
    assert rest.step == 6 and len(rest.history) == 4  # steps 3..6, resumed from step 2
    text = caplog.text
    assert "step_000000004.pt" in text and "truncated or unreadable" in text
    assert "resuming from step_000000002.pt" in text
    # a checkpoint file named explicitly that is truncated: a one-line error, not a crash
    from maskgen.training.checkpoint import CorruptCheckpointError, load_checkpoint

    cut = tmp_path / "cut.pt"
    cut.write_bytes(list_checkpoints(rest.run_dir)[-1].read_bytes()[:100])
    with pytest.raises(CorruptCheckpointError, match="truncated or unreadable"):
        load_checkpoint(cut)


def _truncate_at_member(path: Path, members: int) -> None:
    """Cut a tar right after its first ``members`` members (a header boundary: tarfile itself
    reads such a file without any error)."""
    with tarfile.open(path) as tf:
        infos = tf.getmembers()
    end = infos[members - 1].offset_data + -(-infos[members - 1].size // 512) * 512
    data = path.read_bytes()[:end]
    path.write_bytes(data)


def test_unreadable_shards_are_errors_never_silent(tmp_path: Path, lfw_samples):
    from click.testing import CliRunner

    from maskgen.training.cli import train as train_cmd

    write_shards(tmp_path / "data", lfw_samples[:96], 32)  # 3 shards of 32 samples
    d = tmp_path / "data" / "shards"
    half = d / "train-000001.tar"
    half.write_bytes(half.read_bytes()[: half.stat().st_size // 2])  # cut inside a member
    _truncate_at_member(d / "train-000002.tar", 5 * 10)  # 10 whole samples of 32 left
    res = train(dict(TINY), shards=str(d / "*.tar"), out=str(tmp_path / "runs"), name="bad", max_steps=12,
                batch_size=8, shuffle_buffer=0)
    assert set(res.bad_shards) == {"train-000001.tar", "train-000002.tar"}
    assert "10 of the 32 samples" in res.bad_shards["train-000002.tar"]
    assert res.skipped.get("unreadable_shard", 0) >= 2 and any(k.startswith("tar_error:") for k in res.skipped)
    out = CliRunner().invoke(train_cmd, ["--shards", str(d / "*.tar"), "--model", "iresnet18", "--set",
                                         "model_options.input_size=32", "--image-size", "32", "--batch-size", "8",
                                         "--max-steps", "2", "--num-workers", "0", "--shuffle-buffer", "0",
                                         "-o", str(tmp_path / "runs"), "--name", "cli"])
    assert out.exit_code == 0, out.output
    assert "error: shard train-000002.tar could not be read to its end" in out.output


def test_typed_options_fail_up_front_with_one_line(tmp_path: Path, shards: Path):
    from click.testing import CliRunner

    from maskgen.training.config import ConfigError, resolve_config
    from maskgen.training.cli import train as train_cmd

    runner = CliRunner()
    pattern = str(shards / "shards" / "*.tar")
    for args, message in [
        (["--set", "lr=abc"], "--set lr: expected a number, got 'abc'"),
        (["--set", "batch_size=0"], "--set batch_size: must be at least 1, got 0"),
        (["--batch-size", "0"], "--batch-size: must be at least 1, got 0"),
        (["--set", "freeze_bn=maybe"], "--set freeze_bn: expected true or false"),
        (["--set", "nope=1"], "--set nope: unknown train option; known: config, shards"),
        (["--set", "ema=1.5"], "--set ema: must be within (0, 1), got 1.5"),
        (["--set", "betas=[0.9]"], "--set betas: expected two numbers, got [0.9]"),
    ]:
        res = runner.invoke(train_cmd, ["--shards", pattern, "--print-config", *args])
        assert isinstance(res.exception, ConfigError), (args, res.output)
        assert message in str(res.exception) and "\n" not in str(res.exception)
    with pytest.raises(ConfigError, match="model/method options"):
        train(dict(TINY), shards=pattern, out=str(tmp_path), method_options={"sample_rate": "abc"}, max_steps=1)
    # the flags come from the same table: help text and a typed click option per key
    help_text = runner.invoke(train_cmd, ["--help"]).output
    assert "--batch-size INTEGER" in help_text and "samples per step on each rank" in help_text
    assert resolve_config(shards="x", lr=1, milestones=(2, 3))["lr"] == 1.0  # ints for floats, lists
    res = runner.invoke(train_cmd, ["--shards", str(tmp_path / "none-*.tar"), "-o", str(tmp_path)])
    assert isinstance(res.exception, InputError) and "no shard matches" in str(res.exception)


def test_progress_lines_give_done_total_rate_and_eta(tmp_path: Path, shards: Path, capsys):
    train(dict(TINY), model="mobilefacenet", shards=str(shards / "shards" / "*.tar"), out=str(tmp_path),
          name="progress", batch_size=8, max_steps=2)
    steps = [x for x in capsys.readouterr().err.splitlines() if " [train] " in x]
    assert [x.split()[2] for x in steps[:2]] == ["1/2", "2/2"]
    assert re.search(r"\[train\] 2/2 steps \(100%\) \| [\d.,]+ steps/s \| ETA 0:00:00 \| epoch 0, loss [\d.]+, ", steps[1])
    assert steps[-1].split(" ", 1)[1].startswith("[train] done: 2 steps in ")
    train(dict(TINY), model="mobilefacenet", shards=str(shards / "shards" / "*.tar"), out=str(tmp_path),
          name="progress-quiet", batch_size=8, max_steps=2, quiet=True)
    assert "[train]" not in capsys.readouterr().err


def test_one_loader_iterator_serves_every_epoch_with_the_same_workers(shards: Path):
    """Workers start once per run: one iterator over 3 epochs gives exactly the batches of three
    per-epoch iterators, from the same 2 worker processes (and resumes mid-epoch the same way)."""
    cfg = _loader_cfg(shards, num_workers=2, steps_per_epoch=3)
    per_epoch = [b for e in range(3) for b in _batches(cfg, epoch=e)]
    loader, stream = make_loader(cfg)
    stream.set_position(0, 0, end_step=9)
    whole = list(loader)
    assert [b["key"] for b in whole] == [b["key"] for b in per_epoch]
    assert len({b["_worker_pid"] for b in whole}) == 2
    stream.set_position(1, 1, end_step=8)  # resumed at epoch 1, step 1; stops inside epoch 2
    tail = list(loader)
    assert [b["key"] for b in tail] == [b["key"] for b in per_epoch[4:8]]


def test_nonfinite_step_is_skipped_on_the_device():
    from maskgen.training.methods import create_method
    from maskgen.training.models import create_model
    from maskgen.training.trainer import GradClipper, build_optimizer, train_step

    torch.manual_seed(0)
    method = create_method("arcface", create_model("mobilefacenet", input_size=32), 4)
    params = [p for p in method.parameters() if p.requires_grad]
    opt = build_optimizer({"optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4}, params)
    assert opt.maskgen_fused  # torch's fused kernels exist on the CPU too
    clip = GradClipper(params, [], 5.0)
    good = {"image": torch.randn(4, 3, 32, 32), "label": torch.arange(4)}
    _, flag = train_step(method, good, opt, clip)
    assert flag.ndim == 0 and float(flag) == 0.0
    before = [p.detach().clone() for p in params]
    momentum = [opt.state[p]["momentum_buffer"].clone() for p in params]
    bad = {"image": torch.full((4, 3, 32, 32), float("nan")), "label": torch.arange(4)}
    _, flag = train_step(method, bad, opt, clip)
    assert float(flag) == 1.0
    assert all(torch.equal(a, p) for a, p in zip(before, params))
    assert all(torch.equal(m, opt.state[p]["momentum_buffer"]) for m, p in zip(momentum, params))


def _step_fixture(name: str, device: str = "cpu", **opts):
    from maskgen.training.ema import ModelEma
    from maskgen.training.methods import create_method
    from maskgen.training.models import create_model
    from maskgen.training.trainer import GradClipper, build_optimizer

    torch.manual_seed(0)
    method = create_method(name, create_model("mobilefacenet", input_size=32, embedding_size=16), 4,
                           embedding_size=16, **opts).to(device).train()
    params = [p for p in method.parameters() if p.requires_grad]
    opt = build_optimizer({"optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4}, params)
    n = 8
    x = torch.randn(n, 3, 32, 32, device=device)
    labels = torch.arange(n) % 4
    batch = {"image": x, "image_orig": x, "image_masked": x * 0.5, "label": labels.to(device),
             "label_host": labels, "masked": (torch.arange(n) % 2).to(device), "key": [f"k{i}" for i in range(n)]}
    return method, opt, GradClipper(params, [], 5.0), ModelEma(method, 0.9), batch


_STEP_METHODS = [("arcface", {"sample_rate": 0.5}), ("multitask_arcface", {}), ("bfm", {"classifier_width": 4}),
                 ("triplet", {})]


@pytest.mark.parametrize(("name", "opts"), _STEP_METHODS, ids=[m for m, _ in _STEP_METHODS])
def test_a_training_step_reads_no_tensor_value_on_the_host(name: str, opts: dict, monkeypatch):
    """The host never reads a tensor's value in a step (item, bool, int, float, tolist): on a GPU
    each of those would wait for the device. Losses are read at logging steps only."""
    from maskgen.training.trainer import train_step

    method, opt, clip, ema, batch = _step_fixture(name, **opts)
    train_step(method, batch, opt, clip)  # first step: lazy state (momentum, BFM's E_P copy)
    reads: list[str] = []
    for attr in ("item", "__bool__", "__int__", "__float__", "tolist", "__index__"):
        real = getattr(torch.Tensor, attr)
        monkeypatch.setattr(torch.Tensor, attr, lambda self, *a, _r=real, _n=attr, **k: reads.append(_n) or _r(self, *a, **k))
    for _ in range(2):
        out, flag = train_step(method, batch, opt, clip)
        ema.update(method)
    monkeypatch.undo()
    assert reads == [], reads
    assert torch.isfinite(out["loss"]) and float(flag) == 0.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU (torch.cuda sync debug mode)")
@pytest.mark.parametrize(("name", "opts"), _STEP_METHODS, ids=[m for m, _ in _STEP_METHODS])
def test_a_training_step_does_not_synchronize_the_gpu(name: str, opts: dict):
    from maskgen.training.trainer import train_step

    method, opt, clip, ema, batch = _step_fixture(name, "cuda", **opts)
    train_step(method, batch, opt, clip)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(2):
            train_step(method, batch, opt, clip)
            ema.update(method)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_cli_config_by_shipped_name_or_path(tmp_path: Path):
    """--config takes a shipped config's name (from any folder) as well as a path; a name that
    is neither is one line naming what was looked for."""
    import yaml
    from click.testing import CliRunner

    from maskgen.options import find_config
    from maskgen.training.config import ConfigError
    from maskgen.training.cli import train as train_cmd

    runner = CliRunner()
    shipped = yaml.safe_load(find_config("train_tiny_cpu").read_text())
    for name in ("train_tiny_cpu", "configs/train_tiny_cpu.yaml", str(find_config("train_tiny_cpu"))):
        res = runner.invoke(train_cmd, ["--config", name, "--shards", "x-*.tar", "--print-config"])
        assert res.exit_code == 0, (name, res.output)
        got = yaml.safe_load(res.output)
        assert got["max_steps"] == shipped["max_steps"] and got["model"] == shipped["model"], name
    res = runner.invoke(train_cmd, ["--config", "methods/huang_bfm", "--shards", "x", "--print-config"])
    assert res.exit_code == 0 and yaml.safe_load(res.output)["method"] == "bfm", res.output
    mine = tmp_path / "mine.yaml"
    mine.write_text("max_steps: 7\n")
    res = runner.invoke(train_cmd, ["--config", str(mine), "--shards", "x", "--print-config"])
    assert res.exit_code == 0 and yaml.safe_load(res.output)["max_steps"] == 7, res.output
    res = runner.invoke(train_cmd, ["--config", "train_tiny_cpux", "--shards", "x", "--print-config"])
    msg = str(res.exception)
    assert isinstance(res.exception, ConfigError) and "\n" not in msg, res.output
    assert "train_tiny_cpux" in msg and "no such config file" in msg and "'train_tiny_cpu'" in msg
