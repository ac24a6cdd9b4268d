"""transformers GPT-2 (multi-head attention, SDPA), 2048 tokens, random weights."""

import torch
from transformers import GPT2Config, GPT2LMHeadModel

SEQ = 2048


def make_model():
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=1024, n_positions=SEQ, n_embd=128, n_layer=2, n_head=4, use_cache=False,
        attn_implementation="sdpa",
    )  # fmt: skip
    return GPT2LMHeadModel(config).eval()


def make_inputs():
    return (torch.randint(0, 1024, (1, SEQ), generator=torch.Generator().manual_seed(0)),)


def dynamic_shapes():
    return {"input_ids": {1: torch.export.Dim("seq", min=2, max=SEQ)}}
