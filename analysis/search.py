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

from analysis.dimflow import DimRule, dim_rule, out_meta, tensor_inputs
from analysis.ir import Graph, evaluate
from analysis.plan import Region


class _Reject(Exception):
    """The stretch cannot run as one loop over the seed dim."""


def propagate(graph: Graph, span: tuple[str, ...], seed: str, seed_dim: int) -> Region | None:
    """Return the region a stretch forms when chunked along `seed_dim` of `seed`, if it can."""
    inside = set(span)
    rules: dict[str, DimRule | None] = {}
    loop: dict[str, int] = {}
    sliced: dict[str, int] = {}
    hoist: set[str] = set()

    def rule_of(name: str) -> DimRule | None:
        if name not in rules:
            rules[name] = dim_rule(graph[name], graph)
        return rules[name]

    def producible(name: str, dim: int) -> bool:
        found = rule_of(name)
        return found is not None and dim < len(found.groups) and bool(found.groups[dim])

    def need_slice(name: str, dim: int) -> None:
        if name in loop:
            raise _Reject(f"{name} is chunked along {loop[name]}, needed along {dim}")
        if sliced.setdefault(name, dim) != dim:
            raise _Reject(f"{name} sliced along two dims")
        if name in inside:
            hoist.add(name)

    work: list[str] = []

    def chunk(name: str, dim: int, forward: bool) -> None:
        if name in loop:
            if loop[name] != dim:
                raise _Reject(f"{name} chunked along two dims")
            return
        if name not in inside:
            need_slice(name, dim)
            return
        if name in hoist or not producible(name, dim):
            if forward:
                raise _Reject(f"{name} mixes the chunked dim")
            need_slice(name, dim)
            return
        if name in sliced:
            raise _Reject(f"{name} is both sliced and chunked")
        loop[name] = dim
        work.append(name)

    if not producible(seed, seed_dim):
        return None
    try:
        chunk(seed, seed_dim, forward=False)
        while work:
            name = work.pop()
            node = graph[name]
            found = rule_of(name)
            assert found is not None
            dim = loop[name]
            if node.mutates is not None and node.mutates not in loop:
                raise _Reject(f"{name} writes in place into a value outside the loop")
            for slot, source in enumerate(tensor_inputs(node, graph)):
                want = found.input_dim(dim, slot)
                if want is not None:
                    chunk(source, want, forward=False)
                elif source in loop:
                    raise _Reject(f"{name} reads chunked {source} whole")
            for user in graph.users(name):
                if user not in inside:
                    continue
                user_rule = rule_of(user)
                slots = [s for s, v in enumerate(tensor_inputs(graph[user], graph)) if v == name]
                if user_rule is None or not slots:
                    raise _Reject(f"{user} mixes the chunked dim of {name}")
                out_dims = {user_rule.group_of(slot, dim) for slot in slots}
                if None in out_dims or len(out_dims) != 1:
                    raise _Reject(f"{user} mixes the chunked dim of {name}")
                chunk(user, out_dims.pop(), forward=True)
    except _Reject:
        return None
    return _region(graph, span, loop, sliced, seed, seed_dim)


def _region(
    graph: Graph,
    span: tuple[str, ...],
    loop: dict[str, int],
    sliced: dict[str, int],
    seed: str,
    seed_dim: int,
) -> Region | None:
    inside = set(span)
    graph_outputs = graph.output_names()
    outputs = []
    for name in span:
        if name not in loop:
            continue
        if any(user not in inside for user in graph.users(name)) or name in graph_outputs:
            if isinstance(graph[name].meta, tuple):
                return None  # a tuple of chunks read after the loop: no buffer layout for it
            outputs.append((name, loop[name]))
    if not outputs:
        return None
    extent = out_meta(graph[seed]).shape[seed_dim]
    ordered_slices = [(name, sliced[name]) for name in _order(graph, sliced)]
    return Region(
        span=span,
        loop=tuple((name, loop[name]) for name in span if name in loop),
        hoisted=tuple(name for name in span if name not in loop),
        slices=tuple(ordered_slices),
        outputs=tuple(outputs),
        extent=extent,
    )


def _order(graph: Graph, names: dict[str, int]) -> list[str]:
    return [node.name for node in graph.nodes if node.name in names]


def chunkable_dims(graph: Graph, name: str, minimum: int = 2) -> list[int]:
    """Return the dims of a node's result long enough to chunk, longest first."""
    meta = out_meta(graph[name])
    if meta is None:
        return []
    sizes = [(evaluate(size, graph.hints), dim) for dim, size in enumerate(meta.shape)]
    return [dim for size, dim in sorted(sizes, key=lambda p: (-p[0], p[1])) if size >= minimum]
