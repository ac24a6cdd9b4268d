"""timm Swin transformer (shifted windows), a 256-px image, small widths, random weights."""

import timm
import torch

FIXED_SIZE = "timm's PatchEmbed asserts the image is 256 px (patch_embed.py:124, strict_img_size)"


def make_model():
    torch.manual_seed(0)
    return timm.create_model(
        "swin_tiny_patch4_window7_224", pretrained=False, num_classes=10, img_size=256,
        embed_dim=32, depths=(2, 2), num_heads=(2, 4), window_size=8,
    ).eval()  # fmt: skip


def make_inputs():
    return (torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(0)),)
