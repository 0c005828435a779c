"""ResSaNet (Gao et al.): an IResNet with plain IBasic blocks in stage 1, SE-IBasic_F blocks
(flexible ReLU) in stages 2-3, and IBSA blocks in stage 4, which "substitute the convolutional
layer with the Multi-head Self-attention (MHSA) block" (BoTNet's MHSA, relative positions).

Why: the convolutional stages keep the strong local texture features of an IResNet, FReLU
gives each activation a spatial context (so a unit can look past the mask edge), and
self-attention over the final 7x7 map lets the visible upper face inform every position.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from maskgen.training.models.iresnet import EmbeddingHead, IBasicBlock
from maskgen.training.models.mfr import SqueezeExcite, init_weights
from maskgen.training.models.registry import register_model


class FReLU(nn.Module):
    """Funnel / flexible ReLU (Ma et al. 2020): max(x, BN(DWConv3x3(x)))."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False)
        self.bn = nn.BatchNorm2d(channels, eps=1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.maximum(x, self.bn(self.conv(x)))


class SEIBasicFBlock(nn.Module):
    """IBasicBlock with FReLU in place of PReLU and SE on the residual branch."""

    def __init__(
        self, in_channels: int, out_channels: int, stride: int = 1, se_reduction: int = 16
    ) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels, eps=1e-5)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels, eps=1e-5)
        self.act = FReLU(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels, eps=1e-5)
        self.se = SqueezeExcite(out_channels, se_reduction)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels, eps=1e-5),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.act(self.bn2(self.conv1(self.bn1(x))))
        out = self.se(self.bn3(self.conv2(out)))
        return out + identity


class RelativeMHSA(nn.Module):
    """Multi-head self-attention over a feature map with 2-D relative position logits (the MHSA
    of BoTNet, which the IBSA block puts where the IBasic block has a 3x3 convolution).

    q, k, v are 1x1 projections; each query adds ``q . r_h[dy] + q . r_w[dx]`` to its content
    logits, where ``dy``, ``dx`` are the key's offsets, so attention knows *where* a cue lies
    relative to the query (the eyes above a mask) without absolute positions.
    """

    def __init__(self, channels: int, side: int, heads: int = 4) -> None:
        super().__init__()
        if channels % heads:
            raise ValueError(f"{channels} channels do not split into {heads} heads")
        self.heads, self.side = heads, side
        self.dim = channels // heads
        self.qkv = nn.Conv2d(channels, 3 * channels, 1, bias=False)
        self.rel_h = nn.Parameter(torch.randn(2 * side - 1, self.dim) * self.dim ** -0.5)
        self.rel_w = nn.Parameter(torch.randn(2 * side - 1, self.dim) * self.dim ** -0.5)
        offsets = torch.arange(side)[None, :] - torch.arange(side)[:, None] + side - 1  # [query, key]
        self.register_buffer("offsets", offsets, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        if h != self.side or w != self.side:
            raise ValueError(f"MHSA built for a {self.side}x{self.side} map, got {h}x{w} (input_size option)")
        q, k, v = self.qkv(x).reshape(b, 3, self.heads, self.dim, h * w).unbind(1)
        q = q * self.dim ** -0.5
        content = torch.einsum("bndi,bndj->bnij", q, k)  # (B, heads, HW, HW)
        qs = q.reshape(b, self.heads, self.dim, h, w)
        rh = self.rel_h[self.offsets]  # (H query, H key, d)
        rw = self.rel_w[self.offsets]
        lh = torch.einsum("bndyx,yYd->bnyxY", qs, rh)  # (B, n, Hq, Wq, Hk)
        lw = torch.einsum("bndyx,xXd->bnyxX", qs, rw)  # (B, n, Hq, Wq, Wk)
        position = (lh[..., :, None] + lw[..., None, :]).reshape(b, self.heads, h * w, h * w)
        attn = torch.softmax(content + position, dim=-1)
        out = torch.einsum("bnij,bndj->bndi", attn, v)
        return out.reshape(b, c, h, w)


class IBSABlock(nn.Module):
    """IBasic block with its second 3x3 convolution replaced by MHSA (the paper's IBSA block):
    BN -> conv3x3 -> BN -> PReLU -> MHSA (-> 2x2 average pool where the stage strides) -> BN,
    plus the shortcut (1x1 conv + BN where the shape changes)."""

    def __init__(self, in_channels: int, out_channels: int, side: int, stride: int = 1, heads: int = 4) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels, eps=1e-5)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels, eps=1e-5)
        self.prelu = nn.PReLU(out_channels)
        self.mhsa = RelativeMHSA(out_channels, side, heads)
        self.pool: nn.Module = nn.AvgPool2d(2, 2) if stride == 2 else nn.Identity()
        self.bn3 = nn.BatchNorm2d(out_channels, eps=1e-5)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels, eps=1e-5),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.prelu(self.bn2(self.conv1(self.bn1(x))))
        return self.bn3(self.pool(self.mhsa(out))) + identity


class ResSaNet(EmbeddingHead, nn.Module):
    """IResNet layout (3x3 stem at 112, four stride-2 stages, BN-dropout-FC-BN output):
    stage 1 plain IBasic, stages 2-3 SE-IBasic_F, stage 4 IBSA (MHSA in place of the conv)."""

    def __init__(
        self,
        layers: Sequence[int] = (3, 4, 14, 3),
        width: int = 64,
        embedding_size: int = 512,
        input_size: int = 112,
        dropout: float = 0.0,
        se_reduction: int = 16,
        heads: int = 4,
    ) -> None:
        super().__init__()
        if len(layers) != 4 or min(layers) < 1:
            raise ValueError(f"layers needs four positive entries, got {layers}")
        if input_size % 16:
            raise ValueError(f"input_size must be a multiple of 16, got {input_size}")
        c1, c2, c3, c4 = width, width * 2, width * 4, width * 8
        self.conv1 = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width, eps=1e-5)
        self.prelu = nn.PReLU(width)
        self.layer1 = nn.Sequential(
            IBasicBlock(width, c1, 2, _shortcut(width, c1, 2)),
            *[IBasicBlock(c1, c1) for _ in range(layers[0] - 1)],
        )
        self.layer2 = nn.Sequential(
            SEIBasicFBlock(c1, c2, 2, se_reduction),
            *[SEIBasicFBlock(c2, c2, 1, se_reduction) for _ in range(layers[1] - 1)],
        )
        self.layer3 = nn.Sequential(
            SEIBasicFBlock(c2, c3, 2, se_reduction),
            *[SEIBasicFBlock(c3, c3, 1, se_reduction) for _ in range(layers[2] - 1)],
        )
        side = input_size // 16
        self.layer4 = nn.Sequential(
            IBSABlock(c3, c4, 2 * side, 2, heads),  # attention on the 14x14 map, then pooled to 7x7
            *[IBSABlock(c4, c4, side, 1, heads) for _ in range(layers[3] - 1)],
        )
        self._make_head(c4, side, embedding_size, dropout)
        self.embedding_size = embedding_size
        self.input_size = input_size
        init_weights(self)


def _shortcut(in_channels: int, out_channels: int, stride: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                         nn.BatchNorm2d(out_channels, eps=1e-5))


@register_model("ressanet")
def ressanet(**options) -> ResSaNet:
    """ResSaNet on the IResNet-50 depth (3, 4, 14, 3)."""
    return ResSaNet(layers=options.pop("layers", (3, 4, 14, 3)), **options)


@register_model("ressanet100")
def ressanet100(**options) -> ResSaNet:
    """ResSaNet on the IResNet-100 depth (3, 13, 30, 3)."""
    return ResSaNet(layers=options.pop("layers", (3, 13, 30, 3)), **options)


@register_model("ressanet_small")
def ressanet_small(**options) -> ResSaNet:
    """One block per stage at a quarter of the width: for tests and CPU experiments."""
    options.setdefault("width", 16)
    return ResSaNet(layers=options.pop("layers", (1, 1, 1, 1)), **options)
