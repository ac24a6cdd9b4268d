"""torchvision ResNet-50 on a 512-px image, random weights."""

import torch
from torchvision.models import resnet50


def make_model():
    torch.manual_seed(0)
    return resnet50(num_classes=10).eval()


def make_inputs():
    return (torch.randn(1, 3, 512, 512, generator=torch.Generator().manual_seed(0)),)


def dynamic_shapes():
    # the total stride is 32 px
    h, w = torch.export.Dim("h32", min=4, max=16), torch.export.Dim("w32", min=4, max=16)
    return {"x": {2: 32 * h, 3: 32 * w}}
