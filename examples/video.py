"""A small video encoder: the benchmark model for 3-D convolutions over frames.

A clip of RGB frames goes through a 3x3x3 convolutional stem, residual blocks of two 3x3x3
convolutions (batch norm and SiLU between them, the wide one four times the channels), and a
1x1x1 projection, all at full resolution in time and space, as the front of a video VAE or a
video super-resolution network has it. Every convolution keeps the clip's length and size
(stride 1, padding 1), so frames, rows and columns all flow through it with a halo of one
frame or row per convolution on each side.

At 16 frames of 128x128 the unchunked activation peak is the wide block's activations:
f32[1, 64, 16, 128, 128] = 64 MiB each.
"""

import torch
from torch import nn
from torch.nn import functional as F

CHANNELS = 16
WIDE = 4 * CHANNELS
BLOCKS = 2
FRAMES = 16
SIZE = 128


class Block(nn.Module):
    def __init__(self, channels: int, wide: int) -> None:
        super().__init__()
        self.conv_1 = nn.Conv3d(channels, wide, 3, padding=1)
        self.norm = nn.BatchNorm3d(wide)
        self.conv_2 = nn.Conv3d(wide, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.norm(self.conv_1(x)))
        return x + self.conv_2(h)


class VideoEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv3d(3, CHANNELS, 3, padding=1)
        self.blocks = nn.Sequential(*(Block(CHANNELS, WIDE) for _ in range(BLOCKS)))
        self.proj = nn.Conv3d(CHANNELS, 8, 1)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.proj(self.blocks(self.stem(frames)))


def make_model() -> nn.Module:
    torch.manual_seed(0)
    model = VideoEncoder()
    for block in model.blocks:  # running statistics as a trained model has them
        block.norm.running_mean.normal_(0.0, 0.1)
        block.norm.running_var.uniform_(0.5, 2.0)
    return model


def make_inputs() -> tuple[torch.Tensor, ...]:
    torch.manual_seed(1)
    return (torch.randn(1, 3, FRAMES, SIZE, SIZE),)


def dynamic_shapes() -> dict:
    return {"frames": {2: torch.export.Dim("time", min=4, max=1024)}}
