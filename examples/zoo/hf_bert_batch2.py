"""transformers BERT encoder (SDPA), batch of 2, 2048 tokens, random weights."""

import torch
from transformers import BertConfig, BertModel

SEQ = 2048


def make_model():
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=1024, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=512, max_position_embeddings=SEQ, attn_implementation="sdpa",
    )  # fmt: skip
    return BertModel(config, add_pooling_layer=False).eval()


def make_inputs():
    return (torch.randint(0, 1024, (2, SEQ), generator=torch.Generator().manual_seed(0)),)


def dynamic_shapes():
    return {"input_ids": {1: torch.export.Dim("seq", min=2, max=SEQ)}}
