"""transformers Wav2Vec2 (conv feature extractor + transformer), 4 s of 16 kHz raw audio, small
widths, random weights."""

import torch
from transformers import Wav2Vec2Config, Wav2Vec2Model

SAMPLES = 16000 * 4


def make_model():
    torch.manual_seed(0)
    config = Wav2Vec2Config(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256,
        conv_dim=(128,) * 7, num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4, mask_time_prob=0.0, attn_implementation="sdpa",
    )  # fmt: skip
    return Wav2Vec2Model(config).eval()


def make_inputs():
    return (torch.randn(1, SAMPLES, generator=torch.Generator().manual_seed(0)),)


def dynamic_shapes():
    # the feature extractor's total stride is 320 samples; export wants the length a multiple of it
    return {"input_values": {1: 320 * torch.export.Dim("frames", min=3, max=SAMPLES // 320)}}
