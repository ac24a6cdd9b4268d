"""transformers SegFormer encoder (efficient self-attention), a 512-px image, random weights."""

import torch
from transformers import SegformerConfig, SegformerModel


def make_model():
    torch.manual_seed(0)
    config = SegformerConfig(
        num_encoder_blocks=2, depths=[1, 1], sr_ratios=[8, 4], hidden_sizes=[32, 64],
        patch_sizes=[7, 3], strides=[4, 2], num_attention_heads=[1, 2], mlp_ratios=[4, 4],
    )  # fmt: skip
    return SegformerModel(config).eval()


def make_inputs():
    return (torch.randn(1, 3, 512, 512, generator=torch.Generator().manual_seed(0)),)


def dynamic_shapes():
    # patch strides 4 and 2, then a spatial reduction by 8 and 4: 32 px in all
    h, w = torch.export.Dim("h32", min=4, max=16), torch.export.Dim("w32", min=4, max=16)
    return {"pixel_values": {2: 32 * h, 3: 32 * w}}
