"""A diffusers UNet2DConditionModel with the classic attention processor, from a config with
random weights.

Two resolution levels (32 and 64 channels) with cross-attention to 77 text tokens, on a 64 x 64
latent: self-attention over 4096 tokens at the top level. The classic `AttnProcessor`
materializes the attention probabilities, as `set_attn_processor(AttnProcessor())` does in
diffusers. Needs `pip install diffusers`.
"""

from __future__ import annotations

import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor

SIDE = 64


def make_model() -> torch.nn.Module:
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=SIDE,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    unet.set_attn_processor(AttnProcessor())
    return unet


def make_inputs() -> tuple:
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(1, 4, SIDE, SIDE, generator=generator)
    timestep = torch.tensor([10])
    text = torch.randn(1, 77, 32, generator=generator)
    return (sample, timestep, text)
