"""A small Vision Transformer at a large image: the benchmark model for the ViT family.

A 640x640 image is cut by a strided convolution into 40x40 = 1600 patches of 16x16, a learned
cls token is prepended and a learned position embedding added, then pre-LN blocks of plain
multi-head attention (matmul, scale, softmax, matmul) and a GELU MLP run over the 1601 tokens, as
in ViT-B/16. A final LayerNorm and a linear head classify the cls token. The unchunked activation
peak is dominated by the 8-head attention scores, f32[1, 8, 1601, 1601] = 78 MiB each.
"""

import math

import torch
from torch import nn

IMAGE = 640
PATCH = 16
CHANNELS = 3
WIDTH = 256
HEADS = 8
DEPTH = 4
CLASSES = 1000


class Attention(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        hd = c // self.heads
        q, k, v = self.qkv(x).split(c, dim=-1)
        q = q.view(b, t, self.heads, hd).transpose(1, 2)
        k = k.view(b, t, self.heads, hd).transpose(1, 2)
        v = v.view(b, t, self.heads, hd).transpose(1, 2)
        att = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
        att = att.softmax(dim=-1)
        y = (att @ v).transpose(1, 2).reshape(b, t, c)
        return self.proj(y)


class MLP(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.fc = nn.Linear(width, 4 * width)
        self.out = nn.Linear(4 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(nn.functional.gelu(self.fc(x)))


class Block(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = MLP(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class ViT(nn.Module):
    def __init__(
        self,
        image: int = IMAGE,
        patch: int = PATCH,
        width: int = WIDTH,
        heads: int = HEADS,
        depth: int = DEPTH,
        classes: int = CLASSES,
    ) -> None:
        super().__init__()
        patches = (image // patch) ** 2
        self.patch_embed = nn.Conv2d(CHANNELS, width, kernel_size=patch, stride=patch)
        self.cls_token = nn.Parameter(torch.randn(1, 1, width) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, patches + 1, width) * 0.02)
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(depth))
        self.ln_f = nn.LayerNorm(width)
        self.head = nn.Linear(width, classes)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(image).flatten(2).transpose(1, 2)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x)[:, 0])


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return ViT()


def make_inputs() -> tuple:
    generator = torch.Generator().manual_seed(0)
    return (torch.randn(1, CHANNELS, IMAGE, IMAGE, generator=generator),)
