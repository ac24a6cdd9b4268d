"""Region search: stretches around the memory peak that can run as a loop over one dim.

NOTE [Region propagation]
Given a contiguous stretch of nodes and a seed (a value in it and one of its dims), we assign
every node of the stretch a role. The seed's producer runs per chunk. From a per-chunk node we
walk backwards: each input dim that moves with the chunked output dim (NOTE [Dimension flow])
must be chunked too; if the input is produced inside the stretch by an op that can produce that
dim chunk-wise, that op runs per chunk as well, otherwise the input is sliced (it comes from
outside the loop, or is hoisted). We walk forwards to every consumer inside the stretch: it
must run per chunk, with its output chunked along the dim the input dim moves with; if the
consumer mixes that dim, the stretch is rejected. Nodes never reached do not depend on the
chunk and are hoisted before the loop. Per-chunk results read after the stretch are region
outputs, written into preallocated buffers.
"""

from __future__ import annotations

import functools
import operator
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Callable, Iterable

import sympy
import torch

from analysis.causal import causal_rows, truncated_keys
from analysis.dimflow import DimRule, out_meta, same_size, schema_arg, tensor_inputs
from analysis.ir import Graph, Node, Size, TensorMeta, evaluate
from analysis.ops import dim_rule, info
from analysis.plan import Region
from analysis.program import divided, widened
from analysis.scopes import is_size
from analysis.sums import SUMS, contraction, folded_add


class _Reject(Exception):
    """The stretch cannot run as one loop over the seed dim."""

    def __init__(self, reason: str, node: str, via: str | None = None, forward: bool = False):
        super().__init__(reason)
        #: the node where the conflict showed, the node it was reached from, and how
        self.node, self.via, self.forward = node, via, forward


@dataclass(frozen=True, slots=True)
class Conflict:
    """Why a stretch failed, and which boundary to move to get past it."""

    #: nodes the stretch may start after to get past the conflict, nearest it first
    start_after: tuple[str, ...]
    #: nodes the stretch may end before to get past the conflict, nearest it first
    end_before: tuple[str, ...]
    reason: str


def _from_the_start(node: Node, dim: int) -> bool:
    """Whether an op's chunk along `dim` is placed by its first row (an attention over query
    rows with a causal flag or a mask may cut keys from it): it cannot make rows before the
    chunk's, or at a scale (NOTE [Halos]). A loop over a batch or heads dim cuts no keys."""
    if node.target is not torch.ops.aten.scaled_dot_product_attention.default:
        return False
    if dim != out_meta(node).rank - 2:
        return False
    return causal_rows(node) or schema_arg(node, "attn_mask") is not None


#: how many values one stretch may make whole before its loop to get past conflicts
HOIST_RETRIES = 8


def propagate(
    graph: Graph, span: tuple[str, ...], seed: str, seed_dim: int, recompute: bool = False
) -> Region | Conflict | None:
    """Return the region a stretch forms when chunked along `seed_dim` of `seed`.

    Returns a Conflict naming the boundary to move when the stretch as given cannot form one,
    and None when the seed itself cannot be chunked along that dim. A value made in the
    stretch that a per-chunk op reads chunked and another reader needs whole (the rotary
    table both the queries and the keys read) is made whole before the loop and sliced for
    the per-chunk reader, and the walk tried again; only where starting the stretch after it
    would lose ops before it that the seed needs (the query projection), so otherwise the
    boundary moves as before.

    With `recompute`, a group norm may read an input the loop itself makes: a first pass of
    the loop recomputes the input to take its statistics (NOTE [Statistics passes]).
    """
    hoisted: set[str] = set()
    for _ in range(HOIST_RETRIES + 1):
        result = _propagate(graph, span, seed, seed_dim, hoisted, recompute)
        if not isinstance(result, tuple):
            return result
        conflict, fork = result
        if fork is None or fork in hoisted:
            return conflict
        hoisted.add(fork)
    return conflict


def _propagate(
    graph: Graph,
    span: tuple[str, ...],
    seed: str,
    seed_dim: int,
    forced: set[str],
    recompute: bool = False,
) -> Region | tuple[Conflict, str | None] | None:
    """One walk of `propagate`, with the values in `forced` made whole before the loop; a
    failed walk returns its Conflict and the value where it turned from producers to other
    readers (`_fork`), which made whole might get past it."""
    inside = set(span)
    rules: dict[str, DimRule | None] = {}
    loop: dict[str, int] = {}
    sliced: dict[str, int] = {}
    hoist: set[str] = set()
    #: how each per-chunk node was reached: (from node, reached forwards)
    parent: dict[str, tuple[str | None, bool]] = {}

    def rule_of(name: str) -> DimRule | None:
        if name not in rules:
            rules[name] = dim_rule(graph[name], graph)
        return rules[name]

    def producible(name: str, dim: int) -> bool:
        found = rule_of(name)
        return found is not None and found.produces(dim)

    def need_slice(name: str, dim: int, via: str | None, forward: bool) -> None:
        if name in loop:
            raise _Reject(
                f"{name} is chunked along {loop[name]}, needed along {dim}", name, via, forward
            )
        if isinstance(graph[name].meta, tuple):
            raise _Reject(f"{name} is a tuple: it cannot be sliced", name, via, forward)
        if sliced.setdefault(name, dim) != dim:
            raise _Reject(f"{name} sliced along two dims", name, via, forward)
        if name in inside:
            hoist.add(name)

    work: list[str] = []
    #: fills that read a loop value for its dtype and device only (`x.new_zeros(size)`)
    fills: set[str] = set()
    #: products summed over the chunks, with the add each starts from, and what it adds
    #: (NOTE [Sums over the chunks])
    sums: dict[str, tuple[str | None, str | None]] = {}

    def summed(user: str, name: str, slots: list[int], dim: int) -> bool:
        """Whether `user`, reading chunked `name` in `slots` along `dim`, contracts that dim
        and runs as a sum over the chunks; then its weight is sliced the same way."""
        if not SUMS.get() or user in sums or user in loop or user in sliced:
            return False
        found = contraction(graph[user], graph)
        if found is None or slots != [found[0]] or dim != found[1]:
            return False
        sources = tensor_inputs(graph[user], graph)
        if any(source in loop for slot, source in enumerate(sources) if slot != found[0]):
            return False
        need_slice(sources[found[2]], 1, user, forward=True)
        fold = folded_add(graph, user, inside)
        sums[user] = fold if fold is not None else (None, None)
        return True

    def chunk(name: str, dim: int, via: str | None, forward: bool) -> None:
        if name in loop:
            if loop[name] != dim:
                raise _Reject(f"{name} chunked along two dims", name, via, forward)
            return
        if name in sums or any(add == name for add, _ in sums.values()):
            raise _Reject(f"{name} is a sum over the chunks, read by chunk", name, via, forward)
        if name not in inside:
            need_slice(name, dim, via, forward)
            return
        if name in hoist or name in forced or not producible(name, dim):
            if forward:
                raise _Reject(f"{name} mixes the chunked dim", name, via, forward)
            need_slice(name, dim, via, forward)
            return
        if name in sliced:
            raise _Reject(f"{name} is both sliced and chunked", name, via, forward)
        loop[name] = dim
        parent[name] = (via, forward)
        work.append(name)

    if not producible(seed, seed_dim):
        return None
    try:
        chunk(seed, seed_dim, None, forward=False)
        while work:
            name = work.pop()
            node = graph[name]
            found = rule_of(name)
            assert found is not None
            dim = loop[name]
            for slot, source in enumerate(tensor_inputs(node, graph)):
                want = found.input_dim(dim, slot)
                whole = slot in found.whole_of(dim)  # statistics span it
                if want is not None and whole and not (recompute and source in inside):
                    need_slice(source, want, name, forward=False)
                elif want is not None:
                    chunk(source, want, name, forward=False)
                elif source in loop:
                    raise _Reject(f"{name} reads chunked {source} whole", name, source, True)
            # checked once its operands are placed: `a += b` with `a` made in the loop is fine
            if node.mutates is not None and node.mutates not in loop:
                raise _Reject(f"{name} writes into a value outside the loop", name, name, True)
            for user in graph.users(name):
                if user not in inside or is_size(graph, user):
                    continue  # a size is written from the sizes bound, not read off the chunk
                if _reads_dtype_only(graph, user, name):
                    fills.add(user)  # made before the loop, off a value of the same dtype
                    continue
                user_rule = rule_of(user)
                slots = [s for s, v in enumerate(tensor_inputs(graph[user], graph)) if v == name]
                out_dims = (
                    {_moving(user_rule, slot, dim, recompute) for slot in slots}
                    if user_rule
                    else {None}
                )
                if None in out_dims or len(out_dims) != 1:
                    if summed(user, name, slots, dim):
                        continue
                    raise _Reject(f"{user} mixes the chunked dim of {name}", user, name, True)
                chunk(user, out_dims.pop(), name, forward=True)
        for product, (add, other) in sums.items():  # NOTE [Sums over the chunks]
            last = add or product
            if other is not None and (other in loop or other in sums):
                raise _Reject(f"{add} adds a value the loop makes to a sum", add, product, True)
            for user in graph.users(last):
                if user in inside:
                    raise _Reject(f"{user} reads the sum {last} in the loop", user, last, True)
    except _Reject as reject:
        fork = _fork(reject, parent)
        if fork is not None and not _needed_before(graph, span, seed, fork):
            fork = None  # starting the stretch after it does the same, with less made whole
        return _blame(reject, parent, graph, inside, seed), fork
    for fill in sorted(fills, key=graph.position):
        if fill in loop or dtype_source(graph, fill, sliced) is None:
            chunked = tensor_inputs(graph[fill], graph)[0]
            blame = _Reject(f"{fill} reads a chunk for its dtype", fill, chunked, True)
            return _blame(blame, parent, graph, inside, seed), None
    return _region(graph, span, loop, sliced, seed, seed_dim, sums)


#: fills that take their dtype and device from the tensor they are called on
NEW_FILLS = (
    torch.ops.aten.new_zeros.default,
    torch.ops.aten.new_ones.default,
    torch.ops.aten.new_empty.default,
    torch.ops.aten.new_full.default,
)


def _reads_dtype_only(graph: Graph, user: str, value: str) -> bool:
    """Whether `user` is a fill called on `value` (`x.new_zeros(size)`), reading nothing of it
    but its dtype and device: no reader of the chunk."""
    node = graph[user]
    return node.target in NEW_FILLS and tuple(tensor_inputs(node, graph)) == (value,)


def dtype_source(graph: Graph, fill: str, sliced: dict[str, int]) -> str | None:
    """The value a fill that reads a loop value for its dtype is called on instead, before the
    loop: the first value the loop slices with that dtype (all are on one device), or None."""
    dtype = graph[tensor_inputs(graph[fill], graph)[0]].tensor.dtype
    return next(
        (
            name
            for name in sorted(sliced, key=graph.position)
            if isinstance(graph[name].meta, TensorMeta) and graph[name].tensor.dtype == dtype
        ),
        None,
    )


def _moving(rule: DimRule, slot: int, dim: int, recompute: bool = False) -> int | None:
    """The output dim that input `slot`'s dim `dim` moves with, where the input may be
    chunked; None where it is mixed, or must be whole before the loop and is not recomputed
    for its statistics."""
    out_dim = rule.group_of(slot, dim)
    if out_dim is None or (slot in rule.whole_of(out_dim) and not recompute):
        return None
    return out_dim


def _needed_before(graph: Graph, span: tuple[str, ...], seed: str, fork: str) -> bool:
    """Whether the stretch holds, before `fork`, an op the seed needs that `fork` does not
    (the query projection before the rotary table): then only making `fork` whole keeps it."""
    inside = set(span)

    def ancestors(name: str) -> set[str]:
        found: set[str] = set()
        pending = [name]
        while pending:
            for ref in graph[pending.pop()].refs():
                if ref in inside and ref not in found:
                    found.add(ref)
                    pending.append(ref)
        return found

    at = graph.position(fork)
    through = ancestors(fork) | {fork}
    return any(graph.position(n) < at for n in ancestors(seed) - through)


def _fork(reject: _Reject, parent: dict[str, tuple[str | None, bool]]) -> str | None:
    """The producer the walk reached backwards, nearest the conflict, from which it then went
    forwards to the conflict: made whole before the loop, its other readers no longer follow
    the chunk."""
    chain = [(reject.node, reject.forward)]
    name = reject.via
    while name is not None:
        via, forward = parent.get(name, (None, False))
        chain.append((name, forward))
        name = via
    for (_, went_forward), (node, reached_forward) in zip(chain, chain[1:]):
        if went_forward and not reached_forward and parent.get(node, (None,))[0] is not None:
            return node
    return None


def _blame(
    reject: _Reject,
    parent: dict[str, tuple[str | None, bool]],
    graph: Graph,
    inside: set[str],
    seed: str,
) -> Conflict:
    """Return the boundary moves that cut the walk from the seed to the conflict.

    The walk is cut by ending the stretch before a node reached forwards that runs after the
    seed, or by starting it after a node reached backwards that runs before the seed (a
    projection split into q, k and v, where only q may be chunked, is cut by starting after
    the split). Cuts are listed nearest the conflict first: those keep the most of the stretch.
    """
    steps = [(reject.node, reject.forward)]
    name = reject.via
    while name is not None:
        via, forward = parent.get(name, (None, False))
        steps.append((name, forward))
        name = via
    at = graph.position(seed)
    starts, ends = [], []
    for node, forward in steps[:-1]:  # deepest first; the last step is the seed itself
        if node not in inside:
            continue
        if forward and graph.position(node) > at:
            ends.append(node)
        if not forward and graph.position(node) < at:
            starts.append(node)
    return Conflict(tuple(starts), tuple(ends), str(reject))


def _region(
    graph: Graph,
    span: tuple[str, ...],
    loop: dict[str, int],
    sliced: dict[str, int],
    seed: str,
    seed_dim: int,
    sums: dict[str, tuple[str | None, str | None]],
) -> Region | Conflict | None:
    inside = set(span)
    graph_outputs = graph.output_names()
    outputs = []
    summed = {name for product, (add, _) in sums.items() for name in (product, add) if name}
    for name in span:
        if name not in loop:
            continue
        if any(user not in inside for user in graph.users(name)) or name in graph_outputs:
            if isinstance(graph[name].meta, tuple):
                # a tuple of chunks read after the loop has no buffer layout: start after it
                return Conflict((name,), (), f"{name} is a tuple read after the loop")
            outputs.append((name, loop[name]))
    if not outputs and not sums:
        return None
    # a product's chunk and its weight's slice are the same features (NOTE [Sums over the
    # chunks]): at the same scale, made and read over the chunk's own rows
    ties, exact = {}, list(outputs)
    for product in sums:
        slot, _, weight_slot = contraction(graph[product], graph)
        sources = tensor_inputs(graph[product], graph)
        chunked, weight = sources[slot], sources[weight_slot]
        ties[weight] = chunked
        exact += [(chunked, loop[chunked]), (weight, 1)]
    found = _halos(graph, span, loop, sliced, exact, ties)
    if found is None:
        return _past_rolls(graph, loop, seed)
    halos, extent, shifts = found
    materialized = [
        name
        for name in _order(graph, _read_whole_by_matmul(graph, loop, sliced))
        if isinstance(graph[name].meta, TensorMeta) and not graph[name].tensor.contiguous
    ]
    ordered_slices = [(name, sliced[name]) for name in _order(graph, sliced)]
    recomputed = []  # NOTE [Statistics passes]
    for name, dim in loop.items():
        rule = dim_rule(graph[name], graph)
        sources = tensor_inputs(graph[name], graph)
        if rule is not None and any(sources[slot] in loop for slot in rule.whole_of(dim)):
            recomputed.append(name)
    recomputed = _order(graph, dict.fromkeys(recomputed))
    if shifts and (sums or recomputed):
        return _past_rolls(graph, loop, seed)  # NOTE [Cyclic shifts]: they start at row 0
    twice = _recomputed_twice(graph, loop, recomputed)
    if twice is not None:
        return Conflict((twice[0],), (twice[1],), f"{twice[1]} would recompute {twice[0]}'s input")
    region = Region(
        span=span,
        loop=tuple((name, loop[name]) for name in span if name in loop),
        hoisted=tuple(name for name in span if name not in loop and name not in summed),
        slices=tuple(ordered_slices),
        outputs=tuple(outputs),
        extent=extent,
        materialized=tuple(materialized),
        halos=halos,
        recomputed=tuple(recomputed),
        sums=tuple((product, add) for product, (add, _) in sums.items()),
        shifts=shifts,
    )
    if shifts and truncated_keys(graph, region):
        return _past_rolls(graph, loop, seed)  # keys cut from the chunk's first row move
    if halos and set(truncated_keys(graph, region)) & {name for name, *_ in halos}:
        return None  # keys cut from the chunk's first row cannot serve rows before it
    return region


def _past_rolls(graph: Graph, loop: dict[str, int], seed: str) -> Conflict | None:
    """The boundary moves that leave out the rolls moving the chunked dim, when a loop through
    them cannot run (NOTE [Cyclic shifts]): a stretch starting after a roll reads its output
    as any value made before the loop. None when no roll moves the loop."""
    at = graph.position(seed)
    rolls = [name for name, dim in loop.items() if _rule(graph, name).shift_of(dim)]
    if not rolls:
        return None
    rolls.sort(key=lambda name: abs(graph.position(name) - at))
    return Conflict(
        tuple(name for name in rolls if graph.position(name) < at),
        tuple(name for name in rolls if graph.position(name) > at),
        f"a loop through {', '.join(rolls)} cannot shift its rows",
    )


def _rule(graph: Graph, name: str) -> DimRule:
    rule = dim_rule(graph[name], graph)
    assert rule is not None
    return rule


#: the most statistics passes that may make one loop value (NOTE [Statistics passes])
PASSES_PER_VALUE = 2


def _recomputed_twice(
    graph: Graph, loop: dict[str, int], recomputed: list[str]
) -> tuple[str, str] | None:
    """Two recomputed group norms, in order, whose statistics passes would make one loop value
    with a pass between them that makes it too, or None. Each pass makes the norm's input from
    the loop's start: passes repeating each other's work without a bound would make their cost
    grow with the square of the loop's length, so a value is made by at most
    `PASSES_PER_VALUE` passes, and the loop ends before the norm whose pass would make it once
    more, or starts after the first that made it (NOTE [Statistics passes])."""
    made: dict[str, list[str]] = {}
    for norm in recomputed:
        for name in made_for(graph, loop, statistics_input(graph, loop, norm)):
            passes = made.setdefault(name, [])
            if len(passes) == PASSES_PER_VALUE:
                return passes[0], norm
            passes.append(norm)
    return None


def statistics_input(graph: Graph, loop: dict[str, int], norm: str) -> str:
    """The loop value a recomputed group norm normalizes (NOTE [Statistics passes])."""
    rule = dim_rule(graph[norm], graph)
    assert rule is not None
    sources = tensor_inputs(graph[norm], graph)
    return next(sources[slot] for slot in rule.whole_of(loop[norm]) if sources[slot] in loop)


def made_for(graph: Graph, loop: dict[str, int], value: str) -> set[str]:
    """The loop values a statistics pass makes to make `value`: it and its producers in the
    loop."""
    needed, pending = {value}, [value]
    while pending:
        for ref in graph[pending.pop()].refs():
            if ref in loop and ref not in needed:
                needed.add(ref)
                pending.append(ref)
    return needed


def _halos(
    graph: Graph,
    span: tuple[str, ...],
    loop: dict[str, int],
    sliced: dict[str, int],
    outputs: list[tuple[str, int]],
    ties: dict[str, str] | None = None,
) -> tuple[tuple[tuple[str, int, int, int], ...], Size] | None:
    """Return the rows, around the chunk's, that each loop value must be made over and each
    sliced value read over (NOTE [Halos]), with the loop's length: that of the coarsest values,
    one row of which the loop walks per row. None when an op would have to make rows it cannot
    (a causal attention, tril's diagonal), or the coarsest values differ in length.

    First each value's scale: its rows per row of the loop (an op reading an input with
    stride 2 makes the input twice as fine). Then, walking the loop backwards, a value's rows
    are the union of what its readers need: the reader's own rows, widened through the
    reader's window on that input. Region outputs need the chunk's rows at their scale, as
    their buffers take exactly those."""
    scales = _scales(graph, loop, sliced, ties or {})
    if scales is None:
        return None
    names = [name for name, _ in outputs]
    shifts = _shifts(graph, loop, sliced, scales, [*sliced, *names])
    if shifts is None:
        return None
    want = rows_wanted(graph, span, loop, scales, outputs, shifts)
    if want is None:
        return None
    dims = {**sliced, **loop}
    coarsest = {out_meta(graph[n]).shape[d] for n, d in dims.items() if scales.get(n) == 1}
    extent = next(iter(coarsest))
    if any(not same_size(size, extent, graph) for size in coarsest):
        return None
    for name in shifts:  # NOTE [Cyclic shifts]: whole rows, counted round the value's length
        size = out_meta(graph[name]).shape[dims[name]]
        if any(want[n] != (0, 0) for n in want) or not same_size(
            size, scales[name] * extent, graph
        ):
            return None
    for name, dim in dims.items():  # tokens: as many rows of units as the loop has rows
        scale = scales.get(name, 1)
        if not isinstance(scale, int):
            units = divided(out_meta(graph[name]).shape[dim], scale)
            if not same_size(units, extent, graph):
                return None
    halos = tuple(
        (name, *want[name], scales[name])
        for name in [*span, *sorted(set(sliced) - set(span), key=graph.position)]
        if name in want and (want[name] != (0, 0) or scales[name] != 1)
    )
    ordered = [*span, *sorted(set(sliced) - set(span), key=graph.position)]
    return halos, extent, tuple((name, shifts[name]) for name in ordered if name in shifts)


def rows_wanted(
    graph: Graph,
    span: tuple[str, ...],
    loop: dict[str, int],
    scales: dict[str, int],
    outputs: list[tuple[str, int]],
    shifts: dict[str, int] | None = None,
) -> dict[str, tuple[int, int]] | None:
    """Return the rows before and after the chunk's that each loop value, and each value the
    loop reads, must be made or read over for the `outputs` to get the chunk's own rows (NOTE
    [Halos]); None when an op would have to make rows it cannot (a causal attention, tril's
    diagonal), or rows moved by a shift (NOTE [Cyclic shifts])."""
    shifts = shifts or {}
    want: dict[str, tuple[int, int]] = {name: (0, 0) for name, _ in outputs}
    for name in reversed(span):
        if name not in loop:
            continue
        before, after = want.setdefault(name, (0, 0))
        node, dim = graph[name], loop[name]
        rule = dim_rule(node, graph)
        assert rule is not None
        moved = before or after or scales.get(name, 1) != 1 or shifts.get(name)
        if moved and (rule.offsets(dim) or _from_the_start(node, dim)):
            return None
        for slot, source in enumerate(tensor_inputs(node, graph)):
            if rule.input_dim(dim, slot) is None:
                continue
            try:
                need = widened(before, after, scales.get(name, 1), rule.halo_of(dim, slot))[:2]
            except ValueError:
                return None
            had = want.get(source, (0, 0))
            want[source] = (max(had[0], need[0]), max(had[1], need[1]))
    return want


def _scales(
    graph: Graph, loop: dict[str, int], sliced: dict[str, int], ties: dict[str, str]
) -> dict[str, Any] | None:
    """Return each loop and sliced value's rows per row of the loop, the coarsest at 1: a
    whole number, or tokens per image row (`8*w`, NOTE [Rows of tokens]); None when two paths
    disagree, or a value would take a fraction of a row at some size. A value `ties` maps to
    another takes its scale (a summed product's weight, its chunk's: NOTE [Sums over the
    chunks])."""
    edges: dict[str, list[tuple[str, Any]]] = {}
    for value, other in ties.items():
        edges.setdefault(value, []).append((other, Fraction(1)))
        edges.setdefault(other, []).append((value, Fraction(1)))
    for name, source, stride, _ in _row_edges(graph, loop):
        edges.setdefault(name, []).append((source, stride))
        edges.setdefault(source, []).append((name, 1 / stride))
    scale = _labelled(loop, Fraction(1), edges, _times, _equal)
    if scale is None:
        return None
    least = min(scale.values(), key=lambda value: float(_at(value, graph)))
    relative = {name: _times(value, 1 / least) for name, value in scale.items()}
    if not all(_whole(value) for value in relative.values()):
        return None
    return {
        name: int(value) if isinstance(value, Fraction) else value
        for name, value in relative.items()
    }


def _row_edges(graph: Graph, loop: dict[str, int]) -> list[tuple[str, Any, Any, Fraction]]:
    """Each loop value with each input it reads along the chunked dim: (value, input, the
    input's rows per row of the value (NOTE [Halos]), the rows a roll moves them by (NOTE
    [Cyclic shifts]))."""
    found = []
    for name, dim in loop.items():
        rule = _rule(graph, name)
        moved = Fraction(rule.shift_of(dim))
        for slot, source in enumerate(tensor_inputs(graph[name], graph)):
            if rule.input_dim(dim, slot) is not None:
                stride = rule.halo_of(dim, slot)[2]
                stride = Fraction(stride) if isinstance(stride, (int, Fraction)) else stride
                found.append((name, source, stride, moved))
    return found


def _shifts(
    graph: Graph,
    loop: dict[str, int],
    sliced: dict[str, int],
    scales: dict[str, Any],
    boundary: list[str],
) -> dict[str, int] | None:
    """Return how many rows on from its scaled loop rows each loop and sliced value's chunk is,
    for the values rolls move (NOTE [Cyclic shifts]); {} when no roll moves the chunked dim,
    None when paths disagree or a shift would be part of a row of some value. Of the loop's
    possible origins, the one that leaves the fewest `boundary` values (read from outside,
    or written out) shifted is kept."""
    edges: dict[str, list[tuple[str, tuple[Any, Fraction]]]] = {}
    moved = False
    for name, source, stride, k in _row_edges(graph, loop):
        moved = moved or bool(k)
        edges.setdefault(name, []).append((source, (stride, -k)))  # input row: s * r - k
        edges.setdefault(source, []).append((name, (None if k else 1 / stride, k)))
    if not moved:
        return {}

    def moved_on(here: Fraction, edge: tuple[Any, Fraction]) -> Fraction | None:
        factor, offset = edge
        if factor is None:  # back through a roll (stride 1): output row r + k
            return here + offset
        if here and not isinstance(factor, Fraction):
            return None  # a shift in rows of tokens (NOTE [Rows of tokens])
        return (here * factor if here else Fraction(0)) + offset

    shift = _labelled(loop, Fraction(0), edges, moved_on, operator.eq)
    if shift is None:
        return None
    best: tuple[tuple[int, bool, Fraction, Fraction], dict[str, int]] | None = None
    for origin in {Fraction(0)} | {-v / scales[n] for n, v in shift.items() if _numeric(scales[n])}:
        moved_by = {}
        for name, value in shift.items():
            scale = scales[name]
            if not _numeric(scale):
                if value or origin:
                    break
                continue
            total = value + origin * scale
            if total.denominator != 1:
                break
            if total:
                moved_by[name] = int(total)
        else:
            key = (sum(name in moved_by for name in boundary), origin != 0, abs(origin), origin)
            if best is None or key < best[0]:
                best = (key, moved_by)
    return None if best is None else best[1]


def _labelled(
    roots: Iterable[str],
    start: Any,
    edges: dict[str, list[tuple[str, Any]]],
    label: Callable[[Any, Any], Any],
    same: Callable[[Any, Any], bool],
) -> dict[str, Any] | None:
    """Label each value reached from `roots` along `edges`: a root not yet reached takes
    `start`, any other value `label(its neighbour's label, the edge)`. None when two paths
    give a value labels that are not the `same`, or `label` gives None."""
    labels: dict[str, Any] = {}
    for root in roots:
        if root in labels:
            continue
        labels[root] = start
        pending = [root]
        while pending:
            name = pending.pop()
            for other, edge in edges.get(name, ()):
                found = label(labels[name], edge)
                if found is None:
                    return None
                if other not in labels:
                    labels[other] = found
                    pending.append(other)
                elif not same(labels[other], found):
                    return None
    return labels


def _numeric(scale: Any) -> bool:
    return isinstance(scale, (int, Fraction))


def _times(a: Any, b: Any) -> Any:
    """A scale times a stride: numbers as fractions, sizes as sympy (NOTE [Rows of tokens])."""
    if isinstance(a, Fraction) and isinstance(b, Fraction):
        return a * b
    return _sized_product(_sym(a), _sym(b))


@functools.lru_cache(maxsize=4096)
def _sized_product(a: Any, b: Any) -> Any:
    value = sympy.cancel(a * b)
    return Fraction(int(value.p), int(value.q)) if value.is_Rational else value


def _sym(value: Any) -> Any:
    if isinstance(value, Fraction):
        return sympy.Rational(value.numerator, value.denominator)
    return value


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, Fraction) and isinstance(b, Fraction):
        return a == b
    return _sym(a) == _sym(b) or _sized_product(_sym(a), 1 / _sym(b)) == 1


def _at(value: Any, graph: Graph) -> Any:
    return value if isinstance(value, Fraction) else value.xreplace(graph.hints)


def _whole(value: Any) -> bool:
    """Whether a scale is a whole number of rows at every size: a polynomial in the dynamic
    dims with whole coefficients."""
    if isinstance(value, Fraction):
        return value.denominator == 1 and value >= 1
    return _whole_polynomial(value)


@functools.lru_cache(maxsize=4096)
def _whole_polynomial(value: sympy.Expr) -> bool:
    symbols = sorted(value.free_symbols, key=str)
    if not symbols or not value.is_polynomial(*symbols):
        return False
    return all(c.is_Integer and c >= 0 for c in sympy.Poly(value, *symbols).coeffs())


def _read_whole_by_matmul(graph: Graph, loop: dict[str, int], sliced: dict[str, int]) -> dict:
    """Return values from outside the loop that loop matmuls read whole (not sliced)."""
    found: dict[str, int] = {}
    for name in loop:
        node = graph[name]
        if info(node.target).batched:
            for source in tensor_inputs(node, graph):
                if source not in loop and source not in sliced and graph[source].kind == "op":
                    found[source] = 0
    return found


def _order(graph: Graph, names: dict[str, int]) -> list[str]:
    return sorted(names, key=graph.position)


def takes_statistics(graph: Graph, name: str) -> bool:
    """Whether an op needs statistics over its whole input before a loop along some dim (a
    group norm, NOTE [Statistics before the loop])."""
    meta = out_meta(graph[name])
    if graph[name].kind != "op" or meta is None:
        return False
    rule = dim_rule(graph[name], graph)
    return rule is not None and any(rule.whole_of(dim) for dim in range(meta.rank))


def chunkable_dims(graph: Graph, name: str, minimum: int = 2) -> list[int]:
    """Return the dims of a node's result long enough to chunk, longest first."""
    meta = out_meta(graph[name])
    if meta is None:
        return []
    sizes = [(evaluate(size, graph.hints), dim) for dim, size in enumerate(meta.shape)]
    return [dim for size, dim in sorted(sizes, key=lambda p: (-p[0], p[1])) if size >= minimum]


def grow(
    graph: Graph,
    names: list[str],
    first: int,
    last: int,
    seed: str,
    dim: int,
    budget: int = 24,
    recompute: bool = False,
) -> list[Region]:
    """Return the regions around the seed inside names[first:last+1].

    Starting from the whole window, each conflict offers boundary moves (the cut nearest the
    conflict and the one nearest the seed, on either side); the stretches they give are tried
    breadth-first, at most `budget` of them. With `recompute`, group norms may take their
    statistics in a pass of their own (NOTE [Statistics passes]).
    """
    position = {name: index for index, name in enumerate(names)}
    at = position[seed]
    queue = [(first, last)]
    seen = set(queue)
    found: list[Region] = []
    while queue and budget > 0:
        first, last = queue.pop(0)
        budget -= 1
        result = propagate(graph, tuple(names[first : last + 1]), seed, dim, recompute)
        if result is None:
            return found
        if isinstance(result, Region):
            found.append(result)
            # a loop through rolls may hold more than one starting after them: try both
            result = _past_rolls(graph, dict(result.loop), seed) if result.shifts else None
            if result is None:
                continue
        moves = []
        for cut in dict.fromkeys(result.start_after[:1] + result.start_after[-1:]):
            moves.append((position[cut] + 1, last))
        for cut in dict.fromkeys(result.end_before[:1] + result.end_before[-1:]):
            moves.append((first, position[cut] - 1))
        for move in moves:
            if move[0] <= at <= move[1] and move not in seen:
                seen.add(move)
                queue.append(move)
    return found


__all__ = [
    "chunkable_dims",
    "grow",
    "made_for",
    "rows_wanted",
    "statistics_input",
    "takes_statistics",
]
