"""A Hugging Face transformers Mistral with SDPA attention, grouped-query heads and a sliding
window, on one unpadded prompt.

Four layers of width 256, 8 query heads sharing 2 key/value heads, each token attending to the
1024 before it, over a 4096-token prompt. With a window shorter than the prompt, eager
transformers builds the `seq x seq` sliding-window mask and hands SDPA keys and values repeated
to every head. Needs `pip install transformers`.
"""

from __future__ import annotations

import torch
from transformers import MistralConfig, MistralForCausalLM

SEQ = 4096
WINDOW = 1024
VOCAB = 512


def make_model() -> torch.nn.Module:
    torch.manual_seed(0)
    config = MistralConfig(
        vocab_size=VOCAB,
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=2,
        max_position_embeddings=4 * SEQ,
        sliding_window=WINDOW,
        use_cache=False,
        bos_token_id=0,
        eos_token_id=0,
        attn_implementation="sdpa",
    )
    return MistralForCausalLM(config)


def make_inputs() -> tuple:
    return (torch.randint(0, VOCAB, (1, SEQ), generator=torch.Generator().manual_seed(0)),)


def dynamic_shapes() -> dict:
    return {"input_ids": {1: torch.export.Dim("seq", min=2, max=4 * SEQ)}}
