"""transformers Falcon (multi-query, parallel attention/MLP, rotary), SDPA, 2048 tokens, random
weights."""

import torch
from transformers import FalconConfig, FalconForCausalLM

SEQ = 2048


def make_model():
    torch.manual_seed(0)
    config = FalconConfig(
        vocab_size=1024, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
        multi_query=True, parallel_attn=True, new_decoder_architecture=False, bias=False,
        max_position_embeddings=SEQ, use_cache=False, bos_token_id=0, eos_token_id=0,
        attn_implementation="sdpa",
    )  # fmt: skip
    return FalconForCausalLM(config).eval()


def make_inputs():
    return (torch.randint(0, 1024, (1, SEQ), generator=torch.Generator().manual_seed(0)),)


def dynamic_shapes():
    return {"input_ids": {1: torch.export.Dim("seq", min=2, max=SEQ)}}
