"""ResNet-18 with a small-image stem, and its width-16 preset.

Shapes: ``B`` batch, ``C`` channels, ``H × W`` image, ``h × w`` last feature map, ``D`` feature
dimension (``8 · width``).

The small-image stem is the official ``maxpool=False`` variant (design reference §2.1): a 3×3
stride-1 convolution and no max-pool, so a 32×32 image gives a 4×4 last feature map; the
ImageNet stem (7×7 stride 2 + max-pool) is ``small_image_stem=False``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["PRESETS", "BasicBlock", "ResNet", "build_backbone", "resnet18"]


class BasicBlock(nn.Module):
    """Two 3×3 convolutions with batch norm and an identity (or 1×1 projection) shortcut."""

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride, bias=False), nn.BatchNorm2d(channels)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """A CIFAR-style ResNet backbone (no classifier).

    Args:
        layers: BasicBlocks per stage (ResNet-18: (2, 2, 2, 2)).
        width: channels of the first stage (64 for ResNet-18; stages double it).
        small_image_stem: 3×3 stride-1 stem without max-pool (CIFAR/STL); else the ImageNet stem.
        in_channels: image channels.
    """

    def __init__(
        self,
        layers: Sequence[int] = (2, 2, 2, 2),
        width: int = 64,
        small_image_stem: bool = True,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if width < 1 or not layers or min(layers) < 1:
            raise ValueError(f"bad ResNet shape: layers={tuple(layers)}, width={width}")
        self.config = {
            "layers": list(layers),
            "width": width,
            "small_image_stem": small_image_stem,
            "in_channels": in_channels,
        }
        if small_image_stem:
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, width, 3, 1, 1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            )
        else:
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, width, 7, 2, 3, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(3, 2, 1),
            )
        stages = []
        channels = width
        for index, blocks in enumerate(layers):
            out_channels = width * 2**index
            stride = 1 if index == 0 else 2
            stage = [BasicBlock(channels, out_channels, stride)]
            stage += [BasicBlock(out_channels, out_channels) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*stage))
            channels = out_channels
        self.stages = nn.Sequential(*stages)
        self.feature_dim = channels
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x_BCHW: Tensor) -> Tensor:
        """The last stage's (post-ReLU) feature map ``(B, D, h, w)`` (used for localisation)."""
        return self.stages(self.stem(x_BCHW))

    def forward(self, x_BCHW: Tensor) -> Tensor:
        """Globally average-pooled features ``(B, D)``."""
        return self.forward_features(x_BCHW).mean(dim=(2, 3))


def resnet18(width: int = 64, small_image_stem: bool = True, in_channels: int = 3) -> ResNet:
    """ResNet-18 (11.2 M parameters at width 64; 0.70 M at width 16)."""
    return ResNet((2, 2, 2, 2), width, small_image_stem, in_channels)


#: Backbone presets by name: ``resnet18`` (paper), ``resnet18-w16`` (CPU benchmarks and demos)
#: and ``tiny`` (one block per stage, width 8: unit tests and the tour only).
PRESETS: dict[str, dict[str, object]] = {
    "resnet18": {"layers": (2, 2, 2, 2), "width": 64},
    "resnet18-w16": {"layers": (2, 2, 2, 2), "width": 16},
    "tiny": {"layers": (1, 1, 1, 1), "width": 8},
}


def build_backbone(name: str, small_image_stem: bool = True) -> ResNet:
    """A backbone preset by name (see :data:`PRESETS`).

    Raises:
        ValueError: unknown name.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown backbone {name!r}; expected one of {sorted(PRESETS)}")
    preset = PRESETS[name]
    return ResNet(preset["layers"], preset["width"], small_image_stem)  # type: ignore[arg-type]
