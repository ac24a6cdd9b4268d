"""transformers ConvNeXt, a 512-px image, small widths, random weights."""

import torch
from transformers import ConvNextConfig, ConvNextModel


def make_model():
    torch.manual_seed(0)
    config = ConvNextConfig(hidden_sizes=[32, 64], depths=[1, 1], num_stages=2)
    return ConvNextModel(config).eval()


def make_inputs():
    return (torch.randn(1, 3, 512, 512, generator=torch.Generator().manual_seed(0)),)


def dynamic_shapes():
    # two stages: the total stride is 8 px
    h, w = torch.export.Dim("h8", min=4, max=64), torch.export.Dim("w8", min=4, max=64)
    return {"pixel_values": {2: 8 * h, 3: 8 * w}}
