"""transformers RoBERTa encoder (eager attention), 2048 tokens, random weights."""

import torch
from transformers import RobertaConfig, RobertaModel

SEQ = 2048


def make_model():
    torch.manual_seed(0)
    config = RobertaConfig(
        vocab_size=1024, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=512, max_position_embeddings=SEQ + 2, attn_implementation="eager",
    )  # fmt: skip
    return RobertaModel(config, add_pooling_layer=False).eval()


def make_inputs():
    return (torch.randint(3, 1024, (1, SEQ), generator=torch.Generator().manual_seed(0)),)


def dynamic_shapes():
    return {"input_ids": {1: torch.export.Dim("seq", min=2, max=SEQ)}}
