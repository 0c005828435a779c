"""Published masked-face methods: Multi-Task ArcFace, balanced feature matching, triplet
transfer, feature concatenation; on random tensors and on real LFW faces."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from maskgen.training.checkpoint import ModelEmbedder
from maskgen.training.inference import bfm_pair_scores, split_bfm
from maskgen.training.methods import create_method, list_methods, method_class
from maskgen.training.methods.bfm import guided_loss
from maskgen.training.methods.triplet import sample_triplets, triplet_loss
from maskgen.training.models import create_model

ROOT = Path(__file__).resolve().parents[1]
EMB = 32
SIZE = 64  # input side: small to keep the CPU tests fast (the models take input_size)
TINY = {"width": 4, "layers": (1, 1, 1, 1), "embedding_size": EMB, "input_size": SIZE}
METHODS = ("multitask_arcface", "bfm", "triplet")


def tiny_method(name: str, num_classes: int = 4, model: str = "mfr_iresnet18", **options):
    torch.manual_seed(0)
    opts = dict(TINY) if model.startswith(("mfr", "ressanet")) else {"embedding_size": EMB, "input_size": SIZE}
    if model == "mobilefacenet":
        opts.update(scale=1, blocks=(1, 1, 1, 1))
    backbone = create_model(model, **opts)
    if name == "bfm":
        options.setdefault("classifier_width", 4)
    return create_method(name, backbone, num_classes, embedding_size=EMB, **options)


def make_batch(images: torch.Tensor, masked_images: torch.Tensor, labels: torch.Tensor) -> dict:
    """A trainer-shaped batch: half the samples show their masked twin in ``image``."""
    n = len(labels)
    choice = torch.arange(n) % 2
    image = torch.where(choice[:, None, None, None].bool(), masked_images, images)
    return {
        "image": image,
        "label": labels,
        "masked": choice,
        "key": [f"{i:04d}" for i in range(n)],
        "image_orig": images,
        "image_masked": masked_images,
    }


def random_batch(n: int = 8, classes: int = 4, repeat: bool = True) -> dict:
    """``n`` random samples of ``classes`` identities with masked twins. With ``repeat``, they
    are ``n // 2`` images shown once unmasked and once masked, so a mask head must learn the
    mask and not the sample; without, ``n`` distinct images (for triplets, whose positives
    must differ from their anchors)."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n // 2 if repeat else n, 3, SIZE, SIZE, generator=g).clamp(-1, 1)
    masked = x.clone()
    masked[:, :, SIZE // 2 :, SIZE // 6 : SIZE - SIZE // 6] = 0.6  # a flat lower-face patch
    if not repeat:
        return make_batch(x, masked, torch.arange(n) % classes)
    orig, masked = torch.cat([x, x]), torch.cat([masked, masked])
    batch = make_batch(orig, masked, torch.arange(n) % classes)
    batch["masked"] = (torch.arange(n) >= n // 2).long()
    batch["image"] = torch.where(batch["masked"][:, None, None, None].bool(), masked, orig)
    return batch


def train_steps(method, batch: dict, steps: int = 6, lr: float = 0.05) -> list[float]:
    opt = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=lr, momentum=0.9)
    method.train()
    losses = []
    for _ in range(steps):
        out = method(batch)
        assert all(torch.isfinite(v).all() for v in out.values())
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(float(out["loss"].detach()))
    return losses


def recalibrate_bn(method: torch.nn.Module, batch: dict) -> None:
    """Set BatchNorm running statistics to this batch's (a few steps leave them near their
    initial values, so eval mode would not show what training learned)."""
    for m in method.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average: one pass gives the batch statistics
    method.train()
    with torch.no_grad():
        method(batch)


def test_registered_and_pair_needs() -> None:
    assert set(METHODS) <= set(list_methods())
    assert method_class("bfm").needs_pairs and method_class("triplet").needs_pairs
    assert not method_class("multitask_arcface").needs_pairs


@pytest.fixture(scope="module", params=METHODS)
def trained(request) -> tuple[str, torch.nn.Module, dict, list[float]]:
    """Each method trained for a few steps on one random batch (shared by several tests)."""
    name = request.param
    method = tiny_method(name)
    batch = random_batch(repeat=name != "triplet")
    losses = train_steps(method, batch, steps=7)
    recalibrate_bn(method, batch)
    return name, method.eval(), batch, losses


def test_loss_finite_and_decreasing_on_random_batch(trained) -> None:
    name, method, batch, losses = trained
    assert np.isfinite(losses).all()
    assert min(losses[-2:]) < losses[0]
    with torch.no_grad():
        emb = ModelEmbedder(method)(batch["image"][:2])
    assert emb.shape == (2, 2 * EMB if name == "bfm" else EMB)


@pytest.mark.parametrize("trained", ["multitask_arcface", "bfm"], indirect=True)
def test_mask_heads_learn_the_mask(trained) -> None:
    name, method, batch, _ = trained
    with torch.no_grad():
        pred_orig = method.predict_mask(batch["image_orig"])
        pred_masked = method.predict_mask(batch["image_masked"])
    assert bool((pred_orig < 0.5).all()) and bool((pred_masked >= 0.5).all())


def test_multitask_loss_is_arcface_plus_log_mask_loss() -> None:
    method = tiny_method("multitask_arcface")
    assert method.mask_head_source == "pre_fc"
    assert method.mask_head.in_features == method.backbone.fc.in_features
    out = method(random_batch())
    expected = out["id_loss"] + torch.log(out["mask_loss"] + 1.0)
    assert torch.allclose(out["loss"].detach(), expected, atol=1e-5)
    probs = method.eval().predict_mask(random_batch()["image"])
    assert probs.shape == (8,) and bool(((probs >= 0) & (probs <= 1)).all())
    assert ModelEmbedder(method).has_mask_head


def test_multitask_falls_back_to_embedding_without_fc() -> None:
    method = tiny_method("multitask_arcface", model="mobilefacenet")
    assert method.mask_head_source == "embedding"
    assert method.mask_head.in_features == EMB
    out = method(random_batch())
    out["loss"].backward()
    assert method.mask_head.weight.grad is not None


def test_guided_loss_values_and_stop_gradient() -> None:
    a = torch.randn(4, 8, requires_grad=True)
    assert guided_loss(a, 3.0 * a).item() == pytest.approx(0.0, abs=1e-6)
    assert guided_loss(a, -a).item() == pytest.approx(4.0, abs=1e-5)
    b = torch.randn(4, 8, requires_grad=True)
    guided_loss(a, b, stop_grad=True).backward()
    assert a.grad is None and b.grad is not None
    a2, b2 = a.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
    guided_loss(a2, b2, stop_grad=False).backward()
    assert a2.grad is not None and b2.grad is not None


def test_bfm_total_is_sum_of_four_losses_and_parts_train() -> None:
    method = tiny_method("bfm")
    out = method(random_batch())
    parts = out["mask_loss"] + out["guided_loss"] + out["full_loss"] + out["partial_loss"]
    assert torch.allclose(out["loss"].detach(), parts, atol=1e-4)
    out["loss"].backward()
    for module in (method.classifier, method.backbone, method.partial, method.full_head, method.partial_head):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())
    assert method.full is method.backbone and method.partial is not method.backbone


def test_bfm_partial_extractor_starts_from_loaded_backbone() -> None:
    method = tiny_method("bfm")
    # what the trainer's init_from does: load weights into the backbone after construction
    with torch.no_grad():
        for p in method.backbone.parameters():
            p.add_(0.5)
    method.train()
    method(random_batch())
    state_f, state_p = method.backbone.state_dict(), method.partial.state_dict()
    assert all(torch.equal(state_f[k], state_p[k]) for k in state_f if "running" not in k and "num_batches" not in k)
    assert int(method.state_dict()["partial_synced"]) == 1  # saved: a resumed run keeps E_P


def test_bfm_routing_picks_full_only_when_no_mask_on_both() -> None:
    d = 4
    full_same = np.eye(d)[[0, 0, 0, 0]]
    part_a = np.eye(d)[[1, 1, 1, 1]]
    part_b = np.eye(d)[[2, 2, 2, 2]]  # partial features disagree: cosine 0
    emb_a = np.concatenate([full_same, part_a], 1)
    emb_b = np.concatenate([full_same, part_b], 1)
    prob_a = np.array([0.1, 0.9, 0.1, 0.9])
    prob_b = np.array([0.2, 0.1, 0.7, 0.6])
    scores, partial = bfm_pair_scores(emb_a, emb_b, prob_a, prob_b)
    assert partial.tolist() == [False, True, True, True]
    assert scores.tolist() == pytest.approx([1.0, 0.0, 0.0, 0.0])
    full, part = split_bfm(emb_a)
    assert full.shape == part.shape == (4, d)
    with pytest.raises(ValueError):
        split_bfm(np.zeros((2, 3)))


@pytest.mark.parametrize("trained", ["bfm"], indirect=True)
def test_bfm_embedding_routes_after_training(trained) -> None:
    _, method, batch, _ = trained
    both = torch.cat([batch["image_orig"], batch["image_masked"]])
    with torch.no_grad():
        emb = method.embed(both).numpy()
        prob = method.predict_mask(both).numpy()
    n = len(batch["label"])
    _, partial = bfm_pair_scores(emb[:n], emb[:n], prob[:n], prob[:n])
    assert not partial.any()  # unmasked-unmasked pairs use E_F
    _, partial = bfm_pair_scores(emb[:n], emb[n:], prob[:n], prob[n:])
    assert partial.all()  # any mask: E_P
    scores, _ = bfm_pair_scores(emb[:n], emb[n:], np.zeros(n), np.zeros(n))
    full, part = split_bfm(emb)
    assert np.allclose(scores, np.sum(full[:n] * full[n:], 1), atol=1e-5)


def test_triplet_sampling_valid_seeded_and_fresh_each_epoch() -> None:
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3] * 2)
    keys = [f"k{i:02d}" for i in range(16)]
    p, n, valid = sample_triplets(labels, keys, seed=3, epoch=0)
    a = np.arange(16)
    assert valid.all() and (labels.numpy()[a] == labels.numpy()[p]).all() and (a != p).all()
    assert (labels.numpy()[a] != labels.numpy()[n]).all()
    # an identity seen once has no positive and is not a valid anchor
    _, _, v1 = sample_triplets(torch.tensor([0, 1, 1]), ["a", "b", "c"], 0, 0)
    assert v1.tolist() == [False, True, True]
    # the same epoch gives the same triplets whatever the step; a new epoch new negatives
    again = sample_triplets(labels, keys, 3, 0)[1]
    later = [sample_triplets(labels, keys, 3, e)[1] for e in (1, 2, 3)]
    assert np.array_equal(n, again) and any(not np.array_equal(n, x) for x in later)
    # a negative belongs to the anchor and the candidate, not to the batch position
    perm = np.random.default_rng(0).permutation(16)
    _, n_perm, _ = sample_triplets(labels[perm], [keys[i] for i in perm], 3, 0)
    assert [keys[perm[j]] for j in n_perm] == [keys[n[i]] for i in perm]

    method = tiny_method("triplet", seed=3)
    method.set_epoch(2)
    assert method.epoch == 2 and isinstance(method.neck[0], torch.nn.Linear)


def test_triplet_loss_margin() -> None:
    a = torch.tensor([[1.0, 0.0]])
    assert triplet_loss(a, a, -a, 0.5).item() == 0.0  # d_pos 0, d_neg 4
    assert triplet_loss(a, -a, a, 0.5).item() == pytest.approx(4.5)
    two = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert triplet_loss(two, -two, two, 0.5, torch.tensor([True, False])).item() == pytest.approx(4.5)
    with pytest.raises(ValueError):
        tiny_method("triplet", margin=0.0)
    assert tiny_method("triplet").margin == 0.5  # the paper's margin by default


def test_triplet_trains_only_the_added_layer() -> None:
    from maskgen.training.trainer import apply_freeze

    method = tiny_method("triplet")
    assert apply_freeze(method, ["neck"]) == ["neck.0.weight", "neck.0.bias", "neck.1.weight", "neck.1.bias"]
    before = {k: v.clone() for k, v in method.state_dict().items()}
    train_steps(method, random_batch(repeat=False), steps=2)
    after = method.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("backbone.")
               and "running" not in k and "num_batches" not in k)
    assert not torch.equal(before["neck.0.weight"], after["neck.0.weight"])


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "methods").glob("*.yaml")), ids=lambda p: p.stem)
def test_method_configs_resolve_and_build(path: Path) -> None:
    config_mod = pytest.importorskip("maskgen.training.config")
    config = config_mod.resolve_config(path, shards="unused-{000000..000001}.tar")
    # capped sizes: the config's model and method with a tiny width where the model allows it
    options = dict(config.get("model_options") or {})
    if config["model"].startswith(("mfr", "ressanet")):
        options.update(width=4, layers=[1, 1, 1, 1], input_size=SIZE)
    elif config["model"].startswith(("iresnet", "mobilefacenet")):
        options.update(input_size=SIZE)
    backbone = create_model(config["model"], embedding_size=16, **options)
    method = create_method(config["method"], backbone, 5, embedding_size=16, **(config.get("method_options") or {}))
    assert method.num_classes == 5


# ---------------------------------------------------------------- real LFW faces


@pytest.fixture(scope="session")
def lfw_faces(lfw_dir: Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """8 real faces of 4 identities, aligned by dlib landmarks, and their masked twins made by
    the maskgen masking library: (originals, masked, labels), normalised as in training."""
    masks = pytest.importorskip("maskgen.masks")
    if not all(hasattr(masks, n) for n in ("mask_face", "MaskSpec", "detect_faces", "align_face")):
        pytest.skip("the masking library does not export mask_face/detect_faces yet")
    from maskgen.masks.imageio import load_image

    people = sorted(p for p in lfw_dir.iterdir() if p.is_dir() and len(list(p.glob("*.jpg"))) >= 2)
    origs, maskeds, labels = [], [], []
    for person in people:
        got = []
        for path in sorted(person.glob("*.jpg"))[:4]:
            img, _ = load_image(path)
            faces = masks.detect_faces(img, backend="dlib") if img is not None else []
            if not faces:
                continue
            res = masks.mask_face(img, masks.MaskSpec(type="surgical"), seed=len(origs), faces=faces[:1])
            if res.image is None:
                continue
            lm = faces[0].landmarks
            got.append((masks.align_face(img, lm, size=112), masks.align_face(res.image, lm, size=112)))
            if len(got) == 2:
                break
        if len(got) == 2:
            for o, m in got:
                origs.append(o)
                maskeds.append(m)
                labels.append(len(labels) // 2)
        if len(labels) == 8:
            break
    assert len(labels) == 8

    def norm(images: list[np.ndarray]) -> torch.Tensor:
        x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float()
        x = torch.nn.functional.interpolate(x, size=(SIZE, SIZE), mode="area")  # 112 -> test size
        return (x / 255.0 - 0.5) / 0.5

    return norm(origs), norm(maskeds), torch.tensor(labels)


@pytest.mark.parametrize("name", METHODS)
def test_methods_train_on_real_lfw_faces(name: str, lfw_faces) -> None:
    orig, masked, labels = lfw_faces
    method = tiny_method(name)
    batch = make_batch(orig, masked, labels)
    losses = train_steps(method, batch, steps=5)
    assert min(losses[-2:]) < losses[0]
    if name == "bfm":
        method.eval()
        with torch.no_grad():
            emb = method.embed(orig).numpy()
            prob = method.predict_mask(orig).numpy()
        scores, _ = bfm_pair_scores(emb, emb, prob, prob)
        assert np.allclose(scores, 1.0, atol=1e-5)


@pytest.fixture(scope="module")
def twins_shards(tmp_path_factory, lfw_faces) -> Path:
    """The 8 real faces and their maskgen-masked twins as one twins-build shard."""
    import io
    import json
    import tarfile

    from PIL import Image

    orig, masked, labels = lfw_faces
    out = tmp_path_factory.mktemp("twins")
    (out / "shards").mkdir()

    def jpg(x: torch.Tensor) -> bytes:
        arr = ((x.permute(1, 2, 0).numpy() * 0.5 + 0.5) * 255).round().clip(0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=95)
        return buf.getvalue()

    with tarfile.open(out / "shards" / "train-000000.tar", "w", format=tarfile.USTAR_FORMAT) as tf:
        for i in range(len(labels)):
            key = f"{int(labels[i]):05d}-{i:05d}"
            members = {
                "jpg": jpg(masked[i] if i % 2 else orig[i]),
                "orig.jpg": jpg(orig[i]),
                "masked.jpg": jpg(masked[i]),
                "cls": str(int(labels[i])).encode(),
                "json": json.dumps({"masked": bool(i % 2)}).encode(),
            }
            for ext in sorted(members):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(members[ext])
                tf.addfile(info, io.BytesIO(members[ext]))
    meta = {"num_samples": len(labels), "num_classes": int(labels.max()) + 1, "twins": True,
            "shards": [{"name": "train-000000.tar", "num_samples": len(labels)}]}
    (out / "dataset.json").write_text(json.dumps(meta))
    return out


@pytest.mark.parametrize("name", METHODS)
def test_methods_run_in_the_trainer(name: str, twins_shards: Path, tmp_path: Path) -> None:
    """The method through ``maskgen.training.train`` (pairs mode where it needs pairs), then
    back from the checkpoint as an embedder."""
    training = pytest.importorskip("maskgen.training.trainer")
    from maskgen.training.checkpoint import load_model

    config = {
        "model": "mfr_iresnet18", "model_options": {k: v for k, v in TINY.items() if k != "embedding_size"},
        "embedding_size": EMB, "image_size": SIZE, "method": name,
        "train_mask_ratio": 0.5 if name == "multitask_arcface" else None,
        "batch_size": 4, "max_steps": 3, "num_workers": 0, "shuffle_buffer": 8, "lr": 0.01,
        "device": "cpu", "log_every": 1, "save_every": 0, "augment": {"flip": 0.0},
    }
    shards = str(twins_shards / "shards" / "*.tar")
    if name == "triplet":  # refuses to start from random weights; a short ArcFace run stands in
        from maskgen.training.config import ConfigError

        with pytest.raises(ConfigError, match="pretrained"):
            training.train(config, shards=shards, out=str(tmp_path), name=name)
        pre = training.train(dict(config, method="arcface", max_steps=1), shards=shards, out=str(tmp_path),
                             name="pretrained")
        config = dict(config, init_from=str(pre.checkpoint), freeze=["neck"])
    result = training.train(config, shards=shards, out=str(tmp_path), name=name)
    assert result.step == 3 and len(result.history) == 3
    assert all(np.isfinite(row["loss"]) for row in result.history)
    embedder, cfg = load_model(result.run_dir)
    assert cfg["method"] == name
    with torch.no_grad():
        emb = embedder(torch.zeros(2, 3, SIZE, SIZE))
    assert emb.shape == (2, 2 * EMB if name == "bfm" else EMB)
    assert embedder.has_mask_head == (name != "triplet")
    assert embedder.protocol == ("bfm" if name == "bfm" else "cosine")


def test_method_configs_follow_their_papers() -> None:
    """The values the papers state, read from the shipped configs (differences: docs/methods.md)."""
    from maskgen.training.config import resolve_config
    from maskgen.training.schedules import build_schedule

    def cfg(name: str) -> dict:
        return resolve_config(ROOT / "configs" / "methods" / f"{name}.yaml", shards="x.tar")

    qi = cfg("qi2021_mfr")
    assert (qi["warmup_epochs"], qi["epochs"], qi["train_mask_ratio"]) == (0.1, 24, 0.1)
    lr = build_schedule(qi, 100, 2400)
    assert lr(0) < 0.02 and lr(10) == pytest.approx(0.1)  # 0.1 epoch of warm-up
    assert lr(10 + 1599) < 1e-4 and lr(10 + 1600) == pytest.approx(0.1)  # the minimum at 16 epochs, then a cycle
    bfm = cfg("huang_bfm")
    assert bfm["method_options"]["guided_stop_grad"] is False and method_class("bfm")  # Eq. 4
    assert (bfm["schedule"], bfm["milestones"], bfm["epochs"], bfm["gamma"]) == ("step", [30.0, 60.0, 90.0], 100, 0.1)
    assert tiny_method("bfm").guided_stop_grad is False  # the method's default too
    sharma = cfg("sharma_triplet")
    assert sharma["method_options"]["margin"] == 0.5 and sharma["lr"] == 0.01 and sharma["freeze"] == ["neck"]
    assert method_class("triplet").needs_pretrained
    montero = cfg("montero_multitask_arcface")
    assert montero["model_options"]["dropout"] > 0 and montero["mask_choice_per_epoch"] is True
    gao = cfg("gao_ressanet")
    assert gao["model"] == "ressanet" and cfg("gao_ressanet100_partialfc")["model"] == "ressanet100"


def test_multitask_mask_head_reads_the_features_after_dropout() -> None:
    torch.manual_seed(0)
    backbone = create_model("iresnet18", embedding_size=EMB, input_size=SIZE, dropout=0.5)
    method = create_method("multitask_arcface", backbone, 4, embedding_size=EMB).train()
    seen = []
    method.mask_head.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    method(random_batch())
    dropped = float((seen[0] == 0).float().mean())
    assert 0.35 < dropped < 0.65  # half the features zeroed: the head sits after the dropout


@pytest.mark.parametrize("name", ["multitask_arcface", "bfm"])
def test_export_keeps_the_mask_head_as_a_second_output(name: str, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    import onnx

    from maskgen.training.export import export_onnx, onnx_check

    method = tiny_method(name).eval()
    path = export_onnx(method, tmp_path / "m.onnx", input_size=SIZE)
    model = onnx.load(str(path))
    assert [o.name for o in model.graph.output] == ["embedding", "mask_logits"]
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["maskgen.protocol"] == ("bfm" if name == "bfm" else "cosine")
    got = onnx_check(path, method, torch.randn(3, 3, SIZE, SIZE))
    assert got["cosine_min"] > 0.999 and got["mask_prob_max_diff"] < 1e-4
