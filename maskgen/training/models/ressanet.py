"""ResSaNet (Gao et al.): an IResNet whose middle stages use SE-IBasic_F blocks (flexible
ReLU) and whose last stage uses IBasic Transformer blocks (MBConv + multi-head
self-attention).

Why: the convolutional stages keep the strong local texture features of an IResNet, FReLU
gives each activation a spatial context (so a unit can look past the mask edge), and
self-attention over the final 7x7 map lets the visible upper face inform every position.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from maskgen.training.models.mfr import SEIBasicBlock, SqueezeExcite, _init_weights
from maskgen.training.models.iresnet import EmbeddingHead
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


class MBConv(nn.Module):
    """Inverted residual branch: 1x1 expand -> depthwise 3x3 (stride) -> SE -> 1x1 project."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, expand: int = 4) -> None:
        super().__init__()
        hidden = in_channels * expand
        self.body = nn.Sequential(
            nn.BatchNorm2d(in_channels, eps=1e-5),
            nn.Conv2d(in_channels, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden, eps=1e-5),
            nn.PReLU(hidden),
            nn.Conv2d(hidden, hidden, 3, stride=stride, padding=1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden, eps=1e-5),
            nn.PReLU(hidden),
            SqueezeExcite(hidden, 16),
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels, eps=1e-5),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class IBasicTransformerBlock(nn.Module):
    """Residual MBConv (which carries the stage's stride) followed by residual multi-head
    self-attention over the spatial positions, with a learned position embedding."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        side: int,
        stride: int = 1,
        heads: int | None = None,
        expand: int = 4,
    ) -> None:
        super().__init__()
        self.mbconv = MBConv(in_channels, out_channels, stride, expand)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels, eps=1e-5),
            )
        heads = heads or max(1, out_channels // 64)
        if out_channels % heads:
            raise ValueError(f"{out_channels} channels do not split into {heads} heads")
        self.norm = nn.LayerNorm(out_channels)
        self.pos = nn.Parameter(torch.zeros(1, side * side, out_channels))
        nn.init.trunc_normal_(self.pos, std=0.02)
        self.attn = nn.MultiheadAttention(out_channels, heads, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        x = identity + self.mbconv(x)
        b, c, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)  # (B, HW, C)
        q = self.norm(tokens) + self.pos
        attended, _ = self.attn(q, q, q, need_weights=False)
        tokens = tokens + attended
        return tokens.transpose(1, 2).reshape(b, c, h, w)


class ResSaNet(EmbeddingHead, nn.Module):
    """IResNet layout (3x3 stem at 112, four stride-2 stages, BN-dropout-FC-BN output):
    stage 1 SE-IBasic, stages 2-3 SE-IBasic_F, stage 4 IBasic Transformer."""

    def __init__(
        self,
        layers: Sequence[int] = (3, 4, 14, 3),
        width: int = 64,
        embedding_size: int = 512,
        input_size: int = 112,
        dropout: float = 0.0,
        se_reduction: int = 16,
        heads: int | None = None,
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
            SEIBasicBlock(width, c1, 2, se_reduction),
            *[SEIBasicBlock(c1, c1, 1, se_reduction) for _ in range(layers[0] - 1)],
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
            IBasicTransformerBlock(c3, c4, side, 2, heads),
            *[IBasicTransformerBlock(c4, c4, side, 1, heads) for _ in range(layers[3] - 1)],
        )
        self._make_head(c4, side, embedding_size, dropout)
        self.embedding_size = embedding_size
        self.input_size = input_size
        _init_weights(self)


@register_model("ressanet")
def ressanet(**options) -> ResSaNet:
    """ResSaNet on the IResNet-50 depth (3, 4, 14, 3)."""
    return ResSaNet(layers=options.pop("layers", (3, 4, 14, 3)), **options)


@register_model("ressanet_small")
def ressanet_small(**options) -> ResSaNet:
    """One block per stage at a quarter of the width: for tests and CPU experiments."""
    options.setdefault("width", 16)
    return ResSaNet(layers=options.pop("layers", (1, 1, 1, 1)), **options)
