"""Elementwise ops in a chunk loop that may overwrite their operand instead of allocating.

NOTE [In-place in loops]
Inside a chunk loop, `scores = scores_raw / scale` allocates a second chunk while the first is
still alive, and walks twice the bytes through the cache. When the operand is a chunk the loop
itself just made, nothing else reads it afterwards, and the result has its shape and dtype, the
op can run in place (`scores_raw.div_(scale)`): the same kernel writes the same values, so the
numerics are unchanged. An operand qualifies only when:
- it is computed in the same loop (a value from outside is whole or a slice of one: writing it
  would change it for every later chunk);
- its op always returns fresh storage (never a view, and never its input unchanged, which
  `contiguous` or `to` may do), or it is itself such an in-place result;
- the op is its only reader in the whole graph, and reads it once;
- it is not an output of the graph or of the loop.
"""

from __future__ import annotations

from analysis.ir import Graph, Ref, TensorMeta, storage_roots
from analysis.ops import info
from analysis.plan import Region


def inplace_operands(graph: Graph, region: Region) -> dict[str, int]:
    """Return the loop nodes that run in place, each with the argument slot it overwrites."""
    loop = region.loop_dims
    outputs = {name for name, _ in region.outputs} | graph.output_names()
    found: dict[str, int] = {}
    for name, dim in region.loop:
        node = graph[name]
        op = info(node.target)
        if op.inplace is None or node.mutates or node.aliases:
            continue
        slots = (0, 1) if op.commutative and not node.kwargs else (0,)
        for slot in slots:
            arg = node.args[slot] if slot < len(node.args) else None
            if not isinstance(arg, Ref) or loop.get(arg.name) != dim:
                continue
            operand = graph[arg.name]
            if (
                info(operand.target).fresh
                and operand.aliases is None
                and operand.mutates is None
                and arg.name not in outputs
                and graph.users(arg.name) == (name,)
                and list(node.refs()).count(arg.name) == 1
                and operand.meta == node.meta
            ):
                found[name] = slot
                break
    return found


def storage_ends_by(graph: Graph, value: str, end: int) -> bool:
    """Whether a loop ending at position `end` may write into `value`'s storage as far as the
    value itself goes (NOTE [Outputs in place], NOTE [Sums over the chunks]): an op's own
    contiguous result, no view, no in-place write, no output of the forward, its storage last
    read by position `end`."""
    node = graph[value]
    roots, last_use = storage_roots(graph)
    return (
        node.kind == "op"
        and roots.get(value, value) == value
        and node.aliases is None
        and node.mutates is None
        and value not in graph.output_names()
        and isinstance(node.meta, TensorMeta)
        and node.meta.contiguous
        and last_use.get(value, end + 1) <= end
    )


__all__ = ["inplace_operands", "storage_ends_by"]
