"""Qi et al. MFR backbone and ResSaNet: layer behaviour, layout and a registry-wide smoke test."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from maskgen.training.models import create_model, list_models
from maskgen.training.models.mfr import DropBlock2d, MFRIResNet, SEIBasicBlock, SqueezeExcite, StemUnit
from maskgen.training.models.iresnet import IBasicBlock
from maskgen.training.models.ressanet import FReLU, IBSABlock, RelativeMHSA, ResSaNet, SEIBasicFBlock

TINY = {"width": 8, "layers": (1, 1, 1, 1), "embedding_size": 32}
MODELS = {
    "mfr_iresnet18": TINY,
    "mfr_iresnet50": TINY,
    "mfr_iresnet100": TINY,
    "ressanet": TINY,
    "ressanet_small": {"width": 8, "embedding_size": 32},
}


def test_registered() -> None:
    assert set(MODELS) <= set(list_models())


def test_stem_unit_downsamples_4x_with_two_branches() -> None:
    torch.manual_seed(0)
    stem = StemUnit(3, 16).eval()
    x = torch.randn(2, 3, 112, 112)
    y = stem(x)
    assert y.shape == (2, 16, 28, 28)
    assert torch.allclose(y, stem.pool_branch(x) + stem.unshuffle_branch(x))
    # the space-to-depth branch convolves 4x the input channels
    conv = stem.unshuffle_branch[1]
    assert isinstance(stem.unshuffle_branch[0], nn.PixelUnshuffle)
    assert conv.in_channels == 12 and conv.kernel_size == (3, 3) and conv.stride == (2, 2)
    assert stem.pool_branch[1].kernel_size == (2, 2) and stem.pool_branch[1].stride == (2, 2)


def test_dropblock_drops_blocks_at_the_requested_rate() -> None:
    torch.manual_seed(0)
    drop = DropBlock2d(drop_prob=0.2, block_size=3)
    x = torch.ones(32, 8, 14, 14)
    drop.eval()
    assert torch.equal(drop(x), x)
    drop.train()
    y = drop(x)
    zero = y == 0
    rate = zero.float().mean().item()
    assert 0.12 < rate < 0.28
    # kept activations are rescaled so the expected sum is unchanged
    assert abs(y.mean().item() - 1.0) < 0.05
    # dropped units come in blocks: an isolated zero (no zero 4-neighbour) cannot occur
    z = zero.float()
    pad = nn.functional.pad(z, (1, 1, 1, 1))
    neighbours = pad[..., :-2, 1:-1] + pad[..., 2:, 1:-1] + pad[..., 1:-1, :-2] + pad[..., 1:-1, 2:]
    assert not bool((zero & (neighbours == 0)).any())
    with pytest.raises(ValueError):
        DropBlock2d(drop_prob=1.0)


def test_squeeze_excite_gates_channels() -> None:
    se = SqueezeExcite(16, reduction=4)
    x = torch.rand(2, 16, 7, 7) + 0.1
    y = se(x)
    ratio = y / x
    assert y.shape == x.shape
    assert bool(((ratio > 0) & (ratio < 1)).all())
    # one gate per channel: constant over the spatial positions
    assert torch.allclose(ratio, ratio[..., :1, :1].expand_as(ratio), atol=1e-5)


def test_mfr_layout_dropblock_in_last_two_stages_and_se_everywhere() -> None:
    model = MFRIResNet(layers=(3, 4, 14, 3), width=4, embedding_size=16, dropblock=0.1)
    stages = [model.layer1, model.layer2, model.layer3, model.layer4]
    assert [len(s) for s in stages] == [3, 4, 14, 3]
    for i, stage in enumerate(stages):
        for block in stage:
            assert isinstance(block, SEIBasicBlock) and isinstance(block.se, SqueezeExcite)
            has_drop = isinstance(block.drop_conv, DropBlock2d) and isinstance(block.drop_skip, DropBlock2d)
            assert has_drop == (i >= 2)
    # 112 -> stem 28 -> strides (1, 1, 2, 2) -> 7x7 map, the insightface FC input layout
    assert model.fc.in_features == 32 * 7 * 7
    model.set_dropblock(0.05)
    assert all(m.drop_prob == 0.05 for m in model.modules() if isinstance(m, DropBlock2d))


def test_mfr_dropblock_only_acts_in_training() -> None:
    torch.manual_seed(0)
    model = create_model("mfr_iresnet18", **TINY, dropblock=0.3).eval()
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
        feats = model.forward_features(x)
    assert feats.shape == (2, model.fc.in_features)


def test_frelu_is_max_of_input_and_depthwise_path() -> None:
    act = FReLU(4).eval()
    x = torch.randn(2, 4, 9, 9)
    y = act(x)
    assert bool((y >= x).all())
    assert torch.allclose(y, torch.maximum(x, act.bn(act.conv(x))))
    assert act.conv.groups == 4


def test_ressanet_layout() -> None:
    """The paper's table: plain IBasic in stage 1, SE-IBasic_F in 2-3, IBSA (MHSA in place of
    the convolution) in 4; ResSaNet-100 on the IResNet-100 depths."""
    model = ResSaNet(layers=(1, 2, 2, 2), width=8, embedding_size=16)
    assert all(type(b) is IBasicBlock for b in model.layer1)  # no SE in stage 1
    assert all(isinstance(b, SEIBasicFBlock) for b in list(model.layer2) + list(model.layer3))
    assert all(isinstance(b, IBSABlock) for b in model.layer4)
    first, second = model.layer4
    assert isinstance(first.mhsa, RelativeMHSA) and not hasattr(first, "conv2")  # the conv is replaced
    assert first.mhsa.side == 14 and second.mhsa.side == 7  # attention before the stride-2 pool
    assert first.mhsa.rel_h.shape == (27, 64 // 4)  # relative offsets -13..13 per head dim
    assert model.fc.in_features == 64 * 7 * 7
    depths = [len(getattr(create_model("ressanet100", width=4, embedding_size=8), f"layer{i}")) for i in (1, 2, 3, 4)]
    assert depths == [3, 13, 30, 3]


def test_relative_mhsa_uses_positions() -> None:
    """Shifting the content of a map changes the output beyond a shift: positions matter; a
    uniform map gives a uniform output (content-only attention over equal keys)."""
    torch.manual_seed(0)
    mhsa = RelativeMHSA(8, 5, heads=2)
    x = torch.randn(1, 8, 5, 5)
    y = mhsa(x)
    assert y.shape == x.shape
    with torch.no_grad():
        mhsa.rel_h.zero_()
        mhsa.rel_w.zero_()
    flat = torch.ones(1, 8, 5, 5)
    out = mhsa(flat)
    assert torch.allclose(out, out[..., :1, :1].expand_as(out), atol=1e-6)
    with pytest.raises(ValueError, match="5x5"):
        mhsa(torch.randn(1, 8, 6, 6))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_forward_backward_capped_size(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, **MODELS[name])
    x = torch.randn(3, 3, 112, 112)
    y = model(x)
    assert y.shape == (3, 32)
    y.pow(2).mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
