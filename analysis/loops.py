"""Lowering one region: its loop steps, with every operand's slice, in-place writes, causal
key cuts, size arguments that follow the chunk, and the layers called as modules (NOTE [Loop
program])."""

from __future__ import annotations

import contextlib
import contextvars
import math
from dataclasses import replace
from typing import Any, Callable, Mapping

import sympy
import torch

from analysis.causal import causal_rows, truncated_keys
from analysis.dimflow import DimRule, same_size, schema_arg
from analysis.errors import InternalError
from analysis.inplace import inplace_operands, storage_ends_by
from analysis.ir import (
    Graph,
    Node,
    Ref,
    Size,
    TensorMeta,
    common_calls,
    out_meta,
    storage_roots,
    tensor_inputs,
)
from analysis.layers import Layer
from analysis.ops import CONV_TRANSPOSES, dim_rule, info, inplace_form
from analysis.plan import Region
from analysis.program import (
    CHUNK,
    CHUNK_ROWS,
    COPY,
    OUTER,
    CausalRows,
    ChunkLength,
    ChunkStart,
    LoopRegion,
    LoopStep,
    Operand,
    Span,
    StatisticsPass,
    SumStep,
    ratio,
    span_at,
)
from analysis.sums import contraction, folded_add, sum_in_place


def lower_region(
    graph: Graph, region: Region, layers: Mapping[str, Layer] | None = None
) -> LoopRegion:
    """Return the region's loop as steps: every operand's slice, in-place writes, key cuts, and
    (given the model's `layers`) the steps a layer runs as a module call."""
    loop = region.loop_dims
    copies = set(region.materialized)
    inplace = inplace_operands(graph, region)
    cuts = truncated_keys(graph, region)
    steps = []
    for name, dim in region.loop:
        node = graph[name]
        rule = dim_rule(node, graph)
        if rule is None:
            raise InternalError(f"loop node {name} has no dimension rule")
        cut = cuts.get(name)
        keys = dict(cut.slots) if cut is not None else {}

        span = made_over(graph, region, name, dim)
        computed = span

        def operand(slot: int, ref: str, rule: DimRule = rule, dim: int = dim) -> Operand:
            nonlocal computed
            axis = rule.input_dim(dim, slot)
            if axis is None:
                read = CHUNK_ROWS
            else:
                halo = rule.halo_of(dim, slot)
                read = span.read(halo, lambda: out_meta(graph[ref]).shape[axis], rule.shift_of(dim))
                computed = _computed(computed, read, halo[2])
            if ref in loop:
                made = made_over(graph, region, ref, loop[ref])
                crop = (loop[ref], made) if made != read else None
                return Operand(ref, slot, CHUNK, keys=keys.get(slot), span=read, crop=crop)
            source = COPY if ref in copies else OUTER
            return Operand(ref, slot, source, axis, keys.get(slot), span=read)

        args, kwargs = _resized(node, rule, dim)
        args = inferred_width(node, graph, args)
        if cut is not None and causal_rows(node):  # causal from the chunk's first row
            dropout = args[4] if len(args) > 4 else dict(kwargs).get("dropout_p", 0.0)
            kept = [(k, v) for k, v in kwargs if k not in ("attn_mask", "dropout_p", "is_causal")]
            extra = [("dropout_p", dropout)] if dropout else []
            args, kwargs = (*args[:3], CausalRows()), (*extra, *kept)
        args, kwargs, operands = _with_operands(args, kwargs, graph, operand)
        target, slot = node.target, inplace.get(name)
        if slot is not None:
            target = inplace_form(node.target)
            if slot == 1:  # a commutative op writing into its second operand swaps the two
                args = (args[1], args[0], *args[2:])
        whole = {o.value for o in operands if o.rows is None and o.keys is None}
        called = layer_call(graph, node, layers or {}, whole) if slot is None else None
        steps.append(
            LoopStep(
                name,
                dim,
                target,
                args,
                kwargs,
                operands,
                inplace=slot,
                keys=cut.diagonal if cut is not None else None,
                window=cut.lower if cut is not None else None,
                layer=called,
                span=span,
                computed=computed,
            )
        )
    passes = tuple(_statistics_pass(graph, region, norm, layers) for norm in region.recomputed)
    sums = tuple(_sum_step(graph, region, product, add) for product, add in region.sums)
    return LoopRegion(region, tuple(steps), passes, _reuses(graph, region, steps), sums)


def _sum_step(graph: Graph, region: Region, product: str, add: str | None) -> SumStep:
    """A product run as a sum over the chunks (NOTE [Sums over the chunks]): its chunk, its
    weight's slice, and what the sum starts from; in that value's storage where nothing reads
    it after and no hook could keep it (NOTE [Outputs in place])."""
    node = graph[product]
    found = contraction(node, graph)
    if found is None:
        raise InternalError(f"sum {product} is no product over the chunked dim")
    slot, _, weight_slot = found
    sources = tensor_inputs(node, graph)
    chunked, weight = sources[slot], sources[weight_slot]
    span = made_over(graph, region, weight, 1)
    chunk = Operand(
        chunked, slot, CHUNK, span=made_over(graph, region, chunked, region.loop_dims[chunked])
    )
    sliced = Operand(weight, weight_slot, OUTER, 1, span=span)
    bias = sources[2] if len(sources) > 2 else None
    if add is None:
        return SumStep(product, product, chunk, sliced, bias)
    fold = folded_add(graph, product, set(region.span))
    if fold is None or fold[0] != add:
        raise InternalError(f"sum {product} starts from {add}, which is not its addition")
    added = fold[1]
    overwrites, hooked = sum_in_place(graph, region, added, OVERWRITES.get()), False
    if overwrites is not None:
        overwrites, hooked = True, overwrites
    return SumStep(product, add, chunk, sliced, bias, added, bool(overwrites), hooked)


# NOTE [Outputs in place]
# A loop's output is written chunk by chunk into a buffer allocated whole before the loop. When
# the loop reads a value for the last time, each chunk only its own rows, and that value has
# the output's shape and dtype, the output can be written into the value's storage instead:
# chunk i reads rows i of the value and then overwrites them, and no later chunk reads them.
# The buffer is not allocated, so the loop holds one full tensor less (a feed-forward loop
# after a residual add: the add's result is the input, the block's output its rows overwritten).
# The value may have another shape than the output where each row of the loop is the same bytes
# of both: the same dtype and size, each chunked along its outermost dim longer than one, its
# rows exactly the loop's share (Swin's windows, `(1, rows, columns, 8, 8, c)`, read by a loop
# over rows of windows, and the attention's output, `(windows, heads, 64, d)`): the output is
# then the value viewed in its shape (`out = windows.view(...)`).
# The value must:
# - be an op's own result (not a view, an input, a parameter or an output of the forward), or
#   the whole of one, reshaped, that the loop reads through no other view;
# - be read nowhere after the loop (its storage's last reader is in the loop), and inside the
#   loop only as the chunk's own rows (no halo, no cut keys, no copy, never written in place);
# - be read, itself or through a view of its chunk, by no step after the one whose result is
#   written into it;
# - be made inside the module whose forward holds the loop (the module all the loop's ops are
#   in), not passed to it: what made a module's argument is out of its sight (below).
# A forward hook may keep a module's output or its arguments, and would see them change. A
# value made by a plain op of the module holding the loop is no module's output or argument:
# it is overwritten unconditionally. One a layer or a child module returned is overwritten only
# when no module of the forward's own subtree has a forward hook or pre-hook, nor the model a
# global one, checked at every call (`_hooked(self)`); else the loop takes a buffer, as before.
# The estimate counts the unhooked path; verification runs both (a no-op hook for the other).
# A loop that holds less changes what later stages of selection see, and a greedy choice made
# on it is not always the better one (a queries loop taken for a layer that a heads loop would
# have served, in BART). So selection chooses the loops without writing in place, then writes
# in place in the loops it chose, which only lowers their peaks; and where that plan misses its
# target, chooses them again with it and keeps the lower plan (`analysis.select.make_plan`).
# Whether one class serves several calls is decided by the printed code, so a module whose calls
# differ in this keep classes of their own (NOTE [One class per block]).


#: whether loops write outputs in place (NOTE [Outputs in place]); selection chooses loops
#: without it too (`analysis.select.make_plan`)
OVERWRITES = contextvars.ContextVar("overwrites", default=True)


@contextlib.contextmanager
def without_overwrites():
    """Lower every loop with buffers of its own while the block runs."""
    token = OVERWRITES.set(False)
    try:
        yield
    finally:
        OVERWRITES.reset(token)


def _reuses(
    graph: Graph, region: Region, steps: list[LoopStep]
) -> tuple[tuple[str, str, bool], ...]:
    """The loop's outputs written into a value it reads for the last time, and whether only
    while no hook could keep that value (NOTE [Outputs in place])."""
    if not region.outputs or not OVERWRITES.get():
        return ()
    roots, _ = storage_roots(graph)
    end = graph.position(region.span[-1])
    common = common_calls(graph[name].calls for name in region.span)
    moved: dict[str, set[int]] = {}  # value -> the shifts it is read at (NOTE [Cyclic shifts])
    read_at: dict[str, list[int]] = {}  # value -> the steps reading it or a view of its chunk
    dims: dict[str, set[int | None]] = {}  # value -> the dims it is sliced along
    aliases: dict[str, str] = {}  # a chunk that is a view of a value's rows -> that value
    unfit: set[str] = set(region.materialized)
    readers: dict[str, set[str]] = {}  # storage -> the values of it the loop slices
    for index, step in enumerate(steps):
        node = graph[step.node]
        for operand in step.operands:
            if operand.source == CHUNK:
                value = aliases.get(operand.value)
            else:
                value = operand.value
                root = roots.get(value, value)
                readers.setdefault(root, set()).add(value)
                if root != value and not _whole_view(graph, value, root):
                    unfit.add(root)  # a view of some of it is read
                if (
                    operand.rows is None
                    or not _own_rows(graph, operand.span, region.extent)
                    or operand.keys is not None
                ):
                    unfit.add(value)  # read whole, with a halo or cut to some keys
                dims.setdefault(value, set()).add(operand.rows)
                moved.setdefault(value, set()).add(operand.span.shift)
            if value is None:
                continue
            read_at.setdefault(value, []).append(index)
            if step.inplace is not None and step.operand(step.inplace) is operand:
                unfit.add(value)
            elif node.aliases is not None and operand.slot == 0:
                aliases[step.node] = value
    claimed: set[str] = set()
    found = []
    position = {step.node: index for index, step in enumerate(steps)}
    for name, dim in region.outputs:
        meta = graph[name].meta
        for value, reads in read_at.items():
            root = roots.get(value, value)  # itself, or a value it is all of, reshaped
            node = graph[root]
            fits = (
                value not in unfit
                and root not in unfit
                and root not in claimed
                and readers.get(root) == {value}
                and storage_ends_by(graph, root, end)
                and node.calls[: len(common)] == common
                and isinstance(meta, TensorMeta)
                and _own_rows(graph, steps[position[name]].span, region.extent)
                and max(reads) <= position[name]
                and aliases.get(name) != value
                and len(dims.get(value, ())) == 1
                and _same_rows(graph, value, next(iter(dims[value])), name, dim)
                and _same_shift(
                    graph,
                    value,
                    next(iter(dims[value])),
                    moved[value],
                    name,
                    dim,
                    steps[position[name]].span,
                )
            )
            if fits:
                claimed.add(root)
                found.append((name, value, node.calls != common))
                break
    return tuple(found)


def _same_shift(
    graph: Graph,
    value: str,
    value_dim: int,
    shifts: set[int],
    output: str,
    out_dim: int,
    span: Span,
) -> bool:
    """Whether a loop writing `output`'s chunks over `value` (the same bytes per row of the
    loop, by `_same_rows`) writes each chunk where it read it (NOTE [Cyclic shifts]): neither
    moved, or both by as many elements. An output moved on from the rows it read would
    overwrite rows a later chunk still reads."""
    if shifts == {0} and not span.shift:
        return True
    if len(shifts) != 1:
        return False

    def elements(shape: tuple[Size, ...], dim: int, rows: int) -> Any:
        return sympy.Mul(rows, *shape[dim + 1 :])

    a, b = graph[value].tensor, graph[output].tensor
    moved_value = elements(a.shape, value_dim, next(iter(shifts)))
    return same_size(moved_value, elements(b.shape, out_dim, span.shift), graph)


def _own_rows(graph: Graph, span: Span, extent: Any) -> bool:
    """Whether a span is exactly its loop rows' share of its value: no halo, and the value's
    length its scale (or unit) times the loop's, so chunk `i` holds the value's `i`-th share."""
    if span.before or span.after:
        return False
    return span.unit != 1 or span.scale == 1 or same_size(span.size, span.scale * extent, graph)


def _whole_view(graph: Graph, value: str, root: str) -> bool:
    """Whether `value` is all of `root`'s storage, reshaped: both contiguous, the same size."""
    a, b = graph[value].meta, graph[root].meta
    return (
        isinstance(a, TensorMeta)
        and isinstance(b, TensorMeta)
        and a.contiguous
        and b.contiguous
        and a.dtype == b.dtype
        and same_size(sympy.Mul(*a.shape), sympy.Mul(*b.shape), graph)
    )


def _same_rows(graph: Graph, value: str, value_dim: int, output: str, out_dim: int) -> bool:
    """Whether each row of the loop is the same bytes of `value`, chunked along `value_dim`, as
    of the output buffer, chunked along `out_dim` (NOTE [Outputs in place]): the same shape
    and dim; or the same dtype and size, each chunked along its outermost dim longer than one,
    where the output's buffer is the value viewed in the output's shape (Swin's windows before
    the attention, and the attention's output after it)."""
    a, b = graph[value].tensor, graph[output].tensor
    if (a.shape, a.dtype) == (b.shape, b.dtype):
        return value_dim == out_dim

    def outermost(shape: tuple[Size, ...], dim: int) -> bool:
        return all(same_size(size, 1, graph) for size in shape[:dim])

    return (
        a.dtype == b.dtype
        and same_size(sympy.Mul(*a.shape), sympy.Mul(*b.shape), graph)
        and outermost(a.shape, value_dim)
        and outermost(b.shape, out_dim)
    )


def _statistics_pass(
    graph: Graph, region: Region, norm: str, layers: Mapping[str, Layer] | None
) -> StatisticsPass:
    """The first pass a recomputed group norm's statistics take (NOTE [Statistics passes]): the
    loop's values that make its input, each over the rows that input's own rows need (fewer
    than the main loop's, whose later convolutions read halos), lowered as a loop of its own
    with the input as its one output."""
    from analysis.search import made_for, rows_wanted, statistics_input  # the search lowers

    loop = region.loop_dims
    value = statistics_input(graph, loop, norm)
    needed = made_for(graph, loop, value)
    span = tuple(name for name in region.span if name in needed)
    made = {name: loop[name] for name in span}
    scales = {name: scale for name, _, _, scale in region.halos}
    want = rows_wanted(graph, span, made, scales, [(value, loop[value])])
    if want is None:
        raise InternalError(f"the statistics pass for {norm} cannot make its input's rows")
    halos = tuple(
        (name, *want[name], scales.get(name, 1))
        for name in [*span, *sorted(set(want) - set(span), key=graph.position)]
        if want[name] != (0, 0) or scales.get(name, 1) != 1
    )
    read = {ref for name in span for ref in graph[name].refs()}
    first = Region(
        span=span,
        loop=tuple((name, made[name]) for name in span),
        hoisted=(),
        slices=tuple((name, dim) for name, dim in region.slices if name in read),
        outputs=((value, loop[value]),),
        extent=region.extent,
        chunk_size=region.chunk_size,
        materialized=tuple(name for name in region.materialized if name in read),
        halos=halos,
    )
    steps = lower_region(graph, first, layers).steps
    own = made_over(graph, first, value, loop[value])
    return StatisticsPass(norm, value, steps, own)


def made_over(graph: Graph, region: Region, name: str, dim: int) -> Span:
    """Return the rows a loop value is made over, or a sliced value read over (NOTE
    [Halos])."""
    before, after, scale = region.halo(name)
    span = span_at(before, after, scale, lambda: out_meta(graph[name]).shape[dim])
    return replace(span, shift=region.shift(name)) if region.shifts else span


def _computed(computed: Span, read: Span, stride: Any) -> Span:
    """Return the rows an op makes when run on an input read over `read` through a window of
    `stride`: the first exactly where its output rows start (the input's first over the
    stride), the last at least as many (NOTE [Halos])."""
    step = ratio(read.unit, sympy.sympify(stride) * computed.unit)
    before = None if step is None else step * read.before
    if before is None or before.denominator != 1:
        raise InternalError(f"a window's slice starts off its stride: {read}, stride {stride}")
    return replace(
        computed,
        before=max(computed.before, int(before)),
        after=max(computed.after, math.ceil(step * read.after)),
    )


def layer_call(
    graph: Graph, node: Node, layers: Mapping[str, Layer], whole: set[str]
) -> str | None:
    """Return the path of the layer to call as a module for `node`, or None.

    The op must be exactly the layer's forward (NOTE [Op registry]): a layer of that class ran
    it, it reads the layer's own tensors and those whole (a loop over a weight's rows cannot be
    a call), its input comes from outside the layer and its result goes outside it (a layer
    that runs more than one op, like a Conv2d padding by reflection, is not called)."""
    expected = info(node.target).layer
    path = node.module_path
    if expected is None or path not in layers or layers[path].cls.__name__ not in expected[0]:
        return None
    data = node.args[expected[1]] if expected[1] < len(node.args) else None
    if not isinstance(data, Ref) or graph[data.name].module_path == path:
        return None
    if node.target.overloadpacket in CONV_TRANSPOSES:
        # called with `output_size=`, the layer worked out an output padding of its own
        kept = dict(layers[path].kwargs).get("output_padding", 0)
        given = schema_arg(node, "output_padding", 0)
        rank = len(node.meta.shape) - 2 if isinstance(node.meta, TensorMeta) else 1
        if _each(kept, rank) != _each(given, rank):
            return None
    if any(graph[user].module_path == path for user in graph.users(node.name)):
        return None
    for name in node.refs():
        if name == data.name:
            continue
        own = graph[name]
        inside = own.kind in ("param", "buffer") and own.target.startswith(path + ".")
        if not inside or name not in whole:
            return None
    return path


def _each(value: Any, rank: int) -> tuple[int, ...]:
    """A per-dim layer argument (an int or a list) as one int per spatial dim."""
    return tuple(value) if isinstance(value, (list, tuple)) else (value,) * rank


#: ops whose second argument is the result's shape, where one size may be -1
_SHAPED = (
    torch.ops.aten.view.default,
    torch.ops.aten.reshape.default,
    torch.ops.aten._unsafe_view.default,
)


def inferred_width(node: Node, graph: Graph, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """Return a view's or reshape's arguments with the width it changes written as -1.

    NOTE [Widths read from tensors]
    `q.view(b, t, self.heads, hd)` traces to `view(1, seq, 8, 32)`, and a tensor-parallel
    plan that shards the query projection column-wise gives each rank fewer heads, which the
    literal 8 would refuse. The sizes a view keeps as they are (equal leading and trailing
    dims) stay; of those it splits or merges, the first whole number above 1 is written -1,
    so torch infers it from the tensor: the heads in a split (`view(1, seq, -1, 32)`, as
    transformers writes it), the width in a merge (`reshape(1, seq, -1)`). The result is the
    same on every input the plan was verified on; a size already symbolic, or a loop's chunk
    length, is never the one inferred."""
    if node.target not in _SHAPED or len(args) < 2 or not isinstance(node.meta, TensorMeta):
        return args
    source = graph[node.args[0].name].meta if isinstance(node.args[0], Ref) else None
    if not isinstance(source, TensorMeta) or not isinstance(args[1], (list, tuple)):
        return args
    before, after, sizes = source.shape, node.meta.shape, list(args[1])
    if len(sizes) != len(after) or any(size == -1 for size in sizes):
        return args
    lead = 0
    while lead < min(len(before), len(after)) and before[lead] == after[lead]:
        lead += 1
    trail = 0
    while (
        trail < min(len(before), len(after)) - lead
        and before[len(before) - 1 - trail] == after[len(after) - 1 - trail]
    ):
        trail += 1
    for index in range(lead, len(after) - trail):
        if type(sizes[index]) is int and sizes[index] > 1:
            sizes[index] = -1
            return (args[0], type(args[1])(sizes), *args[2:])
    return args


def _resized(node: Node, rule: DimRule, dim: int) -> tuple[tuple[Any, ...], tuple]:
    """Return the node's arguments with sizes of the chunked dim as the chunk's length, and
    offsets that follow the chunk's start."""
    paths, offsets = rule.resized(dim), rule.offsets(dim)
    args = list(node.args)
    for position, value in rule.swapped(dim):
        while len(args) <= position:
            args.append(None)
        args[position] = value
    for position, sign, default in offsets:
        while len(args) <= position:
            args.append(default)
        args[position] = ChunkStart(args[position], sign)
    for position, element in paths:
        sizes = list(args[position])
        if sizes[element] != -1:  # expand keeps -1 ("as it is") for the chunked dim
            sizes[element] = (
                ChunkLength() if node.target is not torch.ops.aten.expand.default else -1
            )
        args[position] = sizes
    return tuple(args), node.kwargs


def _with_operands(
    args: tuple[Any, ...],
    kwargs: tuple[tuple[str, Any], ...],
    graph: Graph,
    operand: Callable[[int, str], Operand],
) -> tuple[tuple[Any, ...], tuple[tuple[str, Any], ...], tuple[Operand, ...]]:
    """Replace each tensor reference by `operand(slot, name)`; slots number the tensor inputs in
    argument order, so a value read twice (h @ h) can be sliced in one place and whole in the
    other."""
    found: list[Operand] = []

    def visit(value: Any) -> Any:
        if isinstance(value, Ref) and isinstance(graph[value.name].meta, (TensorMeta, tuple)):
            found.append(operand(len(found), value.name))
            return found[-1]
        if isinstance(value, (list, tuple)):
            return type(value)(visit(v) for v in value)
        return value

    new_args = tuple(visit(v) for v in args)
    new_kwargs = tuple((k, visit(v)) for k, v in kwargs)
    return new_args, new_kwargs, tuple(found)


__all__ = ["layer_call", "lower_region"]
