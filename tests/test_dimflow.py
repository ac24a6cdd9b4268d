"""Numeric tests for the per-op dimension rules (NOTE [Dimension flow] in analysis/dimflow.py).

Each case exports a module that uses one op, finds that op's node in the IR and checks its rule on
real tensors: for every output dim with a group, slicing the grouped input dims (and only those)
must give the full result sliced the same way. The dims the op mixes or broadcasts must be in no
group, and every other dim of size > 1 must be in one, so a rule that is too loose or too strict
fails.
"""

from __future__ import annotations

import itertools
import math
import operator
import sys
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Iterable

import pytest
import sympy
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from analysis.capture import build_graph
from analysis.dimflow import DimRule, out_meta, tensor_inputs
from analysis.ops import dim_rule
from analysis.errors import InternalError
from analysis.ir import Graph, Node, Ref, Source, TensorMeta, evaluate
from analysis.loader import LoadedModel

aten = torch.ops.aten


class Fn(nn.Module):
    """Wrap a function of the inputs as a module, so torch.export can capture it."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, *xs: Any) -> Any:
        return self.fn(*xs)


def rand(*shape: int) -> torch.Tensor:
    return torch.randn(*shape)


def ints(high: int, *shape: int) -> torch.Tensor:
    return torch.randint(0, high, shape)


def causal(t: int) -> torch.Tensor:
    return torch.ones(t, t, dtype=torch.bool).triu(1)


def capture(
    module: nn.Module, inputs: tuple[Any, ...], dynamic: Any = None
) -> tuple[Graph, dict[str, Any]]:
    """Export `module` into the IR and return it with every node's real value."""
    module = module.eval()
    if isinstance(module, Fn) and dynamic is not None:
        dynamic = {"xs": dynamic}  # Fn takes its inputs as *xs
    with torch.no_grad():
        ep = torch.export.export(module, inputs, dynamic_shapes=dynamic, strict=False)
    loaded = LoadedModel(path=Path(__file__), module=module, inputs=inputs, dynamic_shapes=dynamic)
    graph = build_graph(ep, loaded)
    return graph, run_graph(graph, module, inputs, ep.constants)


def run_graph(
    graph: Graph, module: nn.Module, inputs: tuple[Any, ...], constants: dict[str, Any]
) -> dict[str, Any]:
    """Evaluate the IR on real tensors, one op at a time, and return every node's value."""
    state = {**dict(module.named_parameters()), **dict(module.named_buffers()), **constants}
    given_inputs = iter(x for x in inputs if isinstance(x, torch.Tensor))
    env: dict[str, Any] = {}
    with torch.no_grad():
        for node in graph.nodes:
            if node.kind == "input":
                env[node.name] = next(given_inputs)
            elif node.kind == "op":
                args, kwargs = bind(node, graph, env, lambda slot, value: value)
                env[node.name] = node.target(*args, **kwargs)
            else:
                env[node.name] = state[node.target]
    return env


def bind(
    node: Node, graph: Graph, env: dict[str, Any], cut: Callable[[int, Any], Any]
) -> tuple[list[Any], dict[str, Any]]:
    """Return the node's real arguments, passing its tensor inputs through `cut(slot, value)`."""
    slots = itertools.count()

    def real(value: Any) -> Any:
        if isinstance(value, Ref):
            meta = graph[value.name].meta
            tensor_like = isinstance(meta, (TensorMeta, tuple))
            return cut(next(slots), env[value.name]) if tensor_like else env[value.name]
        if isinstance(value, sympy.Expr):
            return evaluate(value, graph.hints)
        if isinstance(value, (list, tuple)):
            return type(value)(real(item) for item in value)
        return value

    args = [real(a) for a in node.args]
    kwargs = {key: real(v) for key, v in node.kwargs}
    assert next(slots) == len(tensor_inputs(node, graph)), "slot numbering disagrees"
    return args, kwargs


def narrow(value: Any, dim: int, start: int, length: int) -> Any:
    if isinstance(value, torch.Tensor):
        return value.narrow(dim, start, length)
    return type(value)(narrow(item, dim, start, length) for item in value)


def assert_same(got: Any, want: Any, where: str) -> None:
    if isinstance(want, torch.Tensor):
        torch.testing.assert_close(got, want, msg=lambda m: f"{where}: {m}")
    else:
        assert len(got) == len(want), where
        for g, w in zip(got, want):
            assert_same(g, w, where)


def sub_ranges(size: int) -> list[tuple[int, int]]:
    """Return (start, length) chunks of a dim: one inside it, and a length-1 tail like a remainder."""
    if size == 1:
        return [(0, 1)]
    return [(1, min(2, size - 1)), (size - 1, 1)]


def check_numeric(node: Node, graph: Graph, env: dict[str, Any], rule: DimRule) -> None:
    """Assert that slicing each output dim's group reproduces the sliced full result."""
    full_args, full_kwargs = bind(node, graph, env, lambda slot, value: value)
    with torch.no_grad():
        full = node.target(*full_args, **full_kwargs)
    out_shape = [evaluate(s, graph.hints) for s in out_meta(node).shape]
    assert len(rule.groups) == len(out_shape), f"{node.name}: one group per output dim"
    for j, group in enumerate(rule.groups):
        for start, length in sub_ranges(out_shape[j]) if group else []:
            check_chunk(node, graph, env, rule, full, j, start, length)


def check_chunk(
    node: Node,
    graph: Graph,
    env: dict[str, Any],
    rule: DimRule,
    full: Any,
    j: int,
    start: int,
    length: int,
) -> None:
    """Assert the op on inputs cut to one chunk of output dim `j` gives that chunk of `full`.

    An input read through a window (NOTE [Halos]) is cut to the rows the chunk's outputs read,
    from a multiple of the stride, clipped to its length; the op's result on it is cropped back
    to the chunk, as a loop runs it."""
    halos = {slot: rule.halo_of(j, slot) for slot, _ in rule.groups[j]}
    windows = {slot: halo for slot, halo in halos.items() if halo != (0, 0, 1)}
    assert len(windows) <= 1, f"{node.name}: one input read through a window per dim"
    origin = start  # the output row the op's first result row is
    made = None  # the rows it makes, where that is not the chunk's

    def cut(slot: int, value: Any) -> Any:
        nonlocal origin, made
        dim = rule.input_dim(j, slot)
        if dim is None:
            return value
        before, after, stride = halos[slot]
        if rule.shift_of(j):  # NOTE [Cyclic shifts]: rows moved by k, round the length
            size = input_shapes(node, graph)[slot][dim]
            rows = (torch.arange(start, start + length) - rule.shift_of(j)) % size
            return value.index_select(dim, rows)
        first = max(math.floor(stride * start) - before, 0)
        end = math.ceil(stride * (start + length)) + after
        stop = min(end, input_shapes(node, graph)[slot][dim])
        if slot in windows:
            at = Fraction(first) / Fraction(stride)
            assert at.denominator == 1, f"{node.name}: a window's slice starts off the stride"
            origin = int(at)
            if not before and not after:  # a reshape's split or merge: whole rows of it
                made = math.ceil((stop - first) / Fraction(stride))
        return narrow(value, dim, first, stop - first)

    where = f"{node.name} ({node.target}) out dim {j} [{start}:{start + length}]"
    try:
        args, kwargs = bind(node, graph, env, cut)
        for arg, item in rule.resized(j):  # the rows the op makes of what it reads
            args[arg] = list(args[arg])
            args[arg][item] = made if made is not None else length
        for arg, value in rule.swapped(j):  # a resampling to a size, by its factors instead
            while len(args) <= arg:
                args.append(None)
            args[arg] = value
        for arg, sign, default in rule.offsets(j):  # tril's diagonal follows the chunk start
            while len(args) <= arg:
                args.append(default)
            args[arg] = args[arg] + sign * start
        with torch.no_grad():
            if rule.whole_of(j):  # NOTE [Statistics before the loop]: the whole's statistics
                whole, _ = bind(node, graph, env, lambda slot, value: value)
                got = with_whole_statistics(node, args, whole)
            else:
                got = node.target(*args, **kwargs)
    except (IndexError, RuntimeError) as exc:
        raise AssertionError(f"{where}: cannot cut the inputs to this chunk: {exc}") from None
    if origin < start:
        got = narrow(got, j, start - origin, length)
    assert_same(got, narrow(full, j, start, length), where)


def with_whole_statistics(node: Node, args: list[Any], whole: list[Any]) -> torch.Tensor:
    """A group norm of a chunk, normalized by the whole input's statistics, computed here
    from the definition: (x - mean) / sqrt(var + eps) * weight + bias per group."""
    assert node.target is torch.ops.aten.group_norm.default, f"no reference for {node.target}"
    x, groups, weight, bias, eps = (list(args) + [None, None, 1e-5])[:5]
    source = whole[0].unflatten(1, (groups, -1)).double()
    dims = tuple(range(2, source.dim()))
    var, mean = torch.var_mean(source, dim=dims, correction=0, keepdim=True)
    y = (x.unflatten(1, (groups, -1)).double() - mean) / (var + eps).sqrt()
    y = y.flatten(1, 2).to(x.dtype)
    shape = (1, -1) + (1,) * (x.dim() - 2)
    if weight is not None:
        y = y * weight.view(shape)
    return y + bias.view(shape) if bias is not None else y


def input_shapes(node: Node, graph: Graph) -> list[list[int]]:
    shapes = []
    for name in tensor_inputs(node, graph):
        meta = graph[name].meta
        meta = meta[0] if isinstance(meta, tuple) else meta
        shapes.append([evaluate(s, graph.hints) for s in meta.shape])
    return shapes


def check_mixed(
    node: Node, graph: Graph, rule: DimRule, mixed: set[tuple[int, int]], uncut: set[int]
) -> None:
    """Assert exactly `mixed` input dims and `uncut` output dims are in no group (size-1 aside)."""
    for slot, shape in enumerate(input_shapes(node, graph)):
        for dim, size in enumerate(shape):
            grouped = rule.group_of(slot, dim) is not None
            if (slot, dim) in mixed:
                assert not grouped, f"{node.name}: input {slot} dim {dim} must be in no group"
            elif size > 1:
                assert grouped, f"{node.name}: input {slot} dim {dim} should move with an output"
    out_shape = [evaluate(s, graph.hints) for s in out_meta(node).shape]
    for j, size in enumerate(out_shape):
        if j in uncut:
            assert rule.groups[j] == (), f"{node.name}: output dim {j} must have no group"
        elif size > 1:
            assert rule.groups[j] != (), f"{node.name}: output dim {j} should have a group"


def find(graph: Graph, op: Any, nth: int = 0) -> Node:
    found = [node for node in graph.ops() if node.target == op]
    assert len(found) > nth, f"no {op} in {[str(n.target) for n in graph.ops()]}"
    return found[nth]


@dataclass(frozen=True)
class Case:
    """One op to check: a module using it, its inputs, and the dims its rule must leave out."""

    #: test id
    id: str
    #: a module, or a function of the inputs
    module: nn.Module | Callable[..., Any]
    #: example inputs
    inputs: tuple[Any, ...]
    #: the ATen overload (or operator.getitem) whose node is checked
    op: Any
    #: input (slot, dim) pairs in no group: mixed or broadcast dims
    mixed: frozenset[tuple[int, int]] = frozenset()
    #: output dims with an empty group
    uncut: frozenset[int] = frozenset()
    #: which occurrence of `op` to check
    nth: int = 0
    #: per output dim, the size arguments the rule must resize
    resize: tuple[tuple[tuple[int, int], ...], ...] | None = None
    #: torch.export dynamic_shapes
    dynamic: Any = None

    def build(self) -> nn.Module:
        return self.module if isinstance(self.module, nn.Module) else Fn(self.module)


def case(
    id: str,
    module: Any,
    inputs: tuple[Any, ...],
    op: Any,
    mixed: Iterable[tuple[int, int]] = (),
    uncut: Iterable[int] = (),
    **kw: Any,
) -> Any:
    return pytest.param(
        Case(id, module, inputs, op, frozenset(mixed), frozenset(uncut), **kw), id=id
    )


T, H = 5, 3
seq = torch.export.Dim("seq", min=2, max=64)

with torch.random.fork_rng():  # seeded inputs and parameters; the global RNG is left as it was
    torch.manual_seed(0)
    CASES = [
        # elementwise, aligned from the right; size-1 (broadcast) dims are used whole
        case(
            "add_broadcast",
            lambda x, y: x + y,
            (rand(2, T, 4), rand(T, 1)),
            aten.add.Tensor,
            {(1, 1)},
        ),
        case("add_mask", lambda s, m: s + m, (rand(1, H, T, T), rand(T, T)), aten.add.Tensor),
        case("add_scalar", lambda x: x + 1.5, (rand(2, T, 4),), aten.add.Tensor),
        case(
            "mul_broadcast",
            torch.mul,
            (rand(2, T, 4), rand(1, T, 1)),
            aten.mul.Tensor,
            {(1, 0), (1, 2)},
        ),
        case("div_broadcast", torch.div, (rand(2, T, 4), rand(4).abs() + 1), aten.div.Tensor),
        case(
            "masked_fill_mask",
            lambda s, m: s.masked_fill(m, -1e9),
            (rand(1, H, T, T), causal(T)),
            aten.masked_fill.Scalar,
        ),
        case(
            "where_broadcast",
            torch.where,
            (causal(T), rand(1, H, T, T), rand(H, 1, 1)),
            aten.where.self,
            {(2, 1), (2, 2)},
        ),
        case("gelu", F.gelu, (rand(2, T, 4),), aten.gelu.default),
        case("relu", torch.relu, (rand(2, T, 4),), aten.relu.default),
        case("to_dtype", lambda x: x.to(torch.float64), (rand(2, T, 4),), aten.to.dtype),
        case(
            "dropout_eval",
            lambda x: F.dropout(x, 0.5, training=False),
            (rand(2, T, 4),),
            aten.dropout.default,
        ),
        case("min_other", torch.min, (ints(9, 2, T, 4), ints(9, 2, T, 4)), aten.min.other),
        case(
            "full_like",
            lambda x: torch.full_like(x, 15),
            (ints(9, 2, T, 4),),
            aten.full_like.default,
        ),
        case("log1p", torch.log1p, (rand(2, T, 4).abs(),), aten.log1p.default),
        # contractions: the contracted dims are mixed
        case("linear_3d", nn.Linear(4, 6), (rand(2, T, 4),), aten.linear.default, {(0, 2), (1, 1)}),
        case(
            "linear_no_bias",
            nn.Linear(4, 6, bias=False),
            (rand(2, T, 4),),
            aten.linear.default,
            {(0, 2), (1, 1)},
        ),
        case(
            "addmm",
            torch.addmm,
            (rand(6), rand(T, 4), rand(4, 6)),
            aten.addmm.default,
            {(1, 1), (2, 0)},
        ),
        case(
            "addmm_full_bias",
            torch.addmm,
            (rand(T, 6), rand(T, 4), rand(4, 6)),
            aten.addmm.default,
            {(1, 1), (2, 0)},
        ),
        case(
            "addmm_row_bias",
            torch.addmm,
            (rand(1, 6), rand(T, 4), rand(4, 6)),
            aten.addmm.default,
            {(0, 0), (1, 1), (2, 0)},
        ),
        case("mm", torch.mm, (rand(T, 4), rand(4, 6)), aten.mm.default, {(0, 1), (1, 0)}),
        case("bmm", torch.bmm, (rand(2, T, 4), rand(2, 4, 6)), aten.bmm.default, {(0, 2), (1, 1)}),
        case(
            "matmul_4d",
            torch.matmul,
            (rand(2, H, T, 4), rand(2, H, 4, T)),
            aten.matmul.default,
            {(0, 3), (1, 2)},
        ),
        case(
            "matmul_batch_broadcast",
            torch.matmul,
            (rand(1, H, T, 4), rand(2, H, 4, 6)),
            aten.matmul.default,
            {(0, 0), (0, 3), (1, 2)},
        ),
        case(
            "matmul_fewer_batch_dims",
            torch.matmul,
            (rand(2, H, T, 4), rand(H, 4, 6)),
            aten.matmul.default,
            {(0, 3), (1, 1)},
        ),
        case(
            "matmul_2d_rhs",
            torch.matmul,
            (rand(2, H, T, 4), rand(4, 6)),
            aten.matmul.default,
            {(0, 3), (1, 0)},
        ),
        # normalisations and masks mix their axes
        case(
            "softmax_last",
            lambda x: x.softmax(-1),
            (rand(2, T, 4),),
            aten.softmax.int,
            {(0, 2)},
            {2},
        ),
        case(
            "softmax_mid", lambda x: x.softmax(1), (rand(2, T, 4),), aten.softmax.int, {(0, 1)}, {1}
        ),
        case(
            "layer_norm",
            nn.LayerNorm(4),
            (rand(2, T, 4),),
            aten.layer_norm.default,
            {(0, 2), (1, 0), (2, 0)},
            {2},
        ),
        case(
            "layer_norm_2d",
            nn.LayerNorm([T, 4]),
            (rand(2, T, 4),),
            aten.layer_norm.default,
            {(0, 1), (0, 2), (1, 0), (1, 1), (2, 0), (2, 1)},
            {1, 2},
        ),
        # position-dependent, but a chunk of rows is the triangle with its diagonal moved
        case("tril", torch.tril, (rand(2, T, T),), aten.tril.default, set(), set()),
        case("triu", lambda x: x.triu(1), (rand(2, T, T),), aten.triu.default, set(), set()),
        # reshapes: a dim moves where it maps 1-1, and a split or merged run of dims with its
        # outermost part (NOTE [Rows of tokens]); the size argument is resized with it
        case(
            "view_split",
            lambda x: x.view(2, T, 2, 2),
            (rand(2, T, 4),),
            aten.view.default,
            set(),
            {3},
            resize=(((1, 0),), ((1, 1),), ((1, 2),), ()),
        ),
        # a roll moves every dim; along a rolled dim, rows by the shift, round the length
        case(
            "roll_two_dims",
            lambda x: torch.roll(x, (-2, 1), (1, 2)),
            (rand(2, T, 4),),
            aten.roll.default,
        ),
        case("roll_one_dim", lambda x: torch.roll(x, 3, 1), (rand(2, T, 4),), aten.roll.default),
        case(
            "unflatten",
            lambda x: x.unflatten(2, (2, 2)),
            (rand(2, T, 4),),
            aten.unflatten.int,
            set(),
            {3},
            resize=((), (), ((2, 0),), ()),
        ),
        case(
            "reshape_merge_heads",
            lambda x: x.reshape(1, T, 6),
            (rand(1, T, 2, 3),),
            aten.reshape.default,
            {(0, 3)},
            set(),
            resize=((), ((1, 1),), ((1, 2),)),
        ),
        case(
            "view_inferred",
            lambda x: x.view(2, -1, 2, 2),
            (rand(2, T, 4),),
            aten.view.default,
            set(),
            {3},
        ),
        case(
            "view_not_1to1",
            lambda x: x.view(3, 2),
            (rand(2, 3),),
            aten.view.default,
            {(0, 0), (0, 1)},
            {0, 1},
        ),
        case(
            "view_drop_ones",
            lambda x: x.view(T, 4),
            (rand(T, 1, 4),),
            aten.view.default,
            resize=(((1, 0),), ((1, 1),)),
        ),
        case("transpose", lambda x: x.transpose(1, 2), (rand(2, T, 4),), aten.transpose.int),
        case(
            "transpose_negative", lambda x: x.transpose(-1, 0), (rand(2, T, 4),), aten.transpose.int
        ),
        case("t", lambda x: x.t(), (rand(T, 4),), aten.t.default),
        case("permute", lambda x: x.permute(2, 0, 1), (rand(2, T, 4),), aten.permute.default),
        case(
            "unsqueeze", lambda x: x.unsqueeze(1), (rand(2, T, 4),), aten.unsqueeze.default, (), {1}
        ),
        case(
            "unsqueeze_negative",
            lambda x: x.unsqueeze(-1),
            (rand(2, T, 4),),
            aten.unsqueeze.default,
            (),
            {3},
        ),
        case("squeeze_dim", lambda x: x.squeeze(1), (rand(2, 1, T),), aten.squeeze.dim, {(0, 1)}),
        case(
            "squeeze_dims",
            lambda x: x.squeeze((1, 3)),
            (rand(2, 1, T, 1),),
            aten.squeeze.dims,
            {(0, 1), (0, 3)},
        ),
        # squeeze(1) of a size-5 dim is a no-op now, but drops the dim from a chunk of length 1
        case(
            "squeeze_noop",
            lambda x: x.squeeze(1),
            (rand(2, T, 4),),
            aten.squeeze.dim,
            {(0, 1)},
            {1},
        ),
        case(
            "expand",
            lambda x: x.expand(3, T, 4),
            (rand(1, T, 1),),
            aten.expand.default,
            {(0, 0), (0, 2)},
            {0, 2},
            resize=((), ((1, 1),), ()),
        ),
        case(
            "expand_new_dim",
            lambda x: x.expand(2, T, 4),
            (rand(T, 4),),
            aten.expand.default,
            (),
            {0},
            resize=((), ((1, 1),), ((1, 2),)),
        ),
        case(
            "expand_minus_one",
            lambda x: x.expand(2, -1, -1),
            (rand(1, T, 4),),
            aten.expand.default,
            {(0, 0)},
            {0},
        ),
        # splits and indexing
        case("split", lambda x: x.split(2, -1), (rand(2, T, 4),), aten.split.Tensor, {(0, 2)}, {2}),
        case(
            "split_getitem", lambda x: x.split(2, -1)[1], (rand(2, T, 4),), operator.getitem, nth=1
        ),
        case("chunk", lambda x: x.chunk(2, 1), (rand(2, 4, T),), aten.chunk.default, {(0, 1)}, {1}),
        case("unbind", lambda x: x.unbind(1), (rand(2, T, 4),), aten.unbind.int, {(0, 1)}),
        case(
            "slice_full",
            lambda x: aten.slice.Tensor(x, 1, 0, sys.maxsize),
            (rand(2, T, 4),),
            aten.slice.Tensor,
        ),
        case(
            "slice_partial", lambda x: x[:, 1:4], (rand(2, T, 4),), aten.slice.Tensor, {(0, 1)}, {1}
        ),
        case("select", lambda x: x[:, 1], (rand(2, T, 4),), aten.select.int, {(0, 1)}),
        case(
            "select_negative",
            lambda x: x.select(-1, 2),
            (rand(2, T, 4),),
            aten.select.int,
            {(0, 2)},
        ),
        case("embedding", nn.Embedding(7, 4), (ints(7, 2, T),), aten.embedding.default, {(0, 0)}),
        case(  # a gather with index tensors: x is read whole along its indexed dims
            "index_tensors",
            lambda x, rows, cols: x[rows[:, None], cols[None, :]],
            (rand(6, 7, 4), ints(6, T), ints(7, 3)),
            aten.index.Tensor,
            {(0, 0), (0, 1)},
        ),
        # reductions
        case("sum", lambda x: x.sum(-1), (rand(2, T, 4),), aten.sum.dim_IntList, {(0, 2)}),
        case(
            "sum_keepdim",
            lambda x: x.sum(1, keepdim=True),
            (rand(2, T, 4),),
            aten.sum.dim_IntList,
            {(0, 1)},
            {1},
        ),
        case("mean", lambda x: x.mean((0, 2)), (rand(2, T, 4),), aten.mean.dim, {(0, 0), (0, 2)}),
        case(
            "mean_keepdim",
            lambda x: x.mean(-1, keepdim=True),
            (rand(2, T, 4),),
            aten.mean.dim,
            {(0, 2)},
            {2},
        ),
        case("amax", lambda x: x.amax(1), (rand(2, T, 4),), aten.amax.default, {(0, 1)}),
        case(
            "amax_keepdim",
            lambda x: x.amax(-1, keepdim=True),
            (rand(2, T, 4),),
            aten.amax.default,
            {(0, 2)},
            {2},
        ),
        case(
            "logsumexp",
            lambda x: x.logsumexp(1),
            (rand(2, T, 4),),
            aten.logsumexp.default,
            {(0, 1)},
        ),
        case(
            "var_keepdim",
            lambda x: x.var(1, False, True),
            (rand(2, T, 4),),
            aten.var.dim,
            {(0, 1)},
            {1},
        ),
        case(
            "std_keepdim",
            lambda x: x.std(1, True, True),
            (rand(2, T, 4),),
            aten.std.dim,
            {(0, 1)},
            {1},
        ),
        case(
            "var_biased",
            lambda x: x.var(-1, unbiased=False),
            (rand(2, T, 4),),
            aten.var.dim,
            {(0, 2)},
        ),
        case(
            "var_correction",
            lambda x: x.var(1, correction=0, keepdim=True),
            (rand(2, T, 4),),
            aten.var.correction,
            {(0, 1)},
            {1},
        ),
        # dynamic sizes: the rules compare symbolic dims
        case(
            "add_mask_dynamic",
            lambda s, m: s + m,
            (rand(1, H, T, T), rand(T, T)),
            aten.add.Tensor,
            dynamic=({2: seq, 3: seq}, {0: seq, 1: seq}),
        ),
        case(
            "add_broadcast_dynamic",
            lambda x, y: x + y,
            (rand(2, T, 4), rand(1, 1, 4)),
            aten.add.Tensor,
            {(1, 0), (1, 1)},
            dynamic=({1: seq}, None),
        ),
        case(
            "reshape_merge_dynamic",
            lambda x: x.reshape(1, x.shape[1], 6),
            (rand(1, T, 2, 3),),
            aten.reshape.default,
            {(0, 3)},
            set(),
            resize=((), ((1, 1),), ((1, 2),)),
            dynamic=({1: seq},),
        ),
    ]


@pytest.mark.parametrize("c", CASES)
def test_rule(c: Case) -> None:
    graph, env = capture(c.build(), c.inputs, c.dynamic)
    node = find(graph, c.op, c.nth)
    rule = dim_rule(node, graph)
    assert rule is not None, f"{node.target} should have a rule"
    check_mixed(node, graph, rule, set(c.mixed), set(c.uncut))
    if c.resize is not None:
        assert tuple(rule.resized(j) for j in range(len(rule.groups))) == c.resize
    check_numeric(node, graph, env, rule)


NO_RULE = [
    pytest.param(lambda x: torch.cumsum(x, 1), aten.cumsum.default, id="cumsum"),
    pytest.param(lambda x: torch.roll(x, 3), aten.roll.default, id="roll_flattened"),
    pytest.param(lambda x: torch.sort(x, -1)[0], aten.sort.default, id="sort"),
    pytest.param(lambda x: x + torch.arange(4), aten.arange.default, id="arange"),
    pytest.param(lambda x: x.sum(), aten.sum.default, id="sum_all"),
    pytest.param(lambda x: x.mean(), aten.mean.default, id="mean_all"),
    # squeeze() drops every dim that has size 1 at run time, a length-1 chunk included
    pytest.param(lambda x: x.squeeze(), aten.squeeze.default, id="squeeze_all"),
    pytest.param(
        lambda x: F.dropout(x, 0.5, training=True), aten.dropout.default, id="dropout_train"
    ),
]


@pytest.mark.parametrize("fn, op", NO_RULE)
def test_no_rule_mixes_everything(fn: Callable[..., Any], op: Any) -> None:
    graph, _ = capture(Fn(fn), (rand(2, T, 4),))
    assert dim_rule(find(graph, op), graph) is None


def hand_graph(op: Any, source: tuple[int, ...], out: tuple[int, ...], *args: Any) -> Graph:
    """Build a two-node IR by hand: one input and one op reading it."""
    x = Node(name="x", kind="input", target="x", meta=TensorMeta(source, torch.float32))
    y = Node(
        name="y",
        kind="op",
        target=op,
        args=(Ref("x"), *args),
        meta=TensorMeta(out, torch.float32),
    )
    return Graph(nodes=(x, y), outputs=(Ref("y"),), out_spec=None, inputs=("x",))


def test_a_rule_that_raises_is_an_internal_error_naming_the_node_and_line() -> None:
    """A rule that raised used to read as "mixes every dim", silently switching chunking off."""
    graph = hand_graph(aten.softmax.int, (2, 3), (2, 3))  # the dim argument is missing
    source = Source("model.py", 12, "forward", "y = x.softmax()")
    graph = replace(graph, nodes=(graph["x"], replace(graph["y"], source=source)), memo={})
    with pytest.raises(InternalError, match=r"aten.softmax.int .*node y \(model.py:12 in forward"):
        dim_rule(graph["y"], graph)


def test_numeric_check_catches_wrong_rules() -> None:
    graph, env = capture(Fn(lambda x: x.softmax(-1)), (rand(2, T, 4),))
    node = find(graph, aten.softmax.int)
    with pytest.raises(AssertionError):
        check_numeric(node, graph, env, DimRule((((0, 0),), ((0, 1),), ((0, 2),))))
    graph, env = capture(Fn(torch.mm), (rand(T, 4), rand(4, 6)))
    node = find(graph, aten.mm.default)
    with pytest.raises(AssertionError):
        check_numeric(node, graph, env, DimRule((((0, 0),), ((0, 1), (1, 1)))))


@st.composite
def reshapes(draw: st.DrawFn) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Draw two shapes with the same element count: two groupings of one list of factors."""
    factors = draw(st.lists(st.integers(1, 4), min_size=1, max_size=5))

    def group() -> tuple[int, ...]:
        cuts = draw(st.sets(st.integers(1, len(factors)), max_size=3))
        bounds = sorted({0, len(factors), *cuts})
        shape = [math.prod(factors[a:b]) for a, b in zip(bounds, bounds[1:])]
        for _ in range(draw(st.integers(0, 2))):
            shape.insert(draw(st.integers(0, len(shape))), 1)
        return tuple(shape)

    return group(), group()


@settings(max_examples=80, deadline=None)
@given(reshapes())
def test_view_rule_matches_torch(shapes: tuple[tuple[int, ...], tuple[int, ...]]) -> None:
    source, target = shapes
    graph = hand_graph(aten.view.default, source, target, list(target))
    node = graph["y"]
    rule = dim_rule(node, graph)
    assert rule is not None
    check_numeric(node, graph, {"x": torch.randn(source)}, rule)
    if source == target:
        for j, size in enumerate(target):
            assert size == 1 or rule.groups[j] == ((0, j),)


def test_a_fill_makes_any_chunk_from_its_size_argument() -> None:
    graph, _ = capture(Fn(lambda x: x + torch.ones(T, 4)), (rand(2, T, 4),))
    rule = dim_rule(find(graph, aten.ones.default), graph)
    assert rule is not None and all(not group for group in rule.groups)
    assert rule.resized(0) == ((0, 0),) and rule.produces(0) and rule.produces(1)
