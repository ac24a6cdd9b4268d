"""transformers CLIP vision tower (ViT, patch 14), a 448-px image (1024 patches), random weights."""

import torch
from transformers import CLIPVisionConfig, CLIPVisionModel

FIXED_SIZE = "CLIP's position table fixes the image at 448 px (modeling_clip.py:205)"


def make_model():
    torch.manual_seed(0)
    config = CLIPVisionConfig(
        hidden_size=128, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
        image_size=448, patch_size=14, attn_implementation="sdpa",
    )  # fmt: skip
    return CLIPVisionModel(config).eval()


def make_inputs():
    return (torch.randn(1, 3, 448, 448, generator=torch.Generator().manual_seed(0)),)
