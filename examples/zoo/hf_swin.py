"""transformers Swin (windowed attention), a 512-px image, small widths, random weights."""

import torch
from transformers import SwinConfig, SwinModel


def make_model():
    torch.manual_seed(0)
    config = SwinConfig(
        image_size=512, patch_size=4, embed_dim=32, depths=[2, 2], num_heads=[2, 4],
        window_size=8,
    )  # fmt: skip
    return SwinModel(config, add_pooling_layer=False).eval()


def make_inputs():
    return (torch.randn(1, 3, 512, 512, generator=torch.Generator().manual_seed(0)),)


def dynamic_shapes():
    # 8-px patches after the merge, 8-patch windows: a multiple of 64 px
    h, w = torch.export.Dim("h64", min=2, max=8), torch.export.Dim("w64", min=2, max=8)
    return {"pixel_values": {2: 64 * h, 3: 64 * w}}
