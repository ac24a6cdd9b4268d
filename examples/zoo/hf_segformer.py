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
