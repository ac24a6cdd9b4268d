"""transformers VideoMAE (3D-conv tubelet embedding + ViT), 16 frames of 112x112, small widths,
random weights. VideoMAE keeps its sinusoidal position table as a plain tensor attribute;
make_model registers it as a buffer, which the generated module needs."""

import torch
from transformers import VideoMAEConfig, VideoMAEModel

FIXED_SIZE = "VideoMAE's position table fixes 16 frames of 112 px (modeling_videomae.py:114, 171)"


def make_model():
    torch.manual_seed(0)
    config = VideoMAEConfig(
        image_size=112, patch_size=8, num_frames=16, tubelet_size=2, hidden_size=128,
        num_hidden_layers=2, num_attention_heads=4, intermediate_size=512,
        attn_implementation="sdpa",
    )  # fmt: skip
    model = VideoMAEModel(config).eval()
    table = model.embeddings.position_embeddings
    del model.embeddings.position_embeddings
    model.embeddings.register_buffer("position_embeddings", table, persistent=False)
    return model


def make_inputs():
    return (torch.randn(1, 16, 3, 112, 112, generator=torch.Generator().manual_seed(0)),)
