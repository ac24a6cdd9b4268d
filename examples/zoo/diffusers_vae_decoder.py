"""diffusers AutoencoderKL decoder: a 32x32 latent to a 256-px image, small widths, random
weights."""

import torch
from diffusers import AutoencoderKL


class Decode(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.vae = AutoencoderKL(
            block_out_channels=(32, 64, 64, 64), layers_per_block=1, latent_channels=4,
            norm_num_groups=8,
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        )  # fmt: skip

    def forward(self, latent):
        return self.vae.decode(latent, return_dict=False)[0]


def make_model():
    torch.manual_seed(0)
    return Decode().eval()


def make_inputs():
    return (torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(0)),)


def dynamic_shapes():
    # the decoder only upsamples: any latent height and width
    height = torch.export.Dim("height", min=2, max=32)
    width = torch.export.Dim("width", min=2, max=32)
    return {"latent": {2: height, 3: width}}
