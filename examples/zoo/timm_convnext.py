"""timm ConvNeXt (depthwise 7x7 convs, LayerNorm), a 256-px image, small widths, random weights."""

import timm
import torch


def make_model():
    torch.manual_seed(0)
    return timm.create_model(
        "convnext_tiny", pretrained=False, num_classes=10, depths=(1, 1, 2, 1),
        dims=(32, 64, 128, 256),
    ).eval()  # fmt: skip


def make_inputs():
    return (torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(0)),)


def dynamic_shapes():
    # the total stride is 32 px
    h, w = torch.export.Dim("h32", min=4, max=8), torch.export.Dim("w32", min=4, max=8)
    return {"x": {2: 32 * h, 3: 32 * w}}
