"""transformers Gemma (multi-query, GeGLU, RMSNorm), SDPA, 2048 tokens, random weights."""

import torch
from transformers import GemmaConfig, GemmaForCausalLM

SEQ = 2048


def make_model():
    torch.manual_seed(0)
    config = GemmaConfig(
        vocab_size=1024, hidden_size=128, intermediate_size=512, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=1, head_dim=32, max_position_embeddings=SEQ,
        use_cache=False, pad_token_id=0, bos_token_id=0, eos_token_id=0, attn_implementation="sdpa",
    )  # fmt: skip
    return GemmaForCausalLM(config).eval()


def make_inputs():
    return (torch.randint(0, 1024, (1, SEQ), generator=torch.Generator().manual_seed(0)),)


def dynamic_shapes():
    return {"input_ids": {1: torch.export.Dim("seq", min=2, max=SEQ)}}
