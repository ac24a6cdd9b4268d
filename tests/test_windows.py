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

#: the model file's functions, shared by both models: a 64-px image, 4-px windows
IMAGE = """
    def make_model():
        torch.manual_seed(0)
        return Model().eval()

    def make_inputs():
        return (torch.randn(1, 64, 64, 3, generator=torch.Generator().manual_seed(0)),)

    def dynamic_shapes():
        h, w = torch.export.Dim("h4", min=2, max=64), torch.export.Dim("w4", min=2, max=64)
        return {"x": {1: 4 * h, 2: 4 * w}}
"""

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
""" + IMAGE


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


SHIFTED = """
    import torch
    import torch.nn.functional as F
    from torch import nn

    WINDOW, SHIFT = 4, 2

    class Block(nn.Module):
        def __init__(self, width=32, heads=2):
            super().__init__()
            self.heads = heads
            self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)

        def forward(self, x):
            b, height, width, c = x.shape
            windows = x.view(b, height // WINDOW, WINDOW, width // WINDOW, WINDOW, c)
            windows = windows.permute(0, 1, 3, 2, 4, 5).reshape(-1, WINDOW * WINDOW, c)
            qkv = self.qkv(windows).reshape(windows.size(0), -1, 3, self.heads, c // self.heads)
            q, k, v = qkv.permute(2, 0, 3, 1, 4)
            scores = (q * 0.25) @ k.transpose(-2, -1)
            # the shifted windows' mask as torchvision builds it: a small image of region
            # numbers, filled slice by slice (25 regions here, 9 in Swin), called on the windows for its dtype and device
            mask = windows.new_zeros((height, width))
            count = 0
            cuts = (0, -WINDOW, -3, -SHIFT, -1, None)
            for h in [slice(a, b) for a, b in zip(cuts, cuts[1:])]:
                for w in [slice(a, b) for a, b in zip(cuts, cuts[1:])]:
                    mask[h, w] = count
                    count += 1
            mask = mask.view(height // WINDOW, WINDOW, width // WINDOW, WINDOW)
            mask = mask.permute(0, 2, 1, 3).reshape(-1, WINDOW * WINDOW)
            mask = mask.unsqueeze(1) - mask.unsqueeze(2)
            mask = mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)
            n = mask.size(0)
            scores = scores.view(-1, n, self.heads, WINDOW**2, WINDOW**2)
            scores = scores + mask.unsqueeze(1).unsqueeze(0)
            attn = scores.view(-1, self.heads, WINDOW**2, WINDOW**2).softmax(-1)
            out = (attn @ v).transpose(1, 2).reshape(-1, WINDOW * WINDOW, c)
            return self.proj(out)

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Linear(3, 32)
            self.block = Block()

        def forward(self, x):
            return self.block(self.embed(x))
""" + IMAGE


def test_a_mask_built_in_small_steps_between_scores_and_their_add_stays_in_one_loop(
    tmp_path: Path, capsys
) -> None:
    """Swin's shifted-window mask, called on the windows for its dtype (`new_zeros`) and filled
    in a hundred small steps between the scores and the mask's add: the loop over windows runs
    from the projection in through the output projection (the small steps do not count
    against how far a stretch reaches), the mask's image is made before the loop, off a value
    of the windows' dtype, and the module verifies."""
    path = tmp_path / "model.py"
    path.write_text(textwrap.dedent(SHIFTED))
    out = tmp_path / "out"
    args = ["emit", str(path), "--out", str(out), "--memory-ratio", "0.1", "--max-slowdown", "100"]
    assert main(args) == 0  # verified
    line = capsys.readouterr().out
    source = (out / "model.py").read_text()
    loops = source.split("for start in range(")
    assert len(loops) == 2, source  # one loop
    loop = loops[1]
    assert "self.qkv(" in loop and "self.proj(" in loop and "softmax" in loop, source
    before = loops[0].rsplit("def forward", 1)[1]
    assert ".new_zeros(" in before, source
    planned = line.split("estimated peak ", 1)[1].split(" for ", 1)[0].split(" -> ")[1]
    assert line.split("measured ", 1)[1].split(" -> ")[1].startswith(planned + " "), line


def test_a_stretch_reaches_past_small_steps_to_the_projection(tmp_path: Path) -> None:
    """A stretch reaches as far from the peak as `WINDOW` nodes whose values are not tiny: from
    the mask's add, a hundred small steps after the scores, back to the qkv projection."""
    from analysis.memory import estimate_graph
    from analysis.select import _candidates

    path = tmp_path / "model.py"
    path.write_text(textwrap.dedent(SHIFTED))
    graph = eager_attention(capture(load_model_file(path)))
    names = [node.name for node in graph.nodes]
    qkv = next(n for n in names if n.startswith("linear") and "qkv" in str(graph[n].args[1]))
    add = next(n for n in names if n.startswith("add") and graph[n].tensor.rank == 5)
    assert names.index(add) - names.index(qkv) > 100  # more than `WINDOW` nodes
    candidates = _candidates(graph, (), estimate_graph(graph), add, False)
    assert any(qkv in region.loop_dims for region in candidates)
