"""Property tests: random chains of supported (and unsupported) ops, chunked equals unchunked,
and no loop ever cuts through an op that mixes its chunked dim."""

from __future__ import annotations

from pathlib import Path

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from analysis.capture import build_graph, export
from analysis.dimflow import tensor_inputs
from analysis.ops import dim_rule
from analysis.loader import LoadedModel
from analysis.select import Target, make_plan
from analysis.lower import lower
from codegen.emit import emit_module
from codegen.verify import verify

#: op codes; each maps [B, T, C] to [B, T, C]
OPS = ("linear", "gelu", "residual", "scale", "softmax_c", "layer_norm", "attention",
       "transpose_twice", "cumsum_t", "mean_c", "exp_shift", "swish", "bias")  # fmt: skip


class Chain(nn.Module):
    def __init__(self, ops: list[str], width: int) -> None:
        super().__init__()
        self.ops = ops
        self.linears = nn.ModuleList(nn.Linear(width, width) for _ in ops)
        self.norm = nn.LayerNorm(width)
        self.bias = nn.Parameter(torch.linspace(-1, 1, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for index, op in enumerate(self.ops):
            if op == "linear":
                x = self.linears[index](x)
            elif op == "gelu":
                x = nn.functional.gelu(x)
            elif op == "residual":
                x = x + self.linears[index](x)
            elif op == "scale":
                x = x * 0.5
            elif op == "softmax_c":
                x = x.softmax(dim=-1)
            elif op == "layer_norm":
                x = self.norm(x)
            elif op == "attention":  # [B, T, T] scores: the memory peak
                x = (x @ x.transpose(1, 2)).softmax(dim=-1) @ x
            elif op == "transpose_twice":
                x = x.transpose(1, 2).contiguous().transpose(1, 2)
            elif op == "cumsum_t":  # no rule: mixes every dim
                x = x.cumsum(dim=1)
            elif op == "mean_c":
                x = x - x.mean(dim=-1, keepdim=True)
            elif op == "exp_shift":  # chains that may run in place
                x = torch.exp(x * 0.1) - 1.0
            elif op == "swish":  # x is read twice: only the sigmoid's result may be overwritten
                x = x * torch.sigmoid(x)
            elif op == "bias":  # a whole parameter first: never overwritten
                x = self.bias + x
        return x


chains = st.lists(st.sampled_from(OPS), min_size=1, max_size=6).map(lambda ops: ops + ["attention"])


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ops=chains,
    batch=st.integers(1, 2),
    length=st.sampled_from([48, 64, 96]),
    width=st.sampled_from([4, 8]),
    position=st.integers(0, 6),
)
def test_random_chains_chunk_correctly(
    ops: list[str], batch: int, length: int, width: int, position: int
) -> None:
    ops = ops[:position] + ["attention"] + ops[position:]
    torch.manual_seed(0)
    model = Chain(ops, width).eval()
    inputs = (torch.randn(batch, length, width),)
    loaded = LoadedModel(Path(__file__), model, inputs, None)
    graph = build_graph(export(loaded), loaded)
    plan = make_plan(graph, Target(ratio=0.3))
    for region in plan.regions:  # the planner's invariant, checked independently
        loop, sliced = dict(region.loop), dict(region.slices)
        for name, dim in region.loop:
            rule = dim_rule(graph[name], graph)
            assert rule is not None and rule.produces(dim), (ops, name)
            for slot, source in enumerate(tensor_inputs(graph[name], graph)):
                want = rule.input_dim(dim, slot)
                if source in loop:
                    assert want == loop[source], (ops, name, source)
                elif want is not None:
                    assert sliced.get(source) is not None, (ops, name, source)
            assert "cumsum" not in str(graph[name].target), (ops, name)
    emitted = emit_module(graph, plan, model, "test", "test", lower(graph, plan))
    verify(emitted.source, model, inputs)  # raises unless chunked equals unchunked
