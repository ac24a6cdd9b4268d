"""Lowering one region: its loop steps, with every operand's slice, in-place writes, causal
key cuts, size arguments that follow the chunk, and the layers called as modules (NOTE [Loop
program])."""

from __future__ import annotations

from typing import Any, Callable, Mapping

import torch

from analysis.causal import truncated_keys
from analysis.dimflow import DimRule
from analysis.errors import InternalError
from analysis.inplace import inplace_operands
from analysis.ir import Graph, Node, Ref, TensorMeta
from analysis.layers import Layer
from analysis.ops import dim_rule, info, inplace_form
from analysis.plan import Region
from analysis.program import CHUNK, COPY, OUTER, ChunkLength, ChunkStart, LoopRegion, LoopStep, Operand


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

        def operand(slot: int, ref: str, rule: DimRule = rule, dim: int = dim) -> Operand:
            if ref in loop:
                return Operand(ref, slot, CHUNK, keys=keys.get(slot))
            source = COPY if ref in copies else OUTER
            return Operand(ref, slot, source, rule.input_dim(dim, slot), keys.get(slot))

        args, kwargs = _resized(node, rule, dim)
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
                layer=called,
            )
        )
    return LoopRegion(region, tuple(steps))


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


def _resized(node: Node, rule: DimRule, dim: int) -> tuple[tuple[Any, ...], tuple]:
    """Return the node's arguments with sizes of the chunked dim as the chunk's length, and
    offsets that follow the chunk's start."""
    paths, offsets = rule.resized(dim), rule.offsets(dim)
    args = list(node.args)
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
