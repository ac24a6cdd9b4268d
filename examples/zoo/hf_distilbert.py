"""transformers DistilBERT encoder (SDPA), 2048 tokens, random weights."""

import torch
from transformers import DistilBertConfig, DistilBertModel

SEQ = 2048


def make_model():
    torch.manual_seed(0)
    config = DistilBertConfig(
        vocab_size=1024, dim=128, n_layers=2, n_heads=4, hidden_dim=512,
        max_position_embeddings=SEQ, attn_implementation="sdpa",
    )  # fmt: skip
    return DistilBertModel(config).eval()


def make_inputs():
    return (torch.randint(0, 1024, (1, SEQ), generator=torch.Generator().manual_seed(0)),)


def dynamic_shapes():
    return {"input_ids": {1: torch.export.Dim("seq", min=2, max=SEQ)}}
