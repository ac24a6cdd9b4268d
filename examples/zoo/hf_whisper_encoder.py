"""transformers Whisper encoder: 3000 log-mel frames (30 s of audio), random weights."""

import torch
from transformers import WhisperConfig
from transformers.models.whisper.modeling_whisper import WhisperEncoder

FIXED_SIZE = "Whisper's encoder raises unless there are 3000 mel frames (modeling_whisper.py:613)"


def make_model():
    torch.manual_seed(0)
    config = WhisperConfig(
        num_mel_bins=80, d_model=128, encoder_layers=2, encoder_attention_heads=4,
        encoder_ffn_dim=512, max_source_positions=1500, attn_implementation="sdpa",
    )  # fmt: skip
    return WhisperEncoder(config).eval()


def make_inputs():
    return (torch.randn(1, 80, 3000, generator=torch.Generator().manual_seed(0)),)
