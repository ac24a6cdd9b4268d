"""Loops over image rows through tokens (NOTE [Rows of tokens]): a view of tokens as rows and
columns, a convolution or a window on them, and back, chunked exactly at odd sizes."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import pytest
import sympy

from analysis.capture import build_graph, export
from analysis.loader import load_model_file
from analysis.program import Span, span_at, widened
from analysis.select import Target, make_plan
from codegen.cli import main

#: SegFormer's Mix-FFN: tokens through a linear layer, viewed as an image for a depthwise conv,
#: and back; its wide values are the peak
MIX_FFN = """
import torch
from torch import nn
from torch.nn import functional as F


class MixFFN(nn.Module):
    def __init__(self, channels=16, hidden=128):
        super().__init__()
        self.norm = nn.LayerNorm(channels)
        self.fc1 = nn.Linear(channels, hidden)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.fc2 = nn.Linear(hidden, channels)

    def forward(self, image):
        b, c, height, width = image.shape
        tokens = image.flatten(2).transpose(1, 2)
        h = self.fc1(self.norm(tokens))
        h = h.transpose(1, 2).view(b, -1, height, width)
        h = self.dwconv(h).flatten(2).transpose(1, 2)
        tokens = tokens + self.fc2(F.gelu(h))
        return tokens.transpose(1, 2).reshape(b, c, height, width)


def make_model():
    torch.manual_seed(0)
    return MixFFN().eval()


def make_inputs():
    return (torch.randn(1, 16, 45, 27, generator=torch.Generator().manual_seed(0)),)


def dynamic_shapes():
    return {"image": {2: torch.export.Dim("height", min=8, max=128),
                      3: torch.export.Dim("width", min=8, max=128)}}  # fmt: skip
"""

#: Swin's windows: tokens viewed as an image, cut into 7x7 windows (a split of each of the
#: rows and the columns, a permute, a merge of the windows), attention within each window,
#: and back
WINDOWS = """
import torch
from torch import nn
from torch.nn import functional as F

WINDOW = 7


class WindowBlock(nn.Module):
    def __init__(self, channels=32, heads=2):
        super().__init__()
        self.heads = heads
        self.norm = nn.LayerNorm(channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)
        self.mlp = nn.Sequential(nn.Linear(channels, 4 * channels), nn.GELU(),
                                 nn.Linear(4 * channels, channels))  # fmt: skip

    def forward(self, tokens, height: int, width: int):
        b, n, c = tokens.shape
        x = self.norm(tokens).view(b, height // WINDOW, WINDOW, width // WINDOW, WINDOW, c)
        windows = x.permute(0, 1, 3, 2, 4, 5).reshape(-1, WINDOW * WINDOW, c)
        q, k, v = self.qkv(windows).view(-1, WINDOW * WINDOW, 3, self.heads, c // self.heads
                                         ).permute(2, 0, 3, 1, 4).unbind(0)  # fmt: skip
        y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(-1, WINDOW, WINDOW, c)
        y = y.view(b, height // WINDOW, width // WINDOW, WINDOW, WINDOW, c)
        y = y.permute(0, 1, 3, 2, 4, 5).reshape(b, n, c)
        tokens = tokens + self.proj(y)
        return tokens + self.mlp(tokens)


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = WindowBlock()

    def forward(self, image):
        b, c, height, width = image.shape
        return self.block(image.flatten(2).transpose(1, 2), height, width)


def make_model():
    torch.manual_seed(0)
    return Model().eval()


def make_inputs():
    return (torch.randn(1, 32, 63, 35, generator=torch.Generator().manual_seed(0)),)


def dynamic_shapes():
    return {"image": {2: 7 * torch.export.Dim("rows", min=2, max=32),
                      3: 7 * torch.export.Dim("columns", min=2, max=32)}}  # fmt: skip
"""


def _emit(tmp_path: Path, source: str, capsys) -> tuple[str, str]:
    path = tmp_path / "model.py"
    path.write_text(source)
    assert main(["emit", str(path), "--out", str(tmp_path / "out")]) == 0
    return (tmp_path / "out" / "model.py").read_text(), capsys.readouterr().out


def _plan(tmp_path: Path, source: str):
    path = tmp_path / "model.py"
    path.write_text(source)
    loaded = load_model_file(path)
    graph = build_graph(export(loaded), loaded)
    return graph, make_plan(graph, Target(ratio=0.2))


def test_a_loop_over_image_rows_runs_through_tokens_a_view_and_a_depthwise_conv(
    tmp_path: Path, capsys
) -> None:
    """The Mix-FFN's wide values are made a few image rows at a time: the loop slices the
    tokens by whole rows (`width` to a row, a dynamic size), with the conv's halo row on each
    side, and is exact at odd sizes (the CLI verifies the module at two)."""
    graph, plan = _plan(tmp_path, MIX_FFN)
    fc1 = next(n.name for n in graph.nodes if n.module_path == "fc1")
    conv = next(n.name for n in graph.nodes if n.module_path == "dwconv")
    region = next(r for r in plan.regions if fc1 in dict(r.loop))
    assert conv in dict(region.loop)
    units = {scale for *_, scale in region.halos if not isinstance(scale, int)}
    assert units and all(scale.free_symbols for scale in units), region.halos
    assert plan.planned_peak_bytes < 0.4 * plan.original_peak_bytes
    source, out = _emit(tmp_path, MIX_FFN, capsys)
    assert "verified" in out or "measured" in out
    code = "".join(source.split())
    assert "image[:,:,lo_1:hi_1].flatten(2)" in code, source  # rows read with the conv's halo
    assert "self.dwconv(h_1)[:,:,start-lo_1:stop-lo_1]" in code  # still a module call
    assert "[:,(start-lo_1)*width:(stop-lo_1)*width]+fc2" in code  # tokens cropped by rows
    assert "tokens[:,start*width:stop*width]=tokens_chunk" in code
    assert "# Tokens are read and made by whole rows of the image, `width` to a row" in source


def test_windows_of_tokens_are_chunked_by_rows_of_windows(tmp_path: Path, capsys) -> None:
    """Swin's window partition and its reverse (splits of the rows and the columns by the
    window, a permute, a merge into windows): a loop over rows of windows runs the attention
    within the windows of its rows, exact at sizes of whole windows."""
    graph, plan = _plan(tmp_path, WINDOWS)
    attention = next(n.name for n in graph.nodes if "scaled_dot_product" in str(n.target))
    region = next((r for r in plan.regions if attention in dict(r.loop)), None)
    assert region is not None, plan.regions
    assert any(not isinstance(scale, int) for *_, scale in region.halos), region.halos
    source, _ = _emit(tmp_path, WINDOWS, capsys)
    code = "".join(source.split())
    assert "image[:,:,7*start:7*stop].flatten(2)" in code, source  # 7 image rows to a row
    assert ".reshape(1,(stop-start)*49*columns,32)" in code  # the windows' tokens, merged
    write = "block_add[:,start*49*columns:stop*49*columns]="  # black may wrap the chunk
    assert write + "block_add_chunk" in code or write + "(block_add_chunk)" in code, source


def test_a_span_of_tokens_reads_whole_rows_through_a_view() -> None:
    """The arithmetic: rows [start - 1, stop + 1) of an image viewed from tokens, `8*w` to a
    row, are tokens [8w(start - 1), 8w(stop + 1)); back through the merge, tokens of whole
    rows are those rows; a kernel's halo in tokens is rounded up to whole rows."""
    w, h = sympy.symbols("w h", positive=True, integer=True)
    rows = Span(1, 1)
    tokens = rows.read((0, 0, 8 * w), lambda: 64 * h * w)
    assert tokens == Span(1, 1, 1, 64 * h * w, 8 * w)
    assert tokens.units(64 * h * w) == 8 * h
    assert tokens.read((0, 0, Fraction(1)), lambda: 64 * h * w) == tokens
    assert widened(1, 1, 8 * w, (0, 0, 1 / (8 * w))) == (1, 1, 1)
    assert widened(0, 0, 8 * w, (2, 1, 1)) == (2, 1, 8 * w)  # two tokens: two rows at most
    assert span_at(0, 0, 2, lambda: 10) == Span(0, 0, 2, 10)
    with pytest.raises(ValueError):
        span_at(0, 0, Fraction(1, 2), lambda: 10)
