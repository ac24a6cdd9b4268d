"""A small AlphaFold-2-style Evoformer stack: the benchmark model for the AlphaFold family.

Each block follows AlphaFold 2 (Jumper et al. 2021, supplementary Algorithm 6), with pre-LayerNorm
and residual adds, dropout omitted (the tool runs the model in eval mode):

- MSA row-wise gated self-attention with pair bias (Algorithm 7),
- MSA column-wise gated self-attention (Algorithm 8),
- MSA transition (Algorithm 9),
- outer product mean, MSA -> pair (Algorithm 10),
- triangle multiplicative update, outgoing then incoming edges (Algorithms 11 and 12),
- triangle self-attention around the starting node, then the ending node (Algorithms 13 and 14),
- pair transition (Algorithm 15).

Attention is plain (matmul, add bias, softmax, matmul), as in the paper. Inputs carry no batch
dimension: `msa` is f32[N_seq, N_res, c_m] and `pair` is f32[N_res, N_res, c_z]. At N_res = 224
the unchunked activation peak (about 364 MiB) is dominated by the triangle attention logits,
which grow with the cube of N_res: f32[N_res, 4, N_res, N_res] = 171.5 MiB, alive twice over
while the triangle bias is added (and again while the softmax is taken). The outer-product-mean
intermediate f32[N_res, N_res, 16, 16] and the MSA row attention logits f32[N_seq, 8, N_res,
N_res] (49 MiB each) come next.
"""

import math

import torch
from torch import nn

C_M = 64  # MSA channels
C_Z = 32  # pair channels
MSA_HEADS = 8  # MSA row and column attention: 8 heads of 8 channels
MSA_HEAD_DIM = 8
PAIR_HEADS = 4  # triangle attention: 4 heads of 8 channels
PAIR_HEAD_DIM = 8
C_OPM = 16  # outer product mean projection width
C_TRI_MUL = 32  # triangle multiplicative update hidden width
TRANSITION = 4  # transition widening factor
DEPTH = 2
N_SEQ = 32
N_RES = 224
MAX_RES = 1024


class GatedAttention(nn.Module):
    """Multi-head gated self-attention over the second-to-last axis of x (Algorithm 7 core).

    x is [batch, length, c_in]; bias, when given, is added to the logits [batch, heads, q, k]
    by broadcasting (a per-head [heads, q, k] bias is shared by every batch row).
    """

    def __init__(self, c_in: int, heads: int, head_dim: int) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = head_dim
        self.q = nn.Linear(c_in, heads * head_dim, bias=False)
        self.k = nn.Linear(c_in, heads * head_dim, bias=False)
        self.v = nn.Linear(c_in, heads * head_dim, bias=False)
        self.gate = nn.Linear(c_in, heads * head_dim)
        self.out = nn.Linear(heads * head_dim, c_in)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        b, n, _ = x.shape
        q = self.q(x).view(b, n, self.heads, self.head_dim).transpose(1, 2)
        q = q / math.sqrt(self.head_dim)
        k = self.k(x).view(b, n, self.heads, self.head_dim).transpose(1, 2)
        v = self.v(x).view(b, n, self.heads, self.head_dim).transpose(1, 2)
        logits = q @ k.transpose(-1, -2)
        del q, k  # free as soon as unused, as memory-conscious attention code does
        if bias is not None:
            logits = logits + bias
        weights = logits.softmax(dim=-1)
        del logits  # free the logits now, not at return: eager then peaks as the graph does
        o = (weights @ v).transpose(1, 2).reshape(b, n, self.heads * self.head_dim)
        o = torch.sigmoid(self.gate(x)) * o
        return self.out(o)


class MSARowAttentionWithPairBias(nn.Module):
    """Algorithm 7: attention along each MSA row (over residues), biased by the pair rep."""

    def __init__(self, c_m: int, c_z: int, heads: int, head_dim: int) -> None:
        super().__init__()
        self.norm_m = nn.LayerNorm(c_m)
        self.norm_z = nn.LayerNorm(c_z)
        self.pair_bias = nn.Linear(c_z, heads, bias=False)
        self.attn = GatedAttention(c_m, heads, head_dim)

    def forward(self, msa: torch.Tensor, pair: torch.Tensor) -> torch.Tensor:
        # pair [r, r, c_z] -> per-head bias [heads, r, r], shared by all sequences
        bias = self.pair_bias(self.norm_z(pair)).permute(2, 0, 1)
        return self.attn(self.norm_m(msa), bias)


class MSAColumnAttention(nn.Module):
    """Algorithm 8: attention along each MSA column (over sequences), no bias."""

    def __init__(self, c_m: int, heads: int, head_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(c_m)
        self.attn = GatedAttention(c_m, heads, head_dim)

    def forward(self, msa: torch.Tensor) -> torch.Tensor:
        cols = self.norm(msa).transpose(0, 1)  # [r, s, c_m]: one attention per residue
        return self.attn(cols).transpose(0, 1)


class Transition(nn.Module):
    """Algorithms 9 and 15: LayerNorm, Linear to n * c, ReLU, Linear back to c."""

    def __init__(self, c: int, n: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(c)
        self.fc = nn.Linear(c, n * c)
        self.out = nn.Linear(n * c, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.fc(self.norm(x))))


class OuterProductMean(nn.Module):
    """Algorithm 10: the MSA's per-sequence outer products, averaged, update the pair rep."""

    def __init__(self, c_m: int, c_z: int, c: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(c_m)
        self.a = nn.Linear(c_m, c)
        self.b = nn.Linear(c_m, c)
        self.out = nn.Linear(c * c, c_z)

    def forward(self, msa: torch.Tensor) -> torch.Tensor:
        m = self.norm(msa)
        a = self.a(m)  # [s, r, c]
        b = self.b(m)  # [s, r, c]
        outer = torch.einsum("sic,sjd->ijcd", a, b) / msa.shape[0]  # [r, r, c, c]
        return self.out(outer.flatten(-2))


class TriangleMultiplication(nn.Module):
    """Algorithms 11 and 12: update edge ij from the edges ik and jk (outgoing) or ki and kj."""

    def __init__(self, c_z: int, c: int, outgoing: bool) -> None:
        super().__init__()
        self.outgoing = outgoing
        self.norm_in = nn.LayerNorm(c_z)
        self.a_proj = nn.Linear(c_z, c)
        self.a_gate = nn.Linear(c_z, c)
        self.b_proj = nn.Linear(c_z, c)
        self.b_gate = nn.Linear(c_z, c)
        self.gate = nn.Linear(c_z, c_z)
        self.norm_out = nn.LayerNorm(c)
        self.out = nn.Linear(c, c_z)

    def forward(self, pair: torch.Tensor) -> torch.Tensor:
        z = self.norm_in(pair)
        a = torch.sigmoid(self.a_gate(z)) * self.a_proj(z)  # [r, r, c]
        b = torch.sigmoid(self.b_gate(z)) * self.b_proj(z)  # [r, r, c]
        if self.outgoing:
            t = torch.einsum("ikc,jkc->ijc", a, b)
        else:
            t = torch.einsum("kic,kjc->ijc", a, b)
        return torch.sigmoid(self.gate(z)) * self.out(self.norm_out(t))


class TriangleAttention(nn.Module):
    """Algorithms 13 and 14: gated attention along rows of the pair rep with a triangle bias.

    Around the starting node, edge ij attends to the edges ik, biased by edge jk. Around the
    ending node the same is done on the transposed pair rep (edge ij attends to kj, biased by ki).
    """

    def __init__(self, c_z: int, heads: int, head_dim: int, starting: bool) -> None:
        super().__init__()
        self.starting = starting
        self.norm = nn.LayerNorm(c_z)
        self.tri_bias = nn.Linear(c_z, heads, bias=False)
        self.attn = GatedAttention(c_z, heads, head_dim)

    def forward(self, pair: torch.Tensor) -> torch.Tensor:
        if not self.starting:
            pair = pair.transpose(0, 1)
        z = self.norm(pair)
        bias = self.tri_bias(z).permute(2, 0, 1)  # [heads, r, r], shared by every row i
        out = self.attn(z, bias)
        if not self.starting:
            out = out.transpose(0, 1)
        return out


class EvoformerBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.msa_row_attn = MSARowAttentionWithPairBias(C_M, C_Z, MSA_HEADS, MSA_HEAD_DIM)
        self.msa_col_attn = MSAColumnAttention(C_M, MSA_HEADS, MSA_HEAD_DIM)
        self.msa_transition = Transition(C_M, TRANSITION)
        self.outer_product_mean = OuterProductMean(C_M, C_Z, C_OPM)
        self.tri_mul_out = TriangleMultiplication(C_Z, C_TRI_MUL, outgoing=True)
        self.tri_mul_in = TriangleMultiplication(C_Z, C_TRI_MUL, outgoing=False)
        self.tri_att_start = TriangleAttention(C_Z, PAIR_HEADS, PAIR_HEAD_DIM, starting=True)
        self.tri_att_end = TriangleAttention(C_Z, PAIR_HEADS, PAIR_HEAD_DIM, starting=False)
        self.pair_transition = Transition(C_Z, TRANSITION)

    def forward(self, msa: torch.Tensor, pair: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        msa = msa + self.msa_row_attn(msa, pair)
        msa = msa + self.msa_col_attn(msa)
        msa = msa + self.msa_transition(msa)
        pair = pair + self.outer_product_mean(msa)
        pair = pair + self.tri_mul_out(pair)
        pair = pair + self.tri_mul_in(pair)
        pair = pair + self.tri_att_start(pair)
        pair = pair + self.tri_att_end(pair)
        pair = pair + self.pair_transition(pair)
        return msa, pair


class Evoformer(nn.Module):
    def __init__(self, depth: int = DEPTH) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(EvoformerBlock() for _ in range(depth))

    def forward(self, msa: torch.Tensor, pair: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for block in self.blocks:
            msa, pair = block(msa, pair)
        return msa, pair


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return Evoformer()


def make_inputs() -> tuple:
    generator = torch.Generator().manual_seed(0)
    msa = torch.randn(N_SEQ, N_RES, C_M, generator=generator)
    pair = torch.randn(N_RES, N_RES, C_Z, generator=generator)
    return (msa, pair)


def dynamic_shapes() -> dict:
    res = torch.export.Dim("res", min=2, max=MAX_RES)
    return {"msa": {1: res}, "pair": {0: res, 1: res}}
