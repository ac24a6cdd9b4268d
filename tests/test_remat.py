"""Recomputed values (NOTE [Recomputed values]): a large mask made once from small values is
rebuilt in front of each reader, inside its chunk loop, and the memory it held is gone."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch

from analysis.capture import capture
from analysis.fastpath import eager_attention
from analysis.loader import load_model_file
from codegen.measure import measure_peak
from analysis.memory import estimate_graph, estimate_plan, local_region_peak, region_peak
from analysis.loops import lower_region, without_overwrites
from analysis.plan import Region
from analysis.search import propagate
from analysis.select import _merged
from analysis.pipeline import plan_model
from analysis.remat import queries_last, rematerialized
from analysis.select import Target, plan_for_range
from analysis.lower import lower
from codegen import cli
from codegen.emit import emit_module
from codegen.generate import generate
from codegen.verify import verify
from tests.test_dimflow import Fn
from tests.test_dimflow import capture as capture_fn

MODEL = """
    import torch
    from torch import nn
    import torch.nn.functional as F

    class Layer(nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv = nn.Linear(32, 96)
            self.out = nn.Linear(32, 32)

        def forward(self, x, mask):
            b, t, _ = x.shape
            q, k, v = self.qkv(x).view(b, t, 3, 4, 8).permute(2, 0, 3, 1, 4)
            y = F.scaled_dot_product_attention(q, k, v, mask)
            return x + self.out(y.transpose(1, 2).reshape(b, t, 32))

    class Stack(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList(Layer() for _ in range(3))

        def forward(self, x, pad):
            t = x.shape[1]
            i = torch.arange(t)
            # built once, read by every layer, as transformers does
            mask = ((i[None, :] <= i[:, None]) & pad.bool()[:, None, None, :]).expand(1, 1, t, t)
            for layer in self.layers:
                x = layer(x, mask)
            return x

    def make_model():
        torch.manual_seed(0)
        return Stack()

    def make_inputs():
        g = torch.Generator().manual_seed(0)
        pad = torch.ones(1, 512, dtype=torch.long)
        pad[:, :7] = 0
        return (torch.randn(1, 512, 32, generator=g), pad)
"""


def _model(tmp_path: Path) -> Path:
    path = tmp_path / "stack.py"
    path.write_text(textwrap.dedent(MODEL))
    return path


def test_shared_mask_is_rebuilt_in_front_of_each_reader(tmp_path: Path) -> None:
    graph = capture(load_model_file(_model(tmp_path)))
    again = rematerialized(graph)
    assert again is not None
    readers = [n for n in again.nodes if "scaled_dot_product_attention" in str(n.target)]
    assert len(readers) == 3
    for reader in readers:
        mask = again[reader.args[3].name]
        assert mask.name.endswith("_again_" + str(readers.index(reader) + 1))
        assert mask.module_path == reader.module_path
        # the copy sits right in front of its reader
        assert again.position(reader.name) - again.position(mask.name) == 1
    copied = {n.name.rsplit("_again_", 1)[0] for n in again.nodes if "_again_" in n.name}
    assert copied and all(name in graph for name in copied)
    assert not copied & {n.name for n in again.nodes}, "the mask is no longer made up front"


def test_pipeline_keeps_the_recomputed_graph_when_it_lowers_the_peak(tmp_path: Path) -> None:
    path = _model(tmp_path)
    planned = plan_model(path, Target(ratio=0.1))
    assert any("_again_" in n.name for n in planned.graph.nodes)
    plain = plan_for_range(capture(load_model_file(path)), Target(ratio=0.1))
    assert planned.plan.planned_peak_bytes < plain.planned_peak_bytes
    loaded = planned.loaded
    source = emit_module(
        planned.graph,
        planned.plan,
        loaded.module,
        "test",
        "test",
        lower(planned.graph, planned.plan),
    ).source
    module = verify(source, loaded.module, loaded.inputs)
    original = measure_peak(loaded.module, loaded.inputs)
    measured = measure_peak(module, loaded.inputs)
    # the 1 MiB mask never exists whole: each loop makes its chunk's rows
    assert measured < original - 2**20
    assert source.count("_le = unsqueeze <= ") == 3 and "Causal mask" in source


def test_values_made_from_values_as_large_are_not_recomputed() -> None:
    def body(x: torch.Tensor) -> torch.Tensor:
        h = x * 2.0  # as large as its source: keeping x instead would save nothing
        y = (x @ x.transpose(-1, -2)).softmax(-1) @ x
        return y + h

    graph, _ = capture_fn(Fn(body), (torch.randn(1, 64, 16),))
    assert rematerialized(graph) is None


def test_a_mask_read_right_where_it_is_made_is_left_alone() -> None:
    def body(x: torch.Tensor) -> torch.Tensor:
        i = torch.arange(x.shape[1])
        return x.masked_fill(i[None, :] > i[:, None], 0.0)

    graph, _ = capture_fn(Fn(body), (torch.randn(64, 64),))
    assert rematerialized(graph) is None


BUCKETS = """
    import math
    import torch
    from torch import nn
    import torch.nn.functional as F

    class Layer(nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv = nn.Linear(32, 96)

        def forward(self, x, bias):
            b, t, _ = x.shape
            q, k, v = self.qkv(x).view(b, t, 3, 4, 8).permute(2, 0, 3, 1, 4)
            return x + F.scaled_dot_product_attention(q, k, v, bias).transpose(1, 2).reshape(b, t, 32)

    class Encoder(nn.Module):
        \"\"\"T5-style: a relative position bias made once from bucketed distances, read by
        every layer.\"\"\"

        def __init__(self):
            super().__init__()
            self.buckets = nn.Embedding(16, 4)
            self.layers = nn.ModuleList(Layer() for _ in range(2))

        def forward(self, x):
            t = x.shape[1]
            distance = torch.arange(t)[None, :] - torch.arange(t)[:, None]
            bucket = (distance > 0).to(torch.long) * 8
            far = torch.log(distance.abs().float().clamp_min(1.0) / 4) / math.log(8) * 4
            far = torch.min(far.to(torch.long) + 4, torch.full_like(distance, 7))
            bucket += torch.where(distance.abs() < 4, distance.abs(), far)  # in place
            bias = self.buckets(bucket).permute(2, 0, 1)[None]
            for layer in self.layers:
                x = layer(x, bias)
            return x

    def make_model():
        torch.manual_seed(0)
        return Encoder()

    def make_inputs():
        return (torch.randn(1, 512, 32, generator=torch.Generator().manual_seed(0)),)
"""


def test_a_bias_built_with_in_place_ops_is_recomputed_per_layer(tmp_path: Path) -> None:
    path = tmp_path / "encoder.py"
    path.write_text(textwrap.dedent(BUCKETS))
    planned = plan_model(path, Target(ratio=0.2))
    graph = planned.graph
    assert graph.before is not None, "the recomputing graph should win"
    assert any(n.mutates and "_again_" in n.name for n in graph.nodes)  # the += runs per copy
    # the original's peak is the captured graph's, whatever the rewrite saves by itself
    assert planned.plan.original_peak_bytes == estimate_graph(graph.captured).peak
    loaded = planned.loaded
    source = emit_module(
        graph, planned.plan, loaded.module, "test", "test", lower(graph, planned.plan)
    ).source
    module = verify(source, loaded.module, loaded.inputs)
    assert measure_peak(module, loaded.inputs) < 0.3 * measure_peak(loaded.module, loaded.inputs)


#: shared masks that must not be recomputed: something writes what the chain reads or makes
WRITTEN = {
    "through_a_view": "mask = i[None, :] <= i[:, None]\n        mask[:, :64] = True",
    "input_changed_later": "mask = i[None, :] >= i[:, None]\n        i.clamp_(max=63)",
    "in_place_on_a_view_of_an_input": (
        "j = i[None, :]\n        j.sub_(1)\n        mask = j <= i[:, None]"
    ),
}


@pytest.mark.parametrize("case", sorted(WRITTEN))
def test_masks_written_in_place_are_not_recomputed(case: str, tmp_path: Path) -> None:
    source = textwrap.dedent(MODEL).replace(
        "mask = ((i[None, :] <= i[:, None]) & pad.bool()[:, None, None, :]).expand(1, 1, t, t)",
        WRITTEN[case],
    )
    path = tmp_path / "stack.py"
    path.write_text(source)
    planned = plan_model(path, Target(ratio=0.1))
    assert not any("_again_" in n.name for n in planned.graph.nodes)
    loaded = planned.loaded
    verify(
        emit_module(
            planned.graph, planned.plan, loaded.module, "t", "t", lower(planned.graph, planned.plan)
        ).source,
        loaded.module,
        loaded.inputs,
    )


DECODER = """
    import torch
    import torch.nn.functional as F
    from torch import nn


    class RMSNorm(nn.Module):
        def __init__(self, width):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(width))

        def forward(self, x):
            return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6))


    class Attention(nn.Module):
        def __init__(self, width, heads, kv_heads):
            super().__init__()
            self.heads, self.kv_heads, self.dim = heads, kv_heads, width // heads
            self.q = nn.Linear(width, width, bias=False)
            self.k = nn.Linear(width, kv_heads * self.dim, bias=False)
            self.v = nn.Linear(width, kv_heads * self.dim, bias=False)
            self.o = nn.Linear(width, width, bias=False)

        def forward(self, x):
            b, t, _ = x.shape
            q = self.q(x).view(b, t, self.heads, self.dim).transpose(1, 2)
            k = self.k(x).view(b, t, self.kv_heads, self.dim).transpose(1, 2)
            v = self.v(x).view(b, t, self.kv_heads, self.dim).transpose(1, 2)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
            return self.o(y.transpose(1, 2).reshape(b, t, -1))


    class Layer(nn.Module):
        def __init__(self, width):
            super().__init__()
            self.norm1, self.norm2 = RMSNorm(width), RMSNorm(width)
            self.attn = Attention(width, 4, 2)
            self.up = nn.Linear(width, 4 * width)
            self.down = nn.Linear(4 * width, width)

        def forward(self, x):
            x = x + self.attn(self.norm1(x))
            return x + self.down(F.silu(self.up(self.norm2(x))))


    class Decoder(nn.Module):
        def __init__(self, width=64, vocab=128):
            super().__init__()
            self.embed = nn.Embedding(vocab, width)
            self.layers = nn.ModuleList(Layer(width) for _ in range(2))
            self.head = nn.Linear(width, vocab, bias=False)

        def forward(self, ids):
            x = self.embed(ids)
            for layer in self.layers:
                x = layer(x)
            return self.head(x)


    def make_model():
        torch.manual_seed(0)
        return Decoder().eval()


    def make_inputs():
        return (torch.randint(0, 128, (1, 2048), generator=torch.Generator().manual_seed(0)),)


    def dynamic_shapes():
        return {"ids": {1: torch.export.Dim("seq", min=2, max=8192)}}
"""


def test_keys_and_values_come_before_the_queries_with_the_norm_recomputed(tmp_path: Path) -> None:
    """NOTE [Keys before queries]: in each layer the key and value projections run first; the
    queries read their own copy of the norm's last multiplications, made from the residual
    stream (alive until the residual add anyway) and the small per-row scale, in the decoder
    layer's scope. With loops holding buffers of their own, the rewrite lowers the planned peak
    (the normalised input is gone before the queries' loop); loops writing their outputs in
    place reach as low without it, and the pipeline's plan, either way, verifies."""
    path = tmp_path / "decoder.py"
    path.write_text(textwrap.dedent(DECODER))
    graph = eager_attention(capture(load_model_file(path)))
    moved = queries_last(graph)
    assert moved is not None
    order = [node.name for node in moved.nodes]
    assert order.index("linear_1") < order.index("linear") and order.index(
        "linear_2"
    ) < order.index(
        "linear"
    )  # k, v, then q
    (query_norm,) = [ref for ref in moved["linear"].refs() if ref != "p_layers_0_attn_q_weight"]
    assert "_again_" in query_norm and moved[query_norm].calls[-1] == "layers.0"
    copied = moved[moved[query_norm].args[1].name]
    assert set(copied.refs()) == {"embedding", "rsqrt"}  # the residual stream and the scale
    target = Target(ratio=0.2)
    with without_overwrites():  # NOTE [Outputs in place] reaches as low on the plain graph
        plain = plan_for_range(graph, target).planned_peak_bytes
        assert plan_for_range(moved, target).planned_peak_bytes < plain * 0.75
    planned, emitted = generate(path, target, "--memory-ratio 0.2")
    assert planned.plan.planned_peak_bytes < plain * 0.75
    assert "_causal_attention(" in emitted.source
    verify(emitted.source, planned.loaded.module, planned.loaded.inputs)


def _decoder_graph(tmp_path: Path) -> tuple[Any, list[str]]:
    path = tmp_path / "decoder.py"
    path.write_text(textwrap.dedent(DECODER))
    graph = queries_last(eager_attention(capture(load_model_file(path))))
    return graph, [node.name for node in graph.nodes]


def _stretch(graph: Any, names: list[str], first: str, last: str, seed: str, dim: int) -> Region:
    region = propagate(graph, tuple(names[names.index(first) : names.index(last) + 1]), seed, dim)
    assert isinstance(region, Region), region
    return region


def test_a_loops_local_peak_is_its_peak_in_the_whole_plan(tmp_path: Path) -> None:
    """Sizing uses a loop's local peak. The queries' loop writes the attention call inline, so
    nothing holds the normalised input the call was passed any more: it is gone before the loop
    (`_released`), in the local estimate as in the whole plan's."""
    graph, names = _decoder_graph(tmp_path)
    region = _stretch(graph, names, "mul_again_1", "add_1", "scaled_dot_product_attention", 2)
    profile = estimate_graph(graph)
    for rows in (64, 256):
        sized = region.with_chunk_size(rows)
        local = local_region_peak(graph, profile, lower_region(graph, sized))
        assert local == region_peak(estimate_plan(graph, (sized,)), 0)


def test_neighbouring_loops_run_as_one_where_that_is_faster(tmp_path: Path) -> None:
    """The queries' attention loop and the feed-forward's loop after it become one loop over
    both and the ops between, reaching on to the residual add (`_merged`)."""
    graph, names = _decoder_graph(tmp_path)
    attention = _stretch(graph, names, "mul_again_1", "linear_3", "scaled_dot_product_attention", 2)
    feed_forward = _stretch(graph, names, "linear_4", "linear_5", "linear_4", 1)
    regions = (attention.with_chunk_size(256), feed_forward.with_chunk_size(256))
    bound = estimate_plan(graph, regions).peak
    (merged,) = _merged(graph, regions, bound)
    assert merged.span[0] == "mul_again_1" and "linear_5" in merged.loop_dims
    # one buffer, the residual add after the feed-forward: not the attention's output as well
    assert [name for name, _ in merged.outputs] == ["add_3"]
    assert estimate_plan(graph, (merged,)).peak <= bound


MULTIHEAD = """
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln_1, self.ln_2 = nn.LayerNorm(64), nn.LayerNorm(64)
            self.attention = nn.MultiheadAttention(64, 4, batch_first=True)
            self.mlp = nn.Sequential(nn.Linear(64, 256), nn.GELU(), nn.Linear(256, 64))

        def forward(self, x):
            y = self.ln_1(x)
            y, _ = self.attention(y, y, y, need_weights=False)
            x = x + y
            return x + self.mlp(self.ln_2(x))

    def make_model():
        torch.manual_seed(0)
        return nn.Sequential(Block(), Block()).eval()

    def make_inputs():
        return (torch.randn(1, 1024, 64, generator=torch.Generator().manual_seed(0)),)
"""


def test_a_packed_projection_is_split_and_its_queries_made_in_the_loop(tmp_path: Path) -> None:
    """NOTE [Packed projections]: nn.MultiheadAttention's packed in-projection becomes three
    linears over blocks of its weight, with no contiguous copy of the packed result; the
    queries' norm is recomputed for them (a `layer_norm` op), and the module verifies with a
    lower peak than the packed graph's plan."""
    from analysis.packed import split_packed

    path = tmp_path / "multihead.py"
    path.write_text(textwrap.dedent(MULTIHEAD))
    graph = eager_attention(capture(load_model_file(path)))
    split = split_packed(graph)
    assert split is not None
    targets = [n.target for n in split.nodes]
    assert torch.ops.aten.contiguous.default not in targets
    assert targets.count(torch.ops.aten.linear.default) == 2 * (3 + 1 + 2)
    sliced = [n for n in split.nodes if n.target is torch.ops.aten.slice.Tensor]
    assert {n.args[2:] for n in sliced} == {(0, 64), (64, 128), (128, 192)}
    rewritten = rematerialized(graph)
    norms = [n for n in rewritten.nodes if n.target is torch.ops.aten.layer_norm.default]
    assert len(norms) == 2 * 3  # each block's ln_1 once more, for the queries
    packed = plan_for_range(graph, Target(ratio=0.2))
    planned = plan_model(path, Target(ratio=0.2))
    assert planned.plan.planned_peak_bytes < packed.planned_peak_bytes
    assert cli.main(["emit", str(path), "--out", str(tmp_path / "out")]) == 0  # verified
    assert "in_proj_weight[64:128]" in (tmp_path / "out" / "multihead.py").read_text()


PLUMBING = """
    import torch

    class Masked(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Linear(16, 64), torch.nn.Linear(64, 16)

        def forward(self, x):
            h = self.a(x)
            # a shifted-window mask: written region by region into zeros, as Swin builds it
            mask = h.new_zeros(8, 8)
            for count, (r, c) in enumerate((r, c) for r in range(3) for c in range(3)):
                mask[r * 3 : r * 3 + 3, c * 3 : c * 3 + 3] = count
            return self.b(h + mask.view(64))

    def make_model():
        torch.manual_seed(0)
        return Masked().eval()

    def make_inputs():
        return (torch.randn(1, 512, 16),)
"""


def test_a_masks_plumbing_does_not_keep_two_loops_apart(tmp_path: Path) -> None:
    """Loops are merged when few ops that make tensors lie between them (`MERGE_GAP`): the
    slices, in-place writes and scalars of a mask built region by region do not count, so
    torchvision Swin's window scores and its masked softmax can still run as one loop."""
    from analysis.select import MERGE_GAP, _gap

    path = tmp_path / "masked.py"
    path.write_text(textwrap.dedent(PLUMBING))
    graph = capture(load_model_file(path))
    names = [node.name for node in graph.nodes]
    first = next(n.name for n in graph.nodes if n.module_path == "a")
    last = next(n.name for n in graph.nodes if n.module_path == "b")
    assert names.index(last) - names.index(first) > MERGE_GAP + 1  # far apart in nodes
    assert _gap(graph, names, first, last) == 2  # the zeros and the add
