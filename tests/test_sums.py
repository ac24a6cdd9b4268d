"""NOTE [Sums over the chunks]: a loop over heads runs the output projection as a sum over the
heads, added into the residual the block adds it to; never when something in the loop reads the
sum, and in the residual's own storage only when nothing reads it after."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import torch

from analysis.capture import capture
from analysis.fastpath import eager_attention
from analysis.loader import load_model_file
from analysis.loops import lower_region
from analysis.memory import estimate_graph, estimate_plan, region_peak
from analysis.search import Conflict, propagate
from analysis.plan import Region
from codegen.cli import main

MODEL = """
    import torch
    import torch.nn.functional as F
    from torch import nn

    class Attention(nn.Module):
        def __init__(self, width=64, heads=4):
            super().__init__()
            self.heads = heads
            self.q_proj, self.k_proj = nn.Linear(width, width), nn.Linear(width, width)
            self.v_proj, self.o_proj = nn.Linear(width, width), nn.Linear(width, width)

        def forward(self, x):
            b, n, c = x.shape
            q = self.q_proj(x).view(b, n, self.heads, -1).transpose(1, 2)
            k = self.k_proj(x).view(b, n, self.heads, -1).transpose(1, 2)
            v = self.v_proj(x).view(b, n, self.heads, -1).transpose(1, 2)
            y = F.scaled_dot_product_attention(q, k, v)
            return self.o_proj(y.transpose(1, 2).reshape(b, n, c))

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Linear(8, 64)
            self.norm = nn.LayerNorm(64)
            self.attn = Attention()

        def forward(self, x):
            h = self.embed(x)
            BODY

    def make_model():
        torch.manual_seed(0)
        return Model().eval()

    def make_inputs():
        return (torch.randn(1, 512, 8, generator=torch.Generator().manual_seed(0)),)

    def dynamic_shapes():
        return {"x": {1: torch.export.Dim("seq", min=16, max=4096)}}
"""

BODIES = {
    # the residual is read for the last time by the add: the sum takes its storage
    "last read": "return h + self.attn(self.norm(h))",
    # read after: the sum starts as a new tensor
    "read after": "y = h + self.attn(self.norm(h))\n        return y * h.flip(1)",
}


def _graph(tmp_path: Path, body: str):
    path = tmp_path / "model.py"
    path.write_text(textwrap.dedent(MODEL).replace("BODY", body))
    return path, eager_attention(capture(load_model_file(path)))


def _heads_region(graph, end: str = "add") -> Region | Conflict | None:
    names = [node.name for node in graph.nodes]
    first = next(n for n in names if graph[n].target is torch.ops.aten.linear.default)
    span = tuple(names[names.index(first) + 1 : names.index(end) + 1])
    return propagate(graph, span, "scaled_dot_product_attention", 1)


def test_the_output_projection_runs_as_a_sum_over_the_heads_into_the_residual(
    tmp_path: Path,
) -> None:
    _, graph = _graph(tmp_path, BODIES["last read"])
    region = _heads_region(graph)
    assert isinstance(region, Region), region
    ((product, add),) = region.sums
    assert graph[product].target is torch.ops.aten.linear.default and add == "add"
    assert product not in region.loop_dims and product not in region.hoisted
    weight = next(name for name, dim in region.slices if dim == 1)
    assert graph[weight].target == "attn.o_proj.weight"
    assert region.halo(weight)[2] == 16  # a head's 16 input features per head
    (total,) = lower_region(graph, region.with_chunk_size(1)).sums
    assert total.added == "linear" and total.overwrites and total.unless_hooked


def test_a_reader_of_the_sum_inside_the_stretch_ends_it_before_the_reader(
    tmp_path: Path,
) -> None:
    _, graph = _graph(tmp_path, BODIES["read after"])
    names = [node.name for node in graph.nodes]
    reader = next(n for n in names[names.index("add") :] if n != "add" and "add" in graph[n].refs())
    found = _heads_region(graph, end=reader)
    assert isinstance(found, Conflict) and found.end_before[0] == reader, found
    region = _heads_region(graph)
    assert isinstance(region, Region)
    (total,) = lower_region(graph, region.with_chunk_size(1)).sums
    assert not total.overwrites  # the residual is read after the loop


def test_the_sum_s_estimate_is_its_peak_and_lower_than_a_heads_buffer(tmp_path: Path) -> None:
    """The loop holds the residual (the sum) and the normalized input where a loop ending at the
    attention held them and a buffer of the heads' outputs too."""
    _, graph = _graph(tmp_path, BODIES["last read"])
    region = _heads_region(graph)
    assert isinstance(region, Region)
    summed = region_peak(estimate_plan(graph, (region.with_chunk_size(1),)), 0)
    names = [node.name for node in graph.nodes]
    buffered = _heads_region(graph, end="scaled_dot_product_attention")
    assert isinstance(buffered, Region) and not buffered.sums
    held = region_peak(estimate_plan(graph, (buffered.with_chunk_size(1),)), 0)
    width = 512 * 64 * 4
    assert summed <= held - width, (summed, held)
    assert estimate_graph(graph).peak > summed
    assert names  # the graph ran


def test_an_emitted_sum_is_verified_and_measures_its_estimate(tmp_path: Path, capsys) -> None:
    """(Where the residual is read after the loop, a sum would hold no less than a buffer of
    the heads' outputs, and selection keeps the loop that ends at the attention.)"""
    path, _ = _graph(tmp_path, BODIES["last read"])
    out = tmp_path / "out"
    assert main(["emit", str(path), "--out", str(out), "--memory-ratio", "0.3"]) == 0
    line = capsys.readouterr().out
    source = (out / "model.py").read_text()
    assert "_add_linear(" in source, source
    estimated = line.split("estimated peak ", 1)[1].split(" for ", 1)[0]
    measured = line.split("measured ", 1)[1].split(";")[0].split(" (")[0].strip()
    assert estimated.split(" -> ")[1] == measured.split(" -> ")[1], line
    code = re.sub(r"\s+", " ", source)  # in the residual's place, unless a hook may keep it
    assert "h.add_(self.attn.o_proj.bias) if not _hooked(self) else h + " in code, source


def test_a_sum_matches_the_original_under_a_hook_and_at_other_lengths(tmp_path: Path) -> None:
    path, _ = _graph(tmp_path, BODIES["last read"])
    out = tmp_path / "out"
    assert main(["emit", str(path), "--out", str(out), "--memory-ratio", "0.3"]) == 0
    loaded = load_model_file(path)
    namespace: dict = {}
    exec(compile((out / "model.py").read_text(), str(out / "model.py"), "exec"), namespace)
    generated_class = next(
        v for k, v in namespace.items() if k.startswith("Chunked") and isinstance(v, type)
    )
    model = loaded.module
    generated = generated_class.from_module(model)
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    handle = generated.embed.register_forward_hook(lambda m, a, o: seen.append((o, o.clone())))
    try:
        for length in (17, 300):
            x = torch.randn(1, length, 8, generator=torch.Generator().manual_seed(length))
            with torch.no_grad():
                want, got = model(x), generated(x)
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
            kept, then = seen[-1]  # the hook ran and keeps the embedding: it is left as it was
            torch.testing.assert_close(kept, then, rtol=0, atol=0)
    finally:
        handle.remove()
    x = torch.randn(1, 40, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # with no hook, the sum takes the embedding's place
        torch.testing.assert_close(generated(x), model(x), rtol=1e-4, atol=1e-5)
