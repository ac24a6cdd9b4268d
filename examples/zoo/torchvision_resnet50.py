"""torchvision ResNet-50 on a 512-px image, random weights."""

import torch
from torchvision.models import resnet50


def make_model():
    torch.manual_seed(0)
    return resnet50(num_classes=10).eval()


def make_inputs():
    return (torch.randn(1, 3, 512, 512, generator=torch.Generator().manual_seed(0)),)


def dynamic_shapes():
    # any size: odd ones round down at each stride
    h, w = torch.export.Dim("height", min=64, max=1024), torch.export.Dim("width", min=64, max=1024)
    return {"x": {2: h, 3: w}}
