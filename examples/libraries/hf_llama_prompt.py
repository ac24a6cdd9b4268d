"""A Hugging Face transformers Llama with SDPA attention and grouped-query heads, on one
unpadded prompt: the everyday case, with no attention mask.

The same model as `hf_llama.py` (four layers of width 256, 8 query heads sharing 2 key/value
heads), over a 4096-token prompt and no mask. Eager transformers then calls SDPA with
`is_causal=True`, no mask and the grouped keys and values as they are, so the fused kernel never
holds the scores and the peak is in the feed-forward and the logits. Needs `pip install
transformers`.
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
    return (torch.randint(0, VOCAB, (1, SEQ), generator=torch.Generator().manual_seed(0)),)


def dynamic_shapes() -> dict:
    return {"input_ids": {1: torch.export.Dim("seq", min=2, max=4 * SEQ)}}
