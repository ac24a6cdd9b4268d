"""A Hugging Face transformers Llama with SDPA attention and grouped-query heads, from a config
with random weights.

Four layers of width 256, 8 query heads sharing 2 key/value heads, over a 4096-token prompt
(Llama 2's context length). Rotary tables are built inside the model. The attention mask pads the
first 48 tokens (left padding, as in batched generation), so transformers builds a `seq x seq`
mask for SDPA. SDPA never holds the attention scores, so what long prompts add is that mask, its
float copy inside the kernel, and the feed-forward. Needs `pip install transformers`.
"""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

SEQ = 4096
VOCAB = 512


def make_model() -> torch.nn.Module:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=2,
        max_position_embeddings=4 * SEQ,
        use_cache=False,
        bos_token_id=0,
        eos_token_id=0,
        attn_implementation="sdpa",
    )
    return LlamaForCausalLM(config)


def make_inputs() -> tuple:
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, VOCAB, (1, SEQ), generator=generator)
    mask = torch.ones(1, SEQ, dtype=torch.long)
    mask[:, :48] = 0  # left padding, as in batched generation
    return (ids, mask)


def dynamic_shapes() -> dict:
    seq = torch.export.Dim("seq", min=2, max=4 * SEQ)
    return {"input_ids": {1: seq}, "attention_mask": {1: seq}}
