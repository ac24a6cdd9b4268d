"""A small Stable-Diffusion-style UNet: the benchmark model for the UNet family.

A denoising UNet over a 4-channel latent, conditioned on a timestep and on text embeddings, laid
out as the SD v1 UNet at reduced width and depth. A sinusoidal time embedding and an MLP feed
every resnet block (GroupNorm, SiLU, 3x3 conv, time-embedding injection, 1x1 skip conv when the
channels change). Three levels go down by strided convolution and come back up by nearest
interpolation (to the matching skip's size, so any latent size works) and a convolution, with the
down path's activations concatenated onto the up path's channels. The two high-resolution levels and the middle carry spatial transformers (GroupNorm,
1x1 proj_in, pre-LN self-attention over the pixels, cross-attention to the text, a GEGLU
feed-forward, 1x1 proj_out, residual), all with plain attention (matmul, scale, softmax, matmul).

At a 64x64 latent the unchunked activation peak is dominated by the top level's self-attention
over 4096 pixels: the 2-head scores f32[1, 2, 4096, 4096] = 128 MiB each.
"""

import math

import torch
from torch import nn
from torch.nn import functional as F

LATENT_CHANNELS = 4
LATENT = 64
CONTEXT_LEN = 77
CONTEXT_WIDTH = 512
BASE = 64
MULTS = (1, 2, 2)
ATTENTION_LEVELS = (0, 1)
HEAD_DIM = 32
GROUPS = 32


def norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(GROUPS, channels, eps=1e-6)


def timestep_embedding(timestep: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(
        -math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=timestep.device) / half
    )
    args = timestep[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class ResBlock(nn.Module):
    def __init__(self, channels: int, out_channels: int, time_width: int) -> None:
        super().__init__()
        self.norm_1 = norm(channels)
        self.conv_1 = nn.Conv2d(channels, out_channels, 3, padding=1)
        self.time_proj = nn.Linear(time_width, out_channels)
        self.norm_2 = norm(out_channels)
        self.conv_2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        if channels == out_channels:
            self.skip = nn.Identity()
        else:
            self.skip = nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv_1(F.silu(self.norm_1(x)))
        h = h + self.time_proj(F.silu(emb))[:, :, None, None]
        h = self.conv_2(F.silu(self.norm_2(h)))
        return self.skip(x) + h


class Attention(nn.Module):
    def __init__(self, width: int, context_width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(width, width, bias=False)
        self.to_k = nn.Linear(context_width, width, bias=False)
        self.to_v = nn.Linear(context_width, width, bias=False)
        self.to_out = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        s = context.shape[1]
        hd = c // self.heads
        q = self.to_q(x).view(b, t, self.heads, hd).transpose(1, 2)
        k = self.to_k(context).view(b, s, self.heads, hd).transpose(1, 2)
        v = self.to_v(context).view(b, s, self.heads, hd).transpose(1, 2)
        att = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
        att = att.softmax(dim=-1)
        y = (att @ v).transpose(1, 2).reshape(b, t, c)
        return self.to_out(y)


class GEGLU(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.proj = nn.Linear(width, 2 * 4 * width)
        self.out = nn.Linear(4 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, gate = self.proj(x).chunk(2, dim=-1)
        return self.out(h * F.gelu(gate))


class TransformerBlock(nn.Module):
    def __init__(self, width: int, context_width: int, heads: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.self_attn = Attention(width, width, heads)
        self.ln_2 = nn.LayerNorm(width)
        self.cross_attn = Attention(width, context_width, heads)
        self.ln_3 = nn.LayerNorm(width)
        self.ff = GEGLU(width)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        h = self.ln_1(x)
        x = x + self.self_attn(h, h)
        x = x + self.cross_attn(self.ln_2(x), context)
        return x + self.ff(self.ln_3(x))


class SpatialTransformer(nn.Module):
    def __init__(self, channels: int, context_width: int) -> None:
        super().__init__()
        self.norm = norm(channels)
        self.proj_in = nn.Conv2d(channels, channels, 1)
        self.block = TransformerBlock(channels, context_width, channels // HEAD_DIM)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        y = self.proj_in(self.norm(x))
        y = y.flatten(2).transpose(1, 2)
        y = self.block(y, context)
        y = y.transpose(1, 2).reshape(b, c, h, w)
        return x + self.proj_out(y)


class Downsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, size: torch.Size) -> torch.Tensor:
        # 2x at even sizes; an odd size was rounded up by the strided conv, so match the skip
        return self.conv(F.interpolate(x, size=size, mode="nearest"))


class Level(nn.Module):
    """A resnet block, optionally followed by a spatial transformer."""

    def __init__(self, channels: int, out_channels: int, time_width: int, attention: bool) -> None:
        super().__init__()
        self.res = ResBlock(channels, out_channels, time_width)
        if attention:
            self.attn = SpatialTransformer(out_channels, CONTEXT_WIDTH)
        else:
            self.attn = None

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = self.res(x, emb)
        if self.attn is not None:
            x = self.attn(x, context)
        return x


class UNet(nn.Module):
    def __init__(self, base: int = BASE, mults: tuple = MULTS) -> None:
        super().__init__()
        time_width = 4 * base
        widths = [base * m for m in mults]
        self.base = base
        self.time_mlp = nn.Sequential(
            nn.Linear(base, time_width), nn.SiLU(), nn.Linear(time_width, time_width)
        )
        self.conv_in = nn.Conv2d(LATENT_CHANNELS, base, 3, padding=1)

        # down path: one resnet block per level, then a strided conv except at the bottom
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        skips = [base]
        channels = base
        for i, width in enumerate(widths):
            self.down.append(Level(channels, width, time_width, i in ATTENTION_LEVELS))
            channels = width
            skips.append(channels)
            if i < len(widths) - 1:
                self.downsample.append(Downsample(channels))
                skips.append(channels)

        self.mid_1 = ResBlock(channels, channels, time_width)
        self.mid_attn = SpatialTransformer(channels, CONTEXT_WIDTH)
        self.mid_2 = ResBlock(channels, channels, time_width)

        # up path: two resnet blocks per level, each taking one skip, then nearest upsampling
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for i, width in reversed(list(enumerate(widths))):
            for _ in range(2):
                skip = skips.pop()
                self.up.append(Level(channels + skip, width, time_width, i in ATTENTION_LEVELS))
                channels = width
            if i > 0:
                self.upsample.append(Upsample(channels))

        self.norm_out = norm(channels)
        self.conv_out = nn.Conv2d(channels, LATENT_CHANNELS, 3, padding=1)

    def forward(
        self, x: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor
    ) -> torch.Tensor:
        emb = self.time_mlp(timestep_embedding(timestep, self.base))

        h = self.conv_in(x)
        skips = [h]
        for i, level in enumerate(self.down):
            h = level(h, emb, context)
            skips.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)
                skips.append(h)

        h = self.mid_1(h, emb)
        h = self.mid_attn(h, context)
        h = self.mid_2(h, emb)

        for i, level in enumerate(self.up):
            h = level(torch.cat([h, skips.pop()], dim=1), emb, context)
            if i % 2 == 1 and i // 2 < len(self.upsample):
                h = self.upsample[i // 2](h, skips[-1].shape[-2:])

        return self.conv_out(F.silu(self.norm_out(h)))


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return UNet()


def make_inputs() -> tuple:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, LATENT_CHANNELS, LATENT, LATENT, generator=generator)
    timestep = torch.tensor([500.0])
    context = torch.randn(1, CONTEXT_LEN, CONTEXT_WIDTH, generator=generator)
    return (x, timestep, context)


def dynamic_shapes() -> dict:
    # the latent's height and width vary independently; the text length stays at 77
    return {
        "x": {
            2: torch.export.Dim("height", min=8, max=128),
            3: torch.export.Dim("width", min=8, max=128),
        },
        "timestep": None,
        "context": None,
    }
