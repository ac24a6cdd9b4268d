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

import torch

from analysis.ir import Graph, Ref
from analysis.plan import Region

aten = torch.ops.aten

#: out-of-place op -> its in-place overload
INPLACE = {
    aten.add.Tensor: aten.add_.Tensor,
    aten.sub.Tensor: aten.sub_.Tensor,
    aten.mul.Tensor: aten.mul_.Tensor,
    aten.div.Tensor: aten.div_.Tensor,
    aten.masked_fill.Scalar: aten.masked_fill_.Scalar,
    aten.masked_fill.Tensor: aten.masked_fill_.Tensor,
    aten.relu.default: aten.relu_.default,
    aten.sigmoid.default: aten.sigmoid_.default,
    aten.tanh.default: aten.tanh_.default,
    aten.exp.default: aten.exp_.default,
    aten.neg.default: aten.neg_.default,
    aten.bitwise_not.default: aten.bitwise_not_.default,
    aten.tril.default: aten.tril_.default,
    aten.triu.default: aten.triu_.default,
}

#: ops whose two tensor operands may be swapped without changing a bit of the result
COMMUTATIVE = {aten.add.Tensor, aten.mul.Tensor}

#: ops whose result is always newly allocated storage
FRESH = {
    *INPLACE,
    aten.matmul.default,
    aten.mm.default,
    aten.bmm.default,
    aten.addmm.default,
    aten.baddbmm.default,
    aten.linear.default,
    aten.softmax.int,
    aten._softmax.default,
    aten.layer_norm.default,
    aten.gelu.default,
    aten.silu.default,
    aten.tril.default,
    aten.triu.default,
    aten.ones.default,
    aten.zeros.default,
    aten.full.default,
    aten.bitwise_not.default,
    aten.where.self,
}


def inplace_operands(graph: Graph, region: Region) -> dict[str, int]:
    """Return the loop nodes that run in place, each with the argument slot it overwrites."""
    key = ("inplace", region.loop, region.outputs)
    if key not in graph.memo:
        graph.memo[key] = _find(graph, region)
    return graph.memo[key]


def _find(graph: Graph, region: Region) -> dict[str, int]:
    loop = region.loop_dims
    outputs = {name for name, _ in region.outputs} | graph.output_names()
    found: dict[str, int] = {}
    for name, dim in region.loop:
        node = graph[name]
        if node.target not in INPLACE or node.mutates or node.aliases:
            continue
        slots = (0, 1) if node.target in COMMUTATIVE and not node.kwargs else (0,)
        for slot in slots:
            arg = node.args[slot] if slot < len(node.args) else None
            if not isinstance(arg, Ref) or loop.get(arg.name) != dim:
                continue
            operand = graph[arg.name]
            if (
                operand.target in FRESH
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
