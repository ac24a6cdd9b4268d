"""transformers Mistral, sliding window of 512, SDPA, 2048 tokens, random weights."""

import torch
from transformers import MistralConfig, MistralForCausalLM

SEQ = 2048


def make_model():
    torch.manual_seed(0)
    config = MistralConfig(
        vocab_size=512, hidden_size=128, intermediate_size=344, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, sliding_window=512,
        max_position_embeddings=2 * SEQ, use_cache=False, attn_implementation="sdpa",
    )  # fmt: skip
    return MistralForCausalLM(config).eval()


def make_inputs():
    return (torch.randint(0, 512, (1, SEQ), generator=torch.Generator().manual_seed(0)),)


def dynamic_shapes():
    return {"input_ids": {1: torch.export.Dim("seq", min=2, max=2 * SEQ)}}
