"""A Stable-Diffusion-style AutoencoderKL decoder: the benchmark model for convolutions with
group norms and upsampling.

diffusers' `AutoencoderKL`, laid out as Stable Diffusion's (four levels, two resnet blocks per
level plus one on the way up, GroupNorm of 32 groups, a mid block with one attention over the
pixels, nearest 2x upsampling between levels) at small widths, with random weights. `decode`
turns a 64x64 latent into a 512-px image. The peak is at the top level, where each value is
f32[1, 32, 512, 512] = 32 MiB. diffusers' `enable_tiling()` (the expert baseline in
`scripts/baselines.py`) decodes overlapping tiles and blends them: less memory, but another
image.
"""

import torch
from diffusers import AutoencoderKL

LATENT = 64
WIDTHS = (32, 64, 64, 64)


class Decode(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.vae = AutoencoderKL(
            block_out_channels=WIDTHS, layers_per_block=2, latent_channels=4,
            norm_num_groups=32, sample_size=256,  # tiling (the expert) decodes 256-px tiles
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        )  # fmt: skip

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latent, return_dict=False)[0]


def make_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return Decode().eval()


def make_inputs() -> tuple[torch.Tensor, ...]:
    return (torch.randn(1, 4, LATENT, LATENT, generator=torch.Generator().manual_seed(0)),)


def dynamic_shapes() -> dict:
    # the decoder only upsamples: any latent height and width
    height = torch.export.Dim("height", min=8, max=256)
    width = torch.export.Dim("width", min=8, max=256)
    return {"latent": {2: height, 3: width}}
