"""A Hugging Face transformers Llama given an attention mask that pads nothing: the mask a
tokenizer returns for one prompt, so the everyday call `model(**tokenizer(prompt))`.

The model of `hf_llama.py` (four layers of width 256, 8 query heads sharing 2 key/value heads)
over a 4096-token prompt. Eager transformers checks the mask at run time, finds no padding, and
calls SDPA with `is_causal=True` and no mask. The generated module makes the same check
(NOTE [Padding checked at run time]); its loops are planned for the padded path and sized at
run time for the path the check picks. Needs `pip install transformers`.
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
    return (ids, torch.ones(1, SEQ, dtype=torch.long))  # no padding


def dynamic_shapes() -> dict:
    seq = torch.export.Dim("seq", min=2, max=4 * SEQ)
    return {"input_ids": {1: seq}, "attention_mask": {1: seq}}
