"""transformers Qwen2 (grouped-query attention with biased projections), 4096 tokens, random
weights."""

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

SEQ = 4096


def make_model():
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=512, hidden_size=128, intermediate_size=352, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2 * SEQ,
        use_cache=False, attn_implementation="sdpa",
    )  # fmt: skip
    return Qwen2ForCausalLM(config).eval()


def make_inputs():
    return (torch.randint(0, 512, (1, SEQ), generator=torch.Generator().manual_seed(0)),)


def dynamic_shapes():
    return {"input_ids": {1: torch.export.Dim("seq", min=2, max=2 * SEQ)}}
