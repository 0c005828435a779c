"""IResNet backbones in the insightface arcface_torch layout.

Same module names and shapes as arcface_torch's ``iresnet.py`` so its published weights load with
``init_from``: 112x112 RGB in, BN-PReLU stem, four stages of improved basic blocks (stride 2 each),
then the BN-dropout-FC-BN "features" head giving the embedding.
"""

from __future__ import annotations

import torch
from torch import nn

from maskgen.training.models.registry import register_model

LAYERS: dict[str, tuple[int, int, int, int]] = {
    "iresnet18": (2, 2, 2, 2),
    "iresnet34": (3, 4, 6, 3),
    "iresnet50": (3, 4, 14, 3),
    "iresnet100": (3, 13, 30, 3),
    "iresnet200": (6, 26, 60, 6),
}


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class IBasicBlock(nn.Module):
    """BN-conv-BN-PReLU-conv-BN with an identity (or 1x1 conv) shortcut."""

    expansion = 1

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=1e-05)
        self.conv1 = conv3x3(inplanes, planes)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-05)
        self.prelu = nn.PReLU(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes, eps=1e-05)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return out + identity


class EmbeddingHead:
    """The insightface embedding head of the IResNet family (mixed into an nn.Module):
    BN -> dropout -> flatten -> FC -> BN with a frozen unit scale, run in fp32 so fp16 cannot
    overflow it. Parameter names (bn2, dropout, fc, features) follow insightface's layout."""

    def _make_head(self, channels: int, side: int, embedding_size: int, dropout: float) -> None:
        self.bn2 = nn.BatchNorm2d(channels, eps=1e-05)
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(channels * side * side, embedding_size)
        self.features = nn.BatchNorm1d(embedding_size, eps=1e-05)
        nn.init.constant_(self.features.weight, 1.0)
        self.features.weight.requires_grad = False

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.prelu(self.bn1(self.conv1(x)))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The flattened feature map after the dropout, before the FC layer (for auxiliary heads)."""
        x = self._stem(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.dropout(torch.flatten(self.bn2(x), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(x)
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self.features(self.fc(x.float()))


class IResNet(EmbeddingHead, nn.Module):
    """Improved ResNet for 112x112 faces; ``input_size`` (multiple of 16) only for small tests."""

    def __init__(
        self,
        layers: tuple[int, int, int, int],
        embedding_size: int = 512,
        dropout: float = 0.0,
        zero_init_residual: bool = False,
        input_size: int = 112,
    ) -> None:
        super().__init__()
        if input_size % 16:
            raise ValueError(f"input_size must be a multiple of 16, got {input_size}")
        self.embedding_size = embedding_size
        self.input_size = input_size
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64, eps=1e-05)
        self.prelu = nn.PReLU(64)
        self.layer1 = self._make_layer(64, layers[0], stride=2)
        self.layer2 = self._make_layer(128, layers[1], stride=2)
        self.layer3 = self._make_layer(256, layers[2], stride=2)
        self.layer4 = self._make_layer(512, layers[3], stride=2)
        self._make_head(512, input_size // 16, embedding_size, dropout)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0, 0.1)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, IBasicBlock):
                    nn.init.constant_(m.bn3.weight, 0)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes, stride), nn.BatchNorm2d(planes, eps=1e-05)
            )
        layers = [IBasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [IBasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)


def _factory(name: str):
    def build(
        embedding_size: int = 512,
        dropout: float = 0.0,
        zero_init_residual: bool = False,
        input_size: int = 112,
    ) -> IResNet:
        return IResNet(LAYERS[name], embedding_size, dropout, zero_init_residual, input_size)

    build.__name__ = name
    build.__doc__ = f"{name}: IResNet with stage depths {LAYERS[name]}."
    return register_model(name)(build)


for _name in LAYERS:
    _factory(_name)
