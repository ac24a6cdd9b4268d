"""A plain `nn.Sequential` MLP over 8192 tokens, batch of 4."""

import torch
from torch import nn


def make_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 512), nn.GELU(), nn.Linear(512, 64)).eval()


def make_inputs():
    return (torch.randn(4, 8192, 64, generator=torch.Generator().manual_seed(0)),)


def dynamic_shapes():
    return {"input": {1: torch.export.Dim("tokens", min=2, max=16384)}}
