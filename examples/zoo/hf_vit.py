"""transformers ViT, a 512-px image (1024 patches), random weights."""

import torch
from transformers import ViTConfig, ViTModel

FIXED_SIZE = "ViT's position table fixes the image at 512 px (modeling_vit.py:153)"


def make_model():
    torch.manual_seed(0)
    config = ViTConfig(
        image_size=512, patch_size=16, hidden_size=128, num_hidden_layers=2,
        num_attention_heads=4, intermediate_size=512, attn_implementation="sdpa",
    )  # fmt: skip
    return ViTModel(config, add_pooling_layer=False).eval()


def make_inputs():
    return (torch.randn(1, 3, 512, 512, generator=torch.Generator().manual_seed(0)),)
