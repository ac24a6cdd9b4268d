"""transformers OPT decoder (learned positions), SDPA, 2048 tokens, random weights."""

import torch
from transformers import OPTConfig, OPTForCausalLM

SEQ = 2048


def make_model():
    torch.manual_seed(0)
    config = OPTConfig(
        vocab_size=1024, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
        ffn_dim=512, word_embed_proj_dim=128, max_position_embeddings=SEQ, use_cache=False,
        pad_token_id=1, bos_token_id=0, eos_token_id=0, attn_implementation="sdpa",
    )  # fmt: skip
    return OPTForCausalLM(config).eval()


def make_inputs():
    return (torch.randint(2, 1024, (1, SEQ), generator=torch.Generator().manual_seed(0)),)


def dynamic_shapes():
    return {"input_ids": {1: torch.export.Dim("seq", min=2, max=SEQ)}}
