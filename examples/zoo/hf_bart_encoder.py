"""transformers BART encoder (the encoder of an encoder-decoder), 2048 tokens, random weights."""

import torch
from transformers import BartConfig
from transformers.models.bart.modeling_bart import BartEncoder

SEQ = 2048


def make_model():
    torch.manual_seed(0)
    config = BartConfig(
        vocab_size=1024, d_model=128, encoder_layers=2, encoder_attention_heads=4,
        encoder_ffn_dim=512, max_position_embeddings=SEQ, attn_implementation="sdpa",
    )  # fmt: skip
    return BartEncoder(config).eval()


def make_inputs():
    return (torch.randint(3, 1024, (1, SEQ), generator=torch.Generator().manual_seed(0)),)


def dynamic_shapes():
    return {"input_ids": {1: torch.export.Dim("seq", min=2, max=SEQ)}}
