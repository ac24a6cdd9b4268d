"""timm EfficientNet-B0 (depthwise convs, squeeze-excite, SiLU), a 256-px image, random weights."""

import timm
import torch


def make_model():
    torch.manual_seed(0)
    return timm.create_model("efficientnet_b0", pretrained=False, num_classes=10).eval()


def make_inputs():
    return (torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(0)),)
