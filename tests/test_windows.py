"""Windowed attention as Swin writes it: the image's tokens viewed as windows, the windows'
sizes read off the windows tensor (`x.shape[:-1]`), a bias added to the scores. One loop over
the windows runs from the block's norm through the output projection, the sizes written from
the sizes bound (a size is no reader of the chunk); the attention's bias is no reason to keep
the loop's rows unscaled (only a loop over queries cuts keys by the mask)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import torch

from analysis.capture import capture
from analysis.fastpath import eager_attention
from analysis.loader import load_model_file
from analysis.search import propagate
from analysis.plan import Region
from codegen.cli import main

MODEL = """
    import torch
    import torch.nn.functional as F
    from torch import nn

    WINDOW = 4

    class WindowAttention(nn.Module):
        def __init__(self, width=32, heads=2):
            super().__init__()
            self.heads = heads
            self.q_proj, self.k_proj = nn.Linear(width, width), nn.Linear(width, width)
            self.v_proj, self.o_proj = nn.Linear(width, width), nn.Linear(width, width)
            self.register_buffer("bias", torch.randn(1, heads, WINDOW**2, WINDOW**2))

        def forward(self, windows):
            shape = windows.shape[:-1]  # sizes read off the windows
            q = self.q_proj(windows).view(*shape, self.heads, -1).transpose(1, 2)
            k = self.k_proj(windows).view(*shape, self.heads, -1).transpose(1, 2)
            v = self.v_proj(windows).view(*shape, self.heads, -1).transpose(1, 2)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=self.bias)
            return self.o_proj(y.transpose(1, 2).reshape(*shape, -1).contiguous())

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Linear(3, 32)
            self.norm = nn.LayerNorm(32)
            self.attn = WindowAttention()

        def forward(self, x):
            b, height, width, _ = x.shape
            h = self.embed(x).view(b, height * width, 32)
            y = self.norm(h).view(b, height // WINDOW, WINDOW, width // WINDOW, WINDOW, 32)
            windows = y.transpose(2, 3).contiguous().view(-1, WINDOW * WINDOW, 32)
            out = self.attn(windows)
            out = out.view(b, height // WINDOW, width // WINDOW, WINDOW, WINDOW, 32)
            out = out.transpose(2, 3).reshape(b, height * width, 32)
            return h + out

    def make_model():
        torch.manual_seed(0)
        return Model().eval()

    def make_inputs():
        return (torch.randn(1, 64, 64, 3, generator=torch.Generator().manual_seed(0)),)

    def dynamic_shapes():
        h, w = torch.export.Dim("h4", min=2, max=64), torch.export.Dim("w4", min=2, max=64)
        return {"x": {1: 4 * h, 2: 4 * w}}
"""


def _model(tmp_path: Path) -> Path:
    path = tmp_path / "model.py"
    path.write_text(textwrap.dedent(MODEL))
    return path


def test_one_loop_over_windows_runs_from_the_norm_through_the_output_projection(
    tmp_path: Path,
) -> None:
    graph = eager_attention(capture(load_model_file(_model(tmp_path))))
    names = [node.name for node in graph.nodes]
    assert not any(  # static sizes read off a tensor are numbers (the window's 16 tokens)
        node.target is torch.ops.aten.sym_size.int and isinstance(node.meta, int)
        for node in graph.nodes
    )
    norm = next(n for n in names if n.startswith("layer_norm"))
    attention = next(n for n in names if n.startswith("scaled_dot_product"))
    o_proj = [n for n in names if n.startswith("linear")][-1]
    span = tuple(names[names.index(norm) : names.index(o_proj) + 1])
    region = propagate(graph, span, attention, 0)
    assert isinstance(region, Region), region
    assert {norm, o_proj} <= set(region.loop_dims), region.loop


def test_the_windows_loop_makes_the_windows_itself_and_verifies(tmp_path: Path, capsys) -> None:
    """Emitted, the block is one loop over rows of windows that makes each chunk's windows and
    attends over them; it verifies at the example's size and another, and measures its
    estimate."""
    path = _model(tmp_path)
    out = tmp_path / "out"
    args = ["emit", str(path), "--out", str(out), "--memory-ratio", "0.1", "--max-slowdown", "100"]
    assert main(args) == 0  # verified
    line = capsys.readouterr().out
    assert "1 chunk loop(s)" in line, line
    source = (out / "model.py").read_text()
    loop = source.split("for start in range(0, h4, chunk):", 1)[1].split("return", 1)[0]
    assert "windows = contiguous.view(-1, 16, 32)" in loop, source
    assert "attn_view = attn_q_proj.view((stop - start) * w4, 16, 2, -1)" in loop, source
    planned = line.split("estimated peak ", 1)[1].split(" for ", 1)[0].split(" -> ")[1]
    assert line.split("measured ", 1)[1].split(" -> ")[1].startswith(planned + " "), line
