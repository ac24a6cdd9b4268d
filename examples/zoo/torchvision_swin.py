"""torchvision Swin Transformer (tiny layout, fewer blocks), a 384-px image, random weights."""

import torch
from torchvision.models.swin_transformer import SwinTransformer


def make_model():
    torch.manual_seed(0)
    return SwinTransformer(
        patch_size=[4, 4], embed_dim=32, depths=[2, 2], num_heads=[2, 4], window_size=[8, 8],
        num_classes=10,
    ).eval()  # fmt: skip


def make_inputs():
    return (torch.randn(1, 3, 384, 384, generator=torch.Generator().manual_seed(0)),)


def dynamic_shapes():
    # 8-px patches after the merge, 8-patch windows: a multiple of 64 px
    h, w = torch.export.Dim("h64", min=2, max=6), torch.export.Dim("w64", min=2, max=6)
    return {"x": {2: 64 * h, 3: 64 * w}}
