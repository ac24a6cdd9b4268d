"""diffusers UNet2DModel (an unconditional diffusion UNet), 128x128, small widths, random weights."""

import torch
from diffusers import UNet2DModel


class Denoiser(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.unet = UNet2DModel(
            sample_size=128, in_channels=3, out_channels=3, layers_per_block=1,
            block_out_channels=(32, 64), down_block_types=("DownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=8,
        )  # fmt: skip

    def forward(self, sample):
        return self.unet(sample, 10, return_dict=False)[0]


def make_model():
    torch.manual_seed(0)
    return Denoiser().eval()


def make_inputs():
    return (torch.randn(1, 3, 128, 128, generator=torch.Generator().manual_seed(0)),)


def dynamic_shapes():
    # one downsampling block: the total stride is 2 px
    h, w = torch.export.Dim("h2", min=4, max=64), torch.export.Dim("w2", min=4, max=64)
    return {"sample": {2: 2 * h, 3: 2 * w}}
