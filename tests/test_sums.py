"""NOTE [Sums over the chunks]: a loop over heads runs the output projection as a sum over the
heads, added into the residual the block adds it to; never when something in the loop reads the
sum, and in the residual's own storage only when nothing reads it after."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from analysis.capture import build_graph, capture, export
from analysis.fastpath import eager_attention
from analysis.loader import LoadedModel, load_model_file
from analysis.loops import lower_region
from analysis.lower import lower
from analysis.memory import estimate_graph, estimate_plan, region_peak
from analysis.search import Conflict, propagate
from analysis.plan import Region
from analysis.select import finish_plan
from codegen.cli import main
from codegen.emit import emit_module
from codegen.verify import verify

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
    assert not total.overwrites  # the residual is read after the loop: a tensor of its own


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
    """(Where the residual is read after the loop, the sum is a tensor of its own: tested by
    the property test below.)"""
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


class _Block(torch.nn.Module):
    """A pre-norm attention block: the residual added on either side, the projection with or
    without its bias, and the residual read again after, or not."""

    def __init__(self, width: int, heads: int, bias: bool, left: bool, again: bool) -> None:
        super().__init__()
        self.heads, self.left, self.again = heads, left, again
        self.embed = torch.nn.Linear(4, width)
        self.norm = torch.nn.LayerNorm(width)
        self.qkv = torch.nn.Linear(width, 3 * width)
        self.o_proj = torch.nn.Linear(width, width, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        b, n, c = h.shape
        q, k, v = self.qkv(self.norm(h)).view(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        o = self.o_proj(y.transpose(1, 2).reshape(b, n, c))
        out = h + o if self.left else o + h
        return out * h if self.again else out


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    width=st.sampled_from([16, 24]),
    heads=st.sampled_from([2, 4]),
    bias=st.booleans(),
    left=st.booleans(),
    again=st.booleans(),
    batch=st.integers(1, 2),
    chunk=st.integers(1, 4),
)
def test_random_blocks_sum_their_projection_over_the_heads_exactly(
    width: int, heads: int, bias: bool, left: bool, again: bool, batch: int, chunk: int
) -> None:
    """The heads loop through the projection and the add, made by the search and lowered as
    any plan is, equals the block unchunked, whichever way the sum starts."""
    torch.manual_seed(0)
    model = _Block(width, heads, bias, left, again).eval()
    inputs = (torch.randn(batch, 40, 4),)
    loaded = LoadedModel(Path(__file__), model, inputs, None)
    graph = build_graph(export(loaded), loaded)
    names = [node.name for node in graph.nodes]
    attention = next(n for n in names if "scaled_dot_product" in str(graph[n].target))
    add = next(n for n in names if graph[n].target is torch.ops.aten.add.Tensor)
    qkv = next(n for n in names[names.index("layer_norm") :] if "linear" in n)
    region = propagate(graph, tuple(names[names.index(qkv) : names.index(add) + 1]), attention, 1)
    assert isinstance(region, Region) and len(region.sums) == 1, region
    (total,) = lower_region(graph, region.with_chunk_size(chunk)).sums
    assert total.added is not None and total.overwrites != again
    original = estimate_graph(graph).peak
    plan = finish_plan(graph, (region.with_chunk_size(chunk),), original, original)
    emitted = emit_module(graph, plan, model, "test", "test", lower(graph, plan))
    verify(emitted.source, model, inputs)  # raises unless chunked equals unchunked
