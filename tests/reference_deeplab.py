"""An independent reference of the original DeepLabV3+ (torchvision ResNet + plain head).

Written from the architecture's published description and the original checkpoint's key
layout, using only torch and torchvision, so that the project's smp-based network can be
checked against it numerically.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet50, resnet101
from torchvision.models._utils import IntermediateLayerGetter


def _conv_bn_relu(cin: int, cout: int, kernel: int, dilation: int = 1) -> list[nn.Module]:
    padding = 0 if kernel == 1 else dilation
    return [nn.Conv2d(cin, cout, kernel, padding=padding, dilation=dilation, bias=False),
            nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class _Pooling(nn.Sequential):
    def __init__(self, cin: int, cout: int):
        super().__init__(nn.AdaptiveAvgPool2d(1), *_conv_bn_relu(cin, cout, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        return F.interpolate(super().forward(x), size=size, mode="bilinear", align_corners=False)


class _ASPP(nn.Module):
    def __init__(self, cin: int, rates: tuple[int, int, int], cout: int = 256):
        super().__init__()
        self.convs = nn.ModuleList([nn.Sequential(*_conv_bn_relu(cin, cout, 1))]
                                   + [nn.Sequential(*_conv_bn_relu(cin, cout, 3, r)) for r in rates]
                                   + [_Pooling(cin, cout)])
        self.project = nn.Sequential(*_conv_bn_relu(5 * cout, cout, 1), nn.Dropout(0.1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([branch(x) for branch in self.convs], dim=1))


class _Head(nn.Module):
    def __init__(self, cin: int, low_cin: int, num_classes: int, rates: tuple[int, int, int]):
        super().__init__()
        self.project = nn.Sequential(*_conv_bn_relu(low_cin, 48, 1))
        self.aspp = _ASPP(cin, rates)
        self.classifier = nn.Sequential(*_conv_bn_relu(304, 256, 3), nn.Conv2d(256, num_classes, 1))

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        low = self.project(features["low_level"])
        out = self.aspp(features["out"])
        out = F.interpolate(out, size=low.shape[2:], mode="bilinear", align_corners=False)
        return self.classifier(torch.cat([low, out], dim=1))


class ReferenceDeepLabV3Plus(nn.Module):
    """The original network: ``backbone`` (IntermediateLayerGetter) + ``classifier`` (head)."""

    def __init__(self, depth: int = 101, num_classes: int = 21, output_stride: int = 16):
        super().__init__()
        dilate = [False, output_stride == 8, True]
        resnet = (resnet101 if depth == 101 else resnet50)(weights=None, replace_stride_with_dilation=dilate)
        self.backbone = IntermediateLayerGetter(resnet, {"layer4": "out", "layer1": "low_level"})
        rates = (6, 12, 18) if output_stride == 16 else (12, 24, 36)
        self.classifier = _Head(2048, 256, num_classes, rates)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.classifier(self.backbone(x))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
