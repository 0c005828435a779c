"""The Qi et al. (ICCV 2021 MFR) backbone: an IResNet with a space-to-depth stem unit,
Squeeze-and-Excitation in every block and DropBlock in the last two stages.

Why these parts: the stem unit keeps the information that a strided first convolution
throws away (pixel-unshuffle moves it into channels), SE re-weights channels so the
unoccluded upper face can dominate, and DropBlock removes contiguous regions of the
feature maps, which is what a mask does to the face.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from maskgen.training.models.iresnet import EmbeddingHead
from maskgen.training.models.registry import register_model


class StemUnit(nn.Module):
    """Two summed branches, each downsampling 4x: avg-pool 2x2 -> conv 2x2 s2, and
    pixel-unshuffle(2) (4x channels) -> conv 3x3 s2 p1; each followed by BN + PReLU."""

    def __init__(self, in_channels: int = 3, out_channels: int = 64) -> None:
        super().__init__()
        self.pool_branch = nn.Sequential(
            nn.AvgPool2d(2),
            nn.Conv2d(in_channels, out_channels, 2, stride=2, bias=False),
            nn.BatchNorm2d(out_channels, eps=1e-5),
            nn.PReLU(out_channels),
        )
        self.unshuffle_branch = nn.Sequential(
            nn.PixelUnshuffle(2),
            nn.Conv2d(in_channels * 4, out_channels, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(out_channels, eps=1e-5),
            nn.PReLU(out_channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool_branch(x) + self.unshuffle_branch(x)


class SqueezeExcite(nn.Module):
    """Channel attention (Hu et al.): global average pool -> bottleneck MLP -> sigmoid gate."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(channels // reduction, 4)
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean(dim=(2, 3), keepdim=True)
        return x * torch.sigmoid(self.fc2(self.act(self.fc1(s))))


class DropBlock2d(nn.Module):
    """DropBlock (Ghiasi et al. 2018): zero square blocks of a feature map while training.

    ``drop_prob`` is a plain attribute so a schedule can ramp it up during training
    (the paper ramps linearly from 0); the module is the identity in eval mode.
    """

    def __init__(self, drop_prob: float = 0.1, block_size: int = 3) -> None:
        super().__init__()
        if not 0.0 <= drop_prob < 1.0:
            raise ValueError(f"drop_prob must be in [0, 1), got {drop_prob}")
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        self.drop_prob = drop_prob
        self.block_size = block_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.drop_prob == 0.0:
            return x
        _, _, h, w = x.shape
        bs = min(self.block_size, h, w)
        # gamma so that the expected dropped fraction equals drop_prob (paper, eq. 1)
        valid = (h - bs + 1) * (w - bs + 1)
        gamma = self.drop_prob * h * w / (bs * bs) / valid
        # sample block centres only where a full block fits, then grow them to blocks
        centres = torch.zeros_like(x)
        inner = torch.rand(
            (x.shape[0], x.shape[1], h - bs + 1, w - bs + 1), device=x.device, dtype=x.dtype
        ) < gamma
        top = (bs - 1) // 2
        centres[:, :, top : top + h - bs + 1, top : top + w - bs + 1] = inner.to(x.dtype)
        block_mask = 1.0 - F.max_pool2d(centres, kernel_size=bs, stride=1, padding=bs // 2)[
            :, :, :h, :w
        ]
        keep = block_mask.sum().clamp(min=1.0)
        return x * block_mask * (block_mask.numel() / keep)


class SEIBasicBlock(nn.Module):
    """insightface IBasicBlock (BN-conv-BN-PReLU-conv-BN) with SE on the residual branch and
    optional DropBlock after the residual convolutions and after the skip connection."""

    expansion = 1

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        se_reduction: int = 16,
        dropblock: float = 0.0,
        block_size: int = 3,
    ) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels, eps=1e-5)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels, eps=1e-5)
        self.prelu = nn.PReLU(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels, eps=1e-5)
        self.se = SqueezeExcite(out_channels, se_reduction) if se_reduction > 0 else nn.Identity()
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels, eps=1e-5),
            )
        self.drop_conv = DropBlock2d(dropblock, block_size) if dropblock > 0 else nn.Identity()
        self.drop_skip = DropBlock2d(dropblock, block_size) if dropblock > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.bn1(x)
        out = self.prelu(self.bn2(self.conv1(out)))
        out = self.bn3(self.conv2(out))
        out = self.drop_conv(self.se(out))
        return out + self.drop_skip(identity)


class MFRIResNet(EmbeddingHead, nn.Module):
    """IResNet with the Qi et al. stem unit, SE blocks and DropBlock in stages 3-4.

    The stem downsamples 4x (112 -> 28), so stage strides default to (1, 1, 2, 2) and the
    last feature map stays 7x7 as in the insightface IResNet (FC input 512*7*7).
    """

    def __init__(
        self,
        layers: Sequence[int] = (3, 4, 14, 3),
        width: int = 64,
        embedding_size: int = 512,
        input_size: int = 112,
        dropout: float = 0.0,
        se_reduction: int = 16,
        dropblock: float = 0.1,
        block_size: int = 3,
        stage_strides: Sequence[int] = (1, 1, 2, 2),
    ) -> None:
        super().__init__()
        if len(layers) != 4 or len(stage_strides) != 4:
            raise ValueError("layers and stage_strides need four entries (one per stage)")
        if input_size % 4:
            raise ValueError(f"input_size must be a multiple of 4, got {input_size}")
        channels = [width, width * 2, width * 4, width * 8]
        self.stem = StemUnit(3, width)
        stages = []
        in_ch = width
        for i, (n, ch, s) in enumerate(zip(layers, channels, stage_strides)):
            drop = dropblock if i >= 2 else 0.0  # the last two stages only
            blocks = [SEIBasicBlock(in_ch, ch, s, se_reduction, drop, block_size)]
            blocks += [
                SEIBasicBlock(ch, ch, 1, se_reduction, drop, block_size) for _ in range(n - 1)
            ]
            stages.append(nn.Sequential(*blocks))
            in_ch = ch
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        side = input_size // 4
        for s in stage_strides:
            side = (side - 1) // s + 1
        self._make_head(in_ch, side, embedding_size, dropout)
        self.embedding_size = embedding_size
        self.input_size = input_size
        init_weights(self)

    def set_dropblock(self, drop_prob: float) -> None:
        """Set every DropBlock's probability (for a linear ramp over training)."""
        for m in self.modules():
            if isinstance(m, DropBlock2d):
                m.drop_prob = drop_prob

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.stem(x)


def init_weights(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, 0, 0.1)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)


@register_model("mfr_iresnet18")
def mfr_iresnet18(**options) -> MFRIResNet:
    """Qi et al. variant of IResNet-18 (options: width, embedding_size, dropblock, ...)."""
    return MFRIResNet(layers=options.pop("layers", (2, 2, 2, 2)), **options)


@register_model("mfr_iresnet50")
def mfr_iresnet50(**options) -> MFRIResNet:
    """Qi et al. variant of IResNet-50, the competition backbone."""
    return MFRIResNet(layers=options.pop("layers", (3, 4, 14, 3)), **options)


@register_model("mfr_iresnet100")
def mfr_iresnet100(**options) -> MFRIResNet:
    """Qi et al. variant of IResNet-100."""
    return MFRIResNet(layers=options.pop("layers", (3, 13, 30, 3)), **options)
