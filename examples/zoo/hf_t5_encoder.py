"""transformers T5 encoder (the encoder of an encoder-decoder), 2048 tokens, random weights."""

import torch
from transformers import T5Config, T5EncoderModel

SEQ = 2048


def make_model():
    torch.manual_seed(0)
    config = T5Config(
        vocab_size=512, d_model=128, d_kv=32, d_ff=512, num_layers=2, num_heads=4,
        use_cache=False,
    )  # fmt: skip
    return T5EncoderModel(config).eval()


def make_inputs():
    return (torch.randint(0, 512, (1, SEQ), generator=torch.Generator().manual_seed(0)),)


def dynamic_shapes():
    return {"input_ids": {1: torch.export.Dim("seq", min=2, max=SEQ)}}
