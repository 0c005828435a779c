"""ElasticFace (``maskgen/training/methods/elasticface.py``): a loss added as one file plus its
config and this test. Exactness against ArcFace/CosFace at sigma = 0, the margins' statistics
and seeding, real training steps, and the trainer CLI on the tiny CPU config."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

from maskgen.training.heads import CombinedMarginLoss
from maskgen.training.methods import create_method, list_methods
from maskgen.training.methods.elasticface import ElasticMarginLoss
from maskgen.training.models import create_model

ROOT = Path(__file__).resolve().parents[1]
EMB, SIZE = 32, 32


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _cosines(n: int = 64, classes: int = 10, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    cos = torch.rand(n, classes, generator=g) * 2 - 1
    labels = torch.randint(0, classes, (n,), generator=g)
    labels[3] = -1  # a row whose class another rank holds: only scaled
    cos[0, labels[0]] = -0.95  # past ArcFace's easy-margin threshold cos(pi - m)
    return cos, labels


def test_registered_and_configured() -> None:
    assert {"elasticface_arc", "elasticface_cos"} <= set(list_methods())
    from maskgen.training.config import resolve_config

    cfg = resolve_config(ROOT / "configs" / "methods" / "boutros_elasticface.yaml", shards="x.tar")
    assert cfg["method"] == "elasticface_arc"
    assert cfg["method_options"] == {"s": 64.0, "m": 0.5, "sigma": 0.05, "plus": False, "seed": 0}
    backbone = create_model("iresnet18", embedding_size=EMB, input_size=SIZE)
    cos = create_method("elasticface_cos", backbone, 5, embedding_size=EMB)
    assert (cos.head.margin.kind, cos.head.margin.m, cos.head.margin.sigma) == ("cos", 0.35, 0.05)


@pytest.mark.parametrize("kind,reference", [("arc", (1.0, 0.5, 0.0)), ("cos", (1.0, 0.0, 0.35))])
def test_sigma_zero_is_arcface_or_cosface_exactly(kind: str, reference: tuple[float, float, float]) -> None:
    cos, labels = _cosines()
    m = reference[1] if kind == "arc" else reference[2]
    want = CombinedMarginLoss(64.0, *reference).margin_logits(cos, labels)
    for plus in (False, True):
        got = ElasticMarginLoss(kind, 64.0, m, sigma=0.0, plus=plus).margin_logits(cos, labels)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_sigma_zero_method_equals_the_registered_arcface() -> None:
    """The whole method: same backbone and centres, same loss as ``arcface``."""
    x = torch.randn(8, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    batch = {"image": x, "label": torch.arange(8) % 4}
    losses = []
    for name, opts in (("arcface", {}), ("elasticface_arc", {"sigma": 0.0})):
        torch.manual_seed(0)
        method = create_method(name, create_model("iresnet18", embedding_size=EMB, input_size=SIZE), 4,
                               embedding_size=EMB, **opts).eval()
        with torch.no_grad():
            losses.append(method(batch)["loss"])
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-6, atol=1e-6)


def test_margin_statistics() -> None:
    loss = ElasticMarginLoss("arc", m=0.5, sigma=0.05, seed=3)
    draws = torch.cat([loss.draw_margins(4096, torch.device("cpu")) for _ in range(5)])
    assert abs(float(draws.mean()) - 0.5) < 0.003 and abs(float(draws.std()) - 0.05) < 0.003
    assert float(((draws - 0.5).abs() < 0.05).float().mean()) == pytest.approx(0.683, abs=0.02)  # normal, 1 sigma
    # in the logits: the target of row i moved by exactly its margin (CosFace form)
    cos, labels = _cosines(n=2000, seed=1)
    labels = labels.clamp_min(0)
    ref = ElasticMarginLoss("cos", m=0.35, sigma=0.05, seed=5)
    margins = ElasticMarginLoss("cos", m=0.35, sigma=0.05, seed=5).draw_margins(2000, torch.device("cpu"))
    out = ref.margin_logits(cos, labels) / 64.0
    moved = cos.gather(1, labels[:, None])[:, 0] - out.gather(1, labels[:, None])[:, 0]
    torch.testing.assert_close(moved, margins, rtol=0, atol=1e-5)
    others = torch.ones_like(cos, dtype=torch.bool).scatter_(1, labels[:, None], False)
    torch.testing.assert_close(out[others], cos[others])


def test_plus_gives_the_hardest_samples_the_largest_margins() -> None:
    cos, labels = _cosines(n=500, seed=4)
    labels = labels.clamp_min(0)
    plus = ElasticMarginLoss("cos", m=0.35, sigma=0.05, plus=True, seed=7)
    out = plus.margin_logits(cos, labels) / 64.0
    target = cos.gather(1, labels[:, None])[:, 0]
    moved = target - out.gather(1, labels[:, None])[:, 0]
    order = target.argsort()  # hardest (lowest cosine) first
    distinct = target[order][:-1] < target[order][1:]  # equal cosines may take their margins either way
    assert bool((moved[order][:-1] >= moved[order][1:] - 1e-6)[distinct].all())
    # the same set of margins as the plain draw of that seed, only reassigned
    plain = ElasticMarginLoss("cos", m=0.35, sigma=0.05, seed=7).draw_margins(500, torch.device("cpu"))
    torch.testing.assert_close(moved.sort()[0], plain.sort()[0], rtol=0, atol=1e-5)


def test_seeded_determinism() -> None:
    cos, labels = _cosines()

    def run(seed: int) -> list[torch.Tensor]:
        loss = ElasticMarginLoss("arc", seed=seed)
        return [loss.margin_logits(cos, labels) for _ in range(3)]

    a, b, c = run(0), run(0), run(1)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], a[1])  # a fresh draw every step
    assert not torch.equal(a[0], c[0])


def _faces(n_ids: int = 4, per: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """Small real face crops: shifted windows of scikit-image's astronaut, one window per identity."""
    skdata = pytest.importorskip("skimage.data")
    img = skdata.astronaut().astype(np.float32) / 127.5 - 1.0
    xs, ys = [], []
    for k in range(n_ids):
        for j in range(per):
            y0, x0 = 20 + 60 * k + 3 * j, 150 + 2 * j
            crop = cv2.resize(img[y0 : y0 + 160, x0 : x0 + 160], (SIZE, SIZE), interpolation=cv2.INTER_AREA)
            xs.append(torch.from_numpy(crop).permute(2, 0, 1))
            ys.append(k)
    return torch.stack(xs), torch.tensor(ys)


@pytest.mark.parametrize("name,opts", [("elasticface_arc", {}), ("elasticface_cos", {"plus": True})])
def test_training_steps_decrease_the_loss(name: str, opts: dict) -> None:
    x, y = _faces()
    torch.manual_seed(0)
    backbone = create_model("iresnet18", embedding_size=EMB, input_size=SIZE)
    method = create_method(name, backbone, 4, embedding_size=EMB, s=16.0, **opts).train()
    opt = torch.optim.SGD(method.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(8):
        out = method({"image": x, "label": y})
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(float(out["loss"].detach()))
    assert all(np.isfinite(losses)) and losses[-1] < 0.8 * losses[0], losses


def _write_shard(out: Path) -> Path:
    """One WebDataset shard (``<key>.jpg`` + ``<key>.cls``) of the astronaut crops above."""
    x, y = _faces(per=8)
    out.mkdir(parents=True)
    path = out / "train-000000.tar"
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tf:
        for i, (img, label) in enumerate(zip(x, y)):
            rgb = ((img.permute(1, 2, 0).numpy() + 1.0) * 127.5).clip(0, 255).astype(np.uint8)
            members = {"jpg": cv2.imencode(".jpg", rgb[:, :, ::-1])[1].tobytes(), "cls": str(int(label)).encode()}
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{i:05d}.{ext}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize("how", ["flag", "config"])
def test_train_cli_on_the_tiny_cpu_config(tmp_path: Path, how: str) -> None:
    """``maskgen train --config train_tiny_cpu --method elasticface_arc``, and the shipped
    method config with the tiny model, run real steps and save the method in the run."""
    from click.testing import CliRunner

    from maskgen.training.cli import train as train_cmd

    shard = _write_shard(tmp_path / "shards")
    common = ["--shards", str(shard), "--max-steps", "2", "--batch-size", "8", "--output", str(tmp_path / "runs"),
              "--name", how, "--set", "num_workers=0", "--set", "shuffle_buffer=8", "--set", "log_every=1"]
    if how == "flag":
        args = ["--config", "train_tiny_cpu", "--method", "elasticface_arc", *common]
    else:
        args = ["--config", "methods/boutros_elasticface", "--model", "iresnet18", "--set",
                "model_options.input_size=32", "--set", "image_size=32", "--set", "device=cpu",
                "--set", "method_options.plus=true", *common]
    res = CliRunner().invoke(train_cmd, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "done: step 2" in res.output, res.output
    saved = yaml.safe_load((tmp_path / "runs" / how / "config.yaml").read_text())
    assert saved["method"] == "elasticface_arc"
    if how == "config":
        assert saved["method_options"]["plus"] is True and saved["method_options"]["sigma"] == 0.05


def _sharded_rank(rank: int, init: str, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, out: str) -> None:
    """One of two gloo ranks: its half of the batch, its shard of the class centres."""
    import torch.distributed as dist

    from maskgen.training.heads import PartialFC, classifier_sharding, shard_range

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    try:
        with classifier_sharding(rank, 2):
            head = PartialFC(x.shape[1], w.shape[0], ElasticMarginLoss("arc", 16.0, plus=True, seed=9))
        head.margin.world_size = head.world_size  # what the method does after building its head
        start, stop = shard_range(w.shape[0], rank, 2)
        with torch.no_grad():
            head.weight.copy_(w[start:stop])
        half = x.shape[0] // 2
        losses = [float(head(x[rank * half:(rank + 1) * half], y[rank * half:(rank + 1) * half])[0].detach())
                  for _ in range(2)]
        torch.save(losses, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_plus_with_a_sharded_classifier_equals_one_process(tmp_path: Path) -> None:
    """Two gloo ranks, each holding half the classes and half the batch: the ranks agree on every
    row's margin and on the hardness order (the all-reduced target cosines), so the loss is the
    one of a single process holding every class."""
    import torch.multiprocessing as mp

    from maskgen.training.heads import PartialFC

    g = torch.Generator().manual_seed(0)
    x, y, w = torch.randn(12, 8, generator=g), torch.randint(0, 7, (12,), generator=g), torch.randn(7, 8, generator=g)
    head = PartialFC(8, 7, ElasticMarginLoss("arc", 16.0, plus=True, seed=9))
    with torch.no_grad():
        head.weight.copy_(w)
    want = [float(head(x, y)[0].detach()) for _ in range(2)]
    out = str(tmp_path / "loss")
    mp.spawn(_sharded_rank, args=(f"file://{tmp_path / 'rdzv'}", x, y, w, out), nprocs=2, join=True)
    for rank in range(2):
        assert torch.load(f"{out}.{rank}") == pytest.approx(want, rel=1e-5)
    assert want[0] != want[1]  # a fresh draw each step


def test_no_other_module_names_it() -> None:
    """Adding the loss touched only its file (and its config): no other module names it."""
    root = ROOT / "maskgen"
    naming = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.py") if "elasticface" in p.read_text().lower())
    assert naming == ["training/methods/elasticface.py"]
