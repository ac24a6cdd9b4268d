"""timm EfficientNet-B0 (depthwise convs, squeeze-excite, SiLU), a 256-px image, random weights."""

import timm
import torch


def make_model():
    torch.manual_seed(0)
    return timm.create_model("efficientnet_b0", pretrained=False, num_classes=10).eval()


def make_inputs():
    return (torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(0)),)


def dynamic_shapes():
    # the total stride is 32 px
    h, w = torch.export.Dim("h32", min=4, max=8), torch.export.Dim("w32", min=4, max=8)
    return {"x": {2: 32 * h, 3: 32 * w}}
