"""Expert hand-chunking baselines: what practitioners write by hand for each family.

- GPT and ViT: Hugging Face style. The feed-forward runs through `apply_chunking_to_forward`
  over the sequence, and attention is computed one block of queries at a time.
- Evoformer: OpenFold style. `chunk_layer` runs each attention, the transitions and the outer
  product mean over slices of their leading (batch-like) dim, writing into a preallocated output.
- VAE decoder: diffusers' own tiled decode (`enable_tiling()`), approximate: bench reports its
  largest difference from the untiled image.
- UNet: diffusers style. Sliced attention (`set_attention_slice("max")`: one head at a time) and
  chunked feed-forward (`enable_forward_chunking`) over the tokens.

Each `expert_*` takes an original model built from the example file and returns a deep copy
whose modules run chunked; the numerics stay those of the original.
"""

from __future__ import annotations

import copy
import math
import types
from typing import Any, Callable

import torch
from torch import nn


def chunked_along(
    fn: Callable[..., torch.Tensor], dim: int, chunk: int, x: torch.Tensor, *rest: Any
):
    """`apply_chunking_to_forward` / `chunk_layer`: run fn on slices of x, into one output."""
    n = x.shape[dim]
    out = None
    for start in range(0, n, chunk):
        piece = fn(x.narrow(dim, start, min(chunk, n - start)), *rest)
        if out is None:
            shape = list(piece.shape)
            shape[dim] = n
            out = piece.new_empty(shape)
        out.narrow(dim, start, piece.shape[dim]).copy_(piece)
    return out


def _query_chunked_attention(self: nn.Module, x: torch.Tensor, *, chunk: int, causal: bool):
    b, t, c = x.shape
    hd = c // self.heads
    q, k, v = self.qkv(x).split(c, dim=-1)
    q = q.view(b, t, self.heads, hd).transpose(1, 2)
    k = k.view(b, t, self.heads, hd).transpose(1, 2)
    v = v.view(b, t, self.heads, hd).transpose(1, 2)
    k_t = k.transpose(-1, -2)
    y = torch.empty(b, self.heads, t, hd, dtype=x.dtype, device=x.device)
    for start in range(0, t, chunk):
        stop = min(start + chunk, t)
        att = (q[:, :, start:stop] @ k_t) / math.sqrt(hd)
        if causal:
            rows = torch.arange(start, stop, device=x.device)[:, None]
            att = att.masked_fill(torch.arange(t, device=x.device)[None, :] > rows, float("-inf"))
        y[:, :, start:stop] = att.softmax(dim=-1) @ v
        del att
    return self.proj(y.transpose(1, 2).reshape(b, t, c))


def expert_transformer(model: nn.Module, chunk: int = 128, causal: bool = False) -> nn.Module:
    """HF style: query-chunked attention and sequence-chunked feed-forward."""
    model = copy.deepcopy(model)
    for module in model.modules():
        name = type(module).__name__
        if name == "Attention":
            attention = types.MethodType(_query_chunked_attention, module)
            module.forward = lambda x, f=attention: f(x, chunk=chunk, causal=causal)
        elif name == "MLP":
            mlp = type(module).forward.__get__(module)
            module.forward = lambda x, f=mlp: chunked_along(f, 1, chunk, x)
    return model


def expert_gpt(model: nn.Module) -> nn.Module:
    return expert_transformer(model, chunk=128, causal=True)


def expert_vit(model: nn.Module) -> nn.Module:
    return expert_transformer(model, chunk=128, causal=False)


def expert_evoformer(model: nn.Module, chunk: int = 4) -> nn.Module:
    """OpenFold style `chunk_layer` over the leading dim (chunk_size=4, its long-input setting)."""
    model = copy.deepcopy(model)
    for module in model.modules():
        name = type(module).__name__
        forward = type(module).forward.__get__(module)
        if name == "GatedAttention":
            module.forward = lambda x, bias=None, f=forward: chunked_along(f, 0, chunk, x, bias)
        elif name == "Transition":
            module.forward = lambda x, f=forward: chunked_along(f, 0, chunk, x)
        elif name == "OuterProductMean":
            module.forward = types.MethodType(_chunked_outer_product_mean(chunk), module)
    return model


def _chunked_outer_product_mean(chunk: int) -> Callable[..., torch.Tensor]:
    def forward(self: nn.Module, msa: torch.Tensor) -> torch.Tensor:
        m = self.norm(msa)
        a, b = self.a(m), self.b(m)

        def rows(a_rows: torch.Tensor) -> torch.Tensor:
            outer = torch.einsum("sic,sjd->ijcd", a_rows, b) / msa.shape[0]
            return self.out(outer.flatten(-2)).transpose(0, 1)  # [j, i, c_z]: i on dim 1

        return chunked_along(rows, 1, chunk, a).transpose(0, 1)  # rows i of a are its dim 1

    return forward


def _sliced_attention(self: nn.Module, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    b, t, c = x.shape
    s = context.shape[1]
    hd = c // self.heads
    q = self.to_q(x).view(b, t, self.heads, hd).transpose(1, 2).reshape(b * self.heads, t, hd)
    k = self.to_k(context).view(b, s, self.heads, hd).transpose(1, 2).reshape(b * self.heads, s, hd)
    v = self.to_v(context).view(b, s, self.heads, hd).transpose(1, 2).reshape(b * self.heads, s, hd)
    y = torch.empty(b * self.heads, t, hd, dtype=x.dtype, device=x.device)
    for i in range(b * self.heads):  # slice_size 1: one head at a time
        att = (q[i : i + 1] @ k[i : i + 1].transpose(-1, -2)) / math.sqrt(hd)
        y[i : i + 1] = att.softmax(dim=-1) @ v[i : i + 1]
        del att
    y = y.view(b, self.heads, t, hd).transpose(1, 2).reshape(b, t, c)
    return self.to_out(y)


def expert_unet(model: nn.Module, ff_chunk: int = 512) -> nn.Module:
    """diffusers style: `set_attention_slice("max")` and `enable_forward_chunking`."""
    model = copy.deepcopy(model)
    for module in model.modules():
        name = type(module).__name__
        if name == "Attention":
            module.forward = types.MethodType(_sliced_attention, module)
        elif name == "GEGLU":
            forward = type(module).forward.__get__(module)
            module.forward = lambda x, f=forward: chunked_along(f, 1, ff_chunk, x)
    return model


def expert_vae(model: nn.Module) -> nn.Module:
    """diffusers' own: `AutoencoderKL.enable_tiling()`, which decodes overlapping tiles of the
    latent (`sample_size` pixels each) and blends their seams. Its image is not the untiled
    one: each tile's group norms see only that tile."""
    model = copy.deepcopy(model)
    model.vae.enable_tiling()
    return model


#: the baseline for each example, by file stem
EXPERTS: dict[str, Callable[[nn.Module], nn.Module]] = {
    "gpt": expert_gpt,
    "vit": expert_vit,
    "evoformer": expert_evoformer,
    "unet": expert_unet,
    "vae": expert_vae,
}

#: baselines that change the result: measured for memory and time, and their largest difference
#: from the original's output reported rather than required to be zero
APPROXIMATE = {"vae"}

__all__ = ["APPROXIMATE", "EXPERTS", "chunked_along"]
