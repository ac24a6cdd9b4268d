"""A Hugging Face transformers BERT encoder, from a config with random weights.

Four layers of width 256 with 8 heads, at 2048 tokens, with an attention mask that hides the
last 48 tokens (padding) and token type ids. Needs `pip install transformers`.
"""

from __future__ import annotations

import torch
from transformers import BertConfig, BertModel

SEQ = 2048
VOCAB = 512


def make_model() -> torch.nn.Module:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=256,
        intermediate_size=1024,
        num_hidden_layers=4,
        num_attention_heads=8,
        max_position_embeddings=4 * SEQ,
        attn_implementation="eager",
    )
    return BertModel(config, add_pooling_layer=True)


def make_inputs() -> tuple:
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, VOCAB, (1, SEQ), generator=generator)
    mask = torch.ones(1, SEQ, dtype=torch.long)
    mask[:, -48:] = 0
    types = torch.zeros(1, SEQ, dtype=torch.long)
    types[:, SEQ // 2 :] = 1
    return (ids, mask, types)
