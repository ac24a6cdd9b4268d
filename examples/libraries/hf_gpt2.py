"""A Hugging Face transformers GPT-2 with eager attention, from a config with random weights.

Four blocks of width 256 with 8 heads, at 2048 tokens: the attention scores (8 x 2048 x 2048
floats per block) are most of the activation memory. Needs `pip install transformers`.
"""

from __future__ import annotations

import torch
from transformers import GPT2Config, GPT2LMHeadModel

SEQ = 2048
VOCAB = 512


def make_model() -> torch.nn.Module:
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=VOCAB,
        n_positions=4 * SEQ,
        n_embd=256,
        n_layer=4,
        n_head=8,
        use_cache=False,
        bos_token_id=0,
        eos_token_id=0,
        attn_implementation="eager",
    )
    return GPT2LMHeadModel(config)


def make_inputs() -> tuple:
    generator = torch.Generator().manual_seed(0)
    return (torch.randint(0, VOCAB, (1, SEQ), generator=generator),)


def dynamic_shapes() -> dict:
    return {"input_ids": {1: torch.export.Dim("seq", min=2, max=4 * SEQ)}}
