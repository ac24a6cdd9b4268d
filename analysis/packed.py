"""Packed projections: one linear that makes the queries, keys and values together, split.

NOTE [Packed projections]
`nn.MultiheadAttention` (torchvision's ViT, and most models that use it) projects the queries,
keys and values with one packed weight, `in_proj_weight` of 3E rows, and then splits the result:

    proj = linear(x, in_proj_weight, in_proj_bias)                      # [L, N, 3E]
    proj = proj.unflatten(-1, (3, E)).unsqueeze(0).transpose(0, -2).squeeze(-2).contiguous()
    q, k, v = proj[0], proj[1], proj[2]                                 # [L, N, E] each

Eager holds the packed result and its contiguous copy, 6E per token, and no loop over the
queries can run through the packed linear, since the keys and values it also makes are needed
whole. Row i of `proj[j]` is `x[i] @ W[jE:(j+1)E].T + b[jE:(j+1)E]`, so each `proj[j]` is the
linear of x with that block of rows of the weight and the bias: `linear(x, W[jE:(j+1)E],
b[jE:(j+1)E])`, a contiguous [L, N, E] tensor like the copy's slice. The pass writes each of the
three that way, where the chain is exactly the one above (`unflatten` of the last dim into
(3, E), the new dim moved to the front, `select` of each part); the packed linear and its copy
go once nothing else reads them. Then the keys and values are made whole, and the queries, a
linear of their own, can be made chunk by chunk inside the attention's loop
(NOTE [Keys before queries]). Each product is the packed one's own rows: only the matrix
kernel's blocking may differ, within the verified tolerance.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from analysis.ir import Graph, Node, Ref, TensorMeta, fresh_name, without_dead

aten = torch.ops.aten


def split_packed(graph: Graph) -> Graph | None:
    """Return the graph with each packed q/k/v projection split into three linears (NOTE
    [Packed projections]), or None when there is none."""
    parts: dict[str, tuple[Node, int, int]] = {}  # select -> (the packed linear, j, E)
    for node in graph.nodes:
        found = _part(graph, node)
        if found is not None:
            parts[node.name] = found
    if not parts:
        return None
    taken = {node.name for node in graph.nodes}
    nodes: list[Node] = []
    for node in graph.nodes:
        if node.name not in parts:
            nodes.append(node)
            continue
        linear, j, width = parts[node.name]
        x, weight = linear.args[0], linear.args[1]
        bias = linear.args[2] if len(linear.args) > 2 else linear.kwarg("bias")
        sliced = []
        for operand in (weight, bias):
            if operand is None:
                sliced.append(None)
                continue
            name = fresh_name(f"{operand.name}_{'qkv'[j]}", taken)
            meta = graph[operand.name].tensor
            shape = (width, *meta.shape[1:])
            sliced.append(Ref(name))
            nodes.append(
                Node(
                    name,
                    "op",
                    aten.slice.Tensor,
                    (operand, 0, j * width, (j + 1) * width),
                    meta=TensorMeta(shape, meta.dtype),
                    source=linear.source,
                    module_path=linear.module_path,
                    module_type=linear.module_type,
                    calls=linear.calls,
                    aliases=operand.name,
                )
            )
        args = (x, sliced[0]) + ((sliced[1],) if sliced[1] is not None else ())
        nodes.append(replace(linear, name=node.name, args=args, kwargs=(), meta=node.meta))
    rewritten = replace(graph, nodes=tuple(nodes), memo={})
    return without_dead(rewritten)


def _part(graph: Graph, node: Node) -> tuple[Node, int, int] | None:
    """For `select(contiguous(squeeze(transpose(unsqueeze(unflatten(linear(x, W, b), -1,
    (3, E)), 0), 0, -2), -2)), 0, j)`, the linear, j and E; else None."""
    if node.target is not aten.select.int or node.args[1:] not in ((0, 0), (0, 1), (0, 2)):
        return None
    chain = [
        (aten.contiguous.default, None),
        (aten.squeeze.dim, (-2,)),
        (aten.transpose.int, (0, -2)),
        (aten.unsqueeze.default, (0,)),
    ]
    value = node.args[0]
    for target, rest in chain:
        producer = _producer(graph, value)
        if producer is None or producer.target is not target:
            return None
        if rest is not None and tuple(producer.args[1:]) != rest:
            return None
        value = producer.args[0]
    unflatten = _producer(graph, value)
    if unflatten is None or unflatten.target is not aten.unflatten.int:
        return None
    dims = unflatten.args[2]
    if unflatten.args[1] != -1 or not isinstance(dims, (list, tuple)) or len(dims) != 2:
        return None
    if dims[0] != 3 or not isinstance(dims[1], int):
        return None
    linear = _producer(graph, unflatten.args[0])
    if linear is None or linear.target is not aten.linear.default or linear.kwargs:
        return None
    operands = [linear.args[1]] + ([linear.args[2]] if len(linear.args) > 2 else [])
    if not all(isinstance(o, Ref) and isinstance(graph[o.name].meta, TensorMeta) for o in operands):
        return None
    if graph[linear.args[1].name].tensor.shape[0] != 3 * dims[1]:
        return None
    return linear, node.args[2], dims[1]


def _producer(graph: Graph, value: Any) -> Node | None:
    """The op that makes `value`, if it is one op's result."""
    if not isinstance(value, Ref) or graph[value.name].kind != "op":
        return None
    return graph[value.name]


__all__ = ["split_packed"]
