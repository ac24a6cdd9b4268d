"""torchvision EfficientNet-B0 (nested Sequentials), a 384-px image, random weights."""

import torch
from torchvision.models import efficientnet_b0


def make_model():
    torch.manual_seed(0)
    return efficientnet_b0(num_classes=10).eval()


def make_inputs():
    return (torch.randn(1, 3, 384, 384, generator=torch.Generator().manual_seed(0)),)


def dynamic_shapes():
    # the total stride is 32 px
    h, w = torch.export.Dim("h32", min=4, max=12), torch.export.Dim("w32", min=4, max=12)
    return {"x": {2: 32 * h, 3: 32 * w}}
