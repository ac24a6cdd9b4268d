"""diffusers UNet2DConditionModel (text-conditioned, cross-attention), a 64x64 latent, 77 context
tokens, small widths, random weights."""

import torch
from diffusers import UNet2DConditionModel


class Denoiser(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.unet = UNet2DConditionModel(
            sample_size=64, in_channels=4, out_channels=4, layers_per_block=1,
            block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
            attention_head_dim=8, norm_num_groups=8,
        )  # fmt: skip

    def forward(self, sample, timestep, encoder_hidden_states):
        return self.unet(sample, timestep, encoder_hidden_states, return_dict=False)[0]


def make_model():
    torch.manual_seed(0)
    return Denoiser().eval()


def make_inputs():
    g = torch.Generator().manual_seed(0)
    return (
        torch.randn(1, 4, 64, 64, generator=g), torch.tensor([10]),
        torch.randn(1, 77, 32, generator=g),
    )  # fmt: skip


def dynamic_shapes():
    # one downsampling block: the total stride is 2 latent px; the context length varies too
    h, w = torch.export.Dim("h2", min=4, max=32), torch.export.Dim("w2", min=4, max=32)
    tokens = torch.export.Dim("tokens", min=2, max=77)
    return {
        "sample": {2: 2 * h, 3: 2 * w},
        "timestep": None,
        "encoder_hidden_states": {1: tokens},
    }
