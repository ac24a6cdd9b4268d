"""torchvision VisionTransformer, a 512-px image (1024 patches), small widths, random weights."""

import torch
from torchvision.models.vision_transformer import VisionTransformer

FIXED_SIZE = "torchvision ViT asserts the image is 512 px (vision_transformer.py:271)"


def make_model():
    torch.manual_seed(0)
    return VisionTransformer(
        image_size=512, patch_size=16, num_layers=2, num_heads=4, hidden_dim=128, mlp_dim=512,
        num_classes=10,
    ).eval()  # fmt: skip


def make_inputs():
    return (torch.randn(1, 3, 512, 512, generator=torch.Generator().manual_seed(0)),)
