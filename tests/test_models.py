"""Backbone registry, margin heads, methods registry, freeze and EMA (CPU, capped sizes)."""

from __future__ import annotations

import inspect
import math

import pytest
import torch
import torch.nn.functional as F

from maskgen.training.ema import ModelEma
from maskgen.training.heads import CombinedMarginLoss, PartialFC, shard_range
from maskgen.training.methods import create_method, list_methods
from maskgen.training.models import create_model, list_models
from maskgen.training.models.registry import model_factory
from maskgen.training.trainer import apply_freeze



pytestmark = pytest.mark.usefixtures("one_torch_thread")


STANDARD = ["iresnet18", "iresnet34", "iresnet50", "iresnet100", "iresnet200", "mobilefacenet"]


def test_standard_models_are_registered():
    assert set(STANDARD) <= set(list_models())
    assert list_models("iresnet*")[:2] == ["iresnet100", "iresnet18"]
    with pytest.raises(ValueError, match="unknown model"):
        create_model("resnet-nope")


@pytest.mark.parametrize("name", list_models())
def test_every_model_forward_shape(name: str):
    """Capped size: 32x32 input where the factory takes ``input_size`` (timm-style test)."""
    params = inspect.signature(model_factory(name)).parameters
    size = 32 if "input_size" in params else 112
    kwargs = {"input_size": size} if "input_size" in params else {}
    if "embedding_size" in params:
        kwargs["embedding_size"] = 128
    torch.manual_seed(0)
    # train-mode batch norm: at init the running statistics are not those of the activations
    model = create_model(name, **kwargs).train()
    with torch.no_grad():
        out = model(torch.randn(2, 3, size, size))
    assert out.shape == (2, kwargs.get("embedding_size", 512))
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["iresnet18", "mobilefacenet"])
def test_full_size_forward_backward(name: str):
    model = create_model(name).train()
    out = model(torch.randn(2, 3, 112, 112))
    assert out.shape == (2, 512)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_iresnet_layout_matches_insightface():
    model = create_model("iresnet50")
    state = model.state_dict()
    # arcface_torch names and shapes, so its backbone.pth loads with init_from
    assert state["conv1.weight"].shape == (64, 3, 3, 3)
    assert state["fc.weight"].shape == (512, 512 * 7 * 7)
    assert state["layer3.13.conv2.weight"].shape == (256, 256, 3, 3)
    assert "features.running_mean" in state and not model.features.weight.requires_grad
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(43.59e6, rel=0.01)


def test_arcface_cosface_combined_margins():
    cos = torch.tensor([[0.8, 0.1, -0.2], [0.3, 0.6, 0.0]])
    labels = torch.tensor([0, 1])
    theta0, theta1 = math.acos(0.8), math.acos(0.6)
    arc = CombinedMarginLoss(s=10, m2=0.5).margin_logits(cos, labels)
    assert arc[0, 0].item() == pytest.approx(10 * math.cos(theta0 + 0.5), rel=1e-5)
    assert arc[1, 1].item() == pytest.approx(10 * math.cos(theta1 + 0.5), rel=1e-5)
    assert arc[0, 1].item() == pytest.approx(1.0)  # non-target logits only scaled
    cosf = CombinedMarginLoss(s=10, m2=0.0, m3=0.4).margin_logits(cos, labels)
    assert cosf[0, 0].item() == pytest.approx(10 * (0.8 - 0.4), rel=1e-5)
    comb = CombinedMarginLoss(s=10, m1=1.0, m2=0.3, m3=0.2).margin_logits(cos, labels)
    assert comb[0, 0].item() == pytest.approx(10 * (math.cos(theta0 + 0.3) - 0.2), rel=1e-4)
    loss = CombinedMarginLoss(s=10, m2=0.5)(cos, labels)
    assert loss.item() == pytest.approx(F.cross_entropy(arc, labels).item())
    # beyond pi - m the ArcFace logit falls back to the monotonic cos - m*sin(m) form
    far = CombinedMarginLoss(s=1, m2=0.5).margin_logits(torch.tensor([[-0.95, 0.0]]), torch.tensor([0]))
    assert far[0, 0].item() == pytest.approx(-0.95 - math.sin(math.pi - 0.5) * 0.5, rel=1e-5)


def test_partial_fc_keeps_positives_and_remaps_labels():
    torch.manual_seed(0)
    head = PartialFC(16, 1000, CombinedMarginLoss(s=64, m2=0.5), sample_rate=0.1).train()
    labels = torch.tensor([7, 999, 7, 123])
    index, new = head.sample(labels)
    assert index.numel() == 100 and torch.all(index[1:] > index[:-1])
    assert torch.equal(index[new], labels)
    assert new[0] == new[2]  # the same class maps to the same sampled column
    # a -1 label (a class another rank holds) stays -1 and pulls no row in
    index2, new2 = head.sample(torch.tensor([5, -1]))
    assert new2[1] == -1 and 5 in index2.tolist()
    loss, acc = head(torch.randn(4, 16), labels)
    assert loss.ndim == 0 and torch.isfinite(loss) and 0.0 <= float(acc) <= 1.0
    head.eval()  # no sampling outside training: the full classifier, the plain cross-entropy
    emb = torch.randn(4, 16)
    loss_eval, _ = head(emb, labels)
    cos = torch.nn.functional.linear(torch.nn.functional.normalize(emb), torch.nn.functional.normalize(head.weight))
    assert torch.allclose(loss_eval, head.margin(cos, labels), atol=1e-5)


def test_shard_ranges_cover_every_class_once():
    for classes, world in [(10, 4), (7, 2), (4, 4), (1000, 3)]:
        ranges = [shard_range(classes, r, world) for r in range(world)]
        assert ranges[0][0] == 0 and ranges[-1][1] == classes
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
        sizes = [b - a for a, b in ranges]
        assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize(("name", "sample_rate"), [("arcface", 1.0), ("cosface", 0.5), ("combined", 0.5)])
def test_margin_methods_train(name: str, sample_rate: float):
    torch.manual_seed(0)
    method = create_method(name, create_model("mobilefacenet", input_size=32), 10,
                           sample_rate=sample_rate)
    assert name in list_methods() and method.needs_pairs is False
    batch = {"image": torch.randn(6, 3, 32, 32), "label": torch.tensor([0, 1, 2, 0, 1, 2])}
    opt = torch.optim.SGD(method.parameters(), lr=0.1)
    losses = []
    for _ in range(8):
        out = method(batch)
        assert set(out) >= {"loss", "acc"}
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
    assert losses[-1] < losses[0]
    method.eval()
    with torch.no_grad():
        assert method.embed(batch["image"]).shape == (6, 512)


def test_freeze_trains_only_matching_prefixes_and_ema_averages():
    method = create_method("arcface", create_model("iresnet18", input_size=32), 5)
    trained = apply_freeze(method, ["backbone.fc", "head"])
    assert trained == ["backbone.fc.weight", "backbone.fc.bias", "head.weight"]
    with pytest.raises(ValueError, match="match no parameter"):
        apply_freeze(create_method("arcface", create_model("iresnet18", input_size=32), 5), ["nope"])
    before = {k: v.clone() for k, v in method.state_dict().items()}
    ema = ModelEma(method, decay=0.5)
    opt = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.5)
    out = method({"image": torch.randn(4, 3, 32, 32), "label": torch.tensor([0, 1, 2, 3])})
    out["loss"].backward()
    opt.step()
    ema.update(method)
    after = method.state_dict()
    assert torch.equal(before["backbone.conv1.weight"], after["backbone.conv1.weight"])
    assert not torch.equal(before["backbone.fc.weight"], after["backbone.fc.weight"])
    d = min(0.5, 2 / 11)  # warm-up decay of the first update
    expect = d * before["backbone.fc.weight"] + (1 - d) * after["backbone.fc.weight"]
    assert torch.allclose(ema.state_dict()["backbone.fc.weight"], expect, atol=1e-6)
    assert not any(k.startswith("head.") for k in ema.state_dict())  # the EMA never copies the classifier


_SHARD_SCRIPT = r'''
import sys
import torch
import torch.distributed as dist

from maskgen.training.distributed import init_distributed
from maskgen.training.heads import classifier_sharding
from maskgen.training.methods import create_method
from maskgen.training.models import create_model
from maskgen.training.trainer import GradClipper, wrap_model

out_dir, classes, per_rank, emb, sample_rate = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
di = init_distributed("cpu")
rank, world = di.rank, di.world_size
torch.manual_seed(0)
backbone = create_model("mobilefacenet", embedding_size=emb, input_size=32, scale=1, blocks=(1, 1, 1, 1))
with classifier_sharding(rank, world):
    method = create_method("arcface", backbone, classes, embedding_size=emb, sample_rate=sample_rate)
full = torch.randn(classes, emb, generator=torch.Generator().manual_seed(1))
head = method.head
with torch.no_grad():
    head.weight.copy_(full[head.class_start:head.class_start + head.num_local])
g = torch.Generator().manual_seed(2)
x = torch.randn(world * per_rank, 3, 32, 32, generator=g)
y = torch.randint(0, classes, (world * per_rank,), generator=g)
model = wrap_model(method, {"compile": False, "find_unused_parameters": False}, di)
method.backbone.eval()  # batch-norm statistics are per rank by design; running stats make ranks comparable
sl = slice(rank * per_rank, (rank + 1) * per_rank)
out = model({"image": x[sl], "label": y[sl]})
out["loss"].backward()
params = [p for p in method.parameters() if p.requires_grad]
norm = GradClipper(params, [head.weight], None, world)()
torch.save({
    "loss": out["loss"].detach(), "acc": out["acc"].detach(), "norm": norm,
    "backbone_grads": {n: p.grad.clone() for n, p in method.backbone.named_parameters() if p.grad is not None},
    "head_grad": head.weight.grad.clone(), "start": head.class_start, "rows": head.num_local,
    "head_bytes": head.weight.numel() * head.weight.element_size(),
}, f"{out_dir}/rank{rank}.pt")
dist.destroy_process_group()
'''


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_sharded(tmp_path, world: int, classes: int, per_rank: int, emb: int, sample_rate: float = 1.0) -> list[dict]:
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "shard_worker.py"
    script.write_text(_SHARD_SCRIPT)
    root = Path(__file__).resolve().parents[1]
    port = _free_port()
    procs = []
    for rank in range(world):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(port), OMP_NUM_THREADS="1",
                   PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))
        procs.append(subprocess.Popen([sys.executable, str(script), str(tmp_path), str(classes), str(per_rank),
                                       str(emb), str(sample_rate)], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    for p in procs:
        out, _ = p.communicate(timeout=300)
        assert p.returncode == 0, out[-3000:]
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(world)]


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """|a - b| / |b|: float32 reductions over ranks sum in another order (s = 64 scales it up)."""
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


@pytest.mark.parametrize("world", [2, 4])
def test_sharded_partial_fc_equals_the_full_classifier(tmp_path, world: int):
    """Partial FC over gloo ranks, sample rate 1.0: the loss, the backbone gradients (after DDP's
    averaging) and the class-centre gradients equal one process with the whole classifier on the
    whole global batch; each rank holds classes/world rows."""
    import torch.nn.functional as F

    classes, per_rank, emb = 10, 3, 16
    ranks = _run_sharded(tmp_path, world, classes, per_rank, emb)

    torch.manual_seed(0)
    backbone = create_model("mobilefacenet", embedding_size=emb, input_size=32, scale=1, blocks=(1, 1, 1, 1))
    backbone.eval()
    full = torch.randn(classes, emb, generator=torch.Generator().manual_seed(1)).requires_grad_()
    g = torch.Generator().manual_seed(2)
    x = torch.randn(world * per_rank, 3, 32, 32, generator=g)
    y = torch.randint(0, classes, (world * per_rank,), generator=g)
    cos = F.linear(F.normalize(backbone(x)), F.normalize(full))
    loss = F.cross_entropy(CombinedMarginLoss(64.0, 1.0, 0.5, 0.0).margin_logits(cos, y), y)
    loss.backward()
    acc = (cos.argmax(1) == y).float().mean()

    for r in ranks:
        assert torch.allclose(r["loss"], loss.detach(), rtol=1e-5, atol=1e-6)
        assert torch.allclose(r["acc"], acc)
        for name, p in backbone.named_parameters():
            if p.grad is not None:
                assert _rel_err(r["backbone_grads"][name], p.grad) < 1e-4, name
        rows = slice(r["start"], r["start"] + r["rows"])
        assert _rel_err(r["head_grad"], full.grad[rows]) < 1e-4
    total = torch.sqrt(sum(p.grad.pow(2).sum() for p in backbone.parameters() if p.grad is not None)
                       + full.grad.pow(2).sum())
    assert all(torch.allclose(r["norm"], total, rtol=1e-4) for r in ranks)  # one clip factor on every rank
    # memory per rank: the classifier (and its gradient and momentum) falls as 1/world
    assert sum(r["rows"] for r in ranks) == classes
    assert max(r["head_bytes"] for r in ranks) <= -(-classes // world) * emb * 4


def test_sharded_partial_fc_samples_on_each_rank(tmp_path):
    ranks = _run_sharded(tmp_path, 2, 40, 3, 8, sample_rate=0.25)
    assert all(torch.isfinite(r["loss"]) for r in ranks)
    assert torch.allclose(ranks[0]["loss"], ranks[1]["loss"])  # one global loss
    # only sampled rows (positives + negatives) get a gradient
    touched = [int((r["head_grad"].abs().sum(1) > 0).sum()) for r in ranks]
    assert all(1 <= t <= 6 for t in touched), touched  # k = max(25% of 20, global batch 6)
