"""Text dumps of each pass's result, for `python -m codegen plan MODEL.py --dump [PASS]`.

The graph prints one node a line; the plan, one region a line; the loop program, every
statement with the decisions lowering took for it: how each operand is read (the loop's own
chunk, the chunk's rows of an outer value, the value whole, its contiguous copy), the keys a
causal mask lets it skip, the in-place write, and the names freed after it.
"""

from __future__ import annotations

from typing import Any

import sympy
import torch

from analysis.ir import Graph, Node, Ref, TensorMeta
from analysis.plan import ChunkPlan, describe_lines, in_dim_names
from analysis.program import (
    CHUNK_ROWS,
    CHUNK,
    COPY,
    AddChunk,
    AddStats,
    Attr,
    Block,
    Budget,
    Call,
    ChunkLength,
    ChunkStart,
    Contiguous,
    Empty,
    Overwrite,
    Floor,
    InputSize,
    LoopStep,
    Operand,
    Program,
    ModuleCall,
    NewStats,
    Return,
    Rows,
    SizeValue,
    Statement,
    Bound,
    GroupStats,
    Stop,
    SumStart,
    TensorConstant,
    UpdateBuffer,
    WriteChunk,
)


def _target(target: Any) -> str:
    name = str(target)
    return getattr(target, "__name__", name) if name.startswith("<") else name


def _meta(meta: Any, graph: Graph) -> str:
    if isinstance(meta, TensorMeta):
        dims = ", ".join(_size(s, graph) for s in meta.shape)
        return f"{str(meta.dtype).removeprefix('torch.')}[{dims}]"
    if isinstance(meta, tuple):
        return "(" + ", ".join(_meta(m, graph) for m in meta) + ")"
    return "" if meta is None else _size(meta, graph)


def _size(size: Any, graph: Graph) -> str:
    return in_dim_names(size, graph) if isinstance(size, sympy.Expr) else str(size)


def _arg(value: Any, graph: Graph, names: dict[str, Any] | None = None, block: Any = None) -> str:
    if isinstance(value, Ref):
        found = names.get(value.name, value.name) if names else value.name
        return f"self.{found.fqn}" if isinstance(found, Attr) else str(found)
    if isinstance(value, Operand):
        return _operand(value, names, block)
    if isinstance(value, ChunkLength):
        return "<stop-start>"
    if isinstance(value, ChunkStart):
        return f"<{value.base}{'+' if value.sign > 0 else '-'}start>"
    if isinstance(value, sympy.Expr):
        return _size(value, graph)
    if isinstance(value, torch.device):
        return "<the inputs' device>"
    if isinstance(value, list):
        return "[" + ", ".join(_arg(v, graph, names, block) for v in value) + "]"
    if isinstance(value, tuple):
        return "(" + ", ".join(_arg(v, graph, names, block) for v in value) + ")"
    return repr(value)


def _operand(read: Operand, names: dict[str, Any] | None, block: Block | None) -> str:
    """`chunk(x)`: the loop's own chunk; `copy(x)`: the contiguous copy; `[rows@d]`: the
    chunk's rows along dim d, `[rows@d-2+2]` with two more on each side (NOTE [Halos]), and
    `of -4+4` where a chunk made over more rows is cropped; `[keys@d]`: only the keys the
    chunk can see along dim d."""
    name: Any = read.value
    if block is not None and read.source == CHUNK:
        name = block.chunks.get(name, name)
    elif block is not None and read.source == COPY:
        name = block.copies.get(name, name)
    elif names:
        found = names.get(name, name)
        name = f"self.{found.fqn}" if isinstance(found, Attr) else found
    text = {CHUNK: f"chunk({name})", COPY: f"copy({name})"}.get(read.source, name)
    cuts = []
    halo = _rows(read.span) if read.span != CHUNK_ROWS else ""
    if read.rows is not None:
        cuts.append(f"rows@{read.rows}{halo}")
    if read.crop is not None:
        made = read.crop[1]
        cuts.append(f"rows@{read.crop[0]}{halo or '-0+0'} of {_rows(made)}")
    if read.keys is not None:
        cuts.append(f"keys@{read.keys}")
    return f"{text}[{', '.join(cuts)}]" if cuts else text


def _rows(span: Any) -> str:
    """A span as `-2+2` (rows before and after the chunk's), `x2-1+0` at twice its rows."""
    scale = f"x{span.scale}" if span.scale > 1 else ""
    return f"{scale}-{span.before}+{span.after}"


def _call(
    target: Any, args: Any, kwargs: Any, graph: Graph, names: Any = None, block: Any = None
) -> str:
    parts = [_arg(a, graph, names, block) for a in args]
    parts += [f"{k}={_arg(v, graph, names, block)}" for k, v in kwargs]
    return f"{_target(target)}({', '.join(parts)})"


def format_graph(graph: Graph) -> str:
    """Return the graph, one node a line: `name: layout = op(args)  # file:line`."""
    lines = []
    for node in graph.nodes:
        layout = _meta(node.meta, graph)
        if node.kind != "op":
            lines.append(f"{node.name}: {layout} = {node.kind} {node.target}")
            continue
        where = f"  # {node.source.cite()}" if node.source else ""
        lines.append(f"{node.name}: {layout} = {_node(node, graph)}{where}")
    outputs = ", ".join(_arg(v, graph) for v in graph.outputs)
    lines.append(f"return {outputs}")
    return "\n".join(lines)


def _node(node: Node, graph: Graph) -> str:
    return _call(node.target, node.args, node.kwargs, graph)


def format_plan(plan: ChunkPlan, graph: Graph) -> str:
    """Return the plan, one region a line."""
    lines = [
        f"original peak {plan.original_peak_bytes} B, planned {plan.planned_peak_bytes} B, "
        f"budget {plan.budget_bytes} B"
    ]
    for index, region in enumerate(plan.regions, 1):
        loop = ", ".join(f"{name}@{dim}" for name, dim in region.loop)
        lines.append(
            f"region {index}: {describe_lines(region, graph)}, extent "
            f"{_size(region.extent, graph)}, chunk {region.chunk_size}"
        )
        lines.append(f"  loop: {loop}")
        for label, values in (
            ("hoisted", region.hoisted),
            ("sliced", [f"{n}@{d}" for n, d in region.slices]),
            ("buffers", [f"{n}@{d}" for n, d in region.outputs]),
            ("sums", [f"{p} into {v}" for p, v in region.sum_values.items()]),
            ("copied contiguous", region.materialized),
        ):
            if values:
                lines.append(f"  {label}: {', '.join(values)}")
    return "\n".join(lines)


def format_program(program: Program, graph: Graph) -> str:
    """Return the loop program, one statement a line, loops indented; then each module's
    forward (NOTE [Module scopes]) and the module calls written inline."""
    where = f"{program.path}." if program.path else ""
    lines: list[str] = [f"{where}forward({', '.join(program.params)}):"]
    for item in program.body:
        if isinstance(item, Block):
            lines.extend(_block(item, program, graph))
        else:
            lines.append("  " + _statement(item, program, graph))
    for scope in program.scopes.values():
        lines.extend(["", format_program(scope, graph)])
    if program.inlined:
        lines.extend(["", "written inline:"])
        lines.extend(f"  {i.call}: {i.reason}" for i in program.inlined)
    return "\n".join(lines)


def _block(block: Block, program: Program, graph: Graph) -> list[str]:
    extent = _arg(block.extent, graph)
    head = f"  for start in range(0, {extent}, {block.rows}):  # region {block.index + 1}"
    if block.statistics:  # NOTE [Statistics passes]
        head += f", statistics pass for {block.statistics}"
    body = ["    " + _statement(s, program, graph, block) for s in block.body]
    frees = [f"  del {', '.join(block.frees)}"] if block.frees else []
    return [head, *body, *frees]


def _statement(
    statement: Statement, program: Program, graph: Graph, block: Block | None = None
) -> str:
    expr, names = statement.expr, program.names
    if isinstance(expr, LoopStep):
        text = _call(expr.target, expr.args, expr.kwargs, graph, names, block)
        notes = [f"{expr.node}, chunked along dim {expr.dim}"]
        if expr.computed != expr.span:
            made, kept = expr.computed, expr.span
            notes.append(f"rows {_rows(made)} cropped to {_rows(kept)}")
        if expr.inplace is not None:
            notes.append(f"in place on slot {expr.inplace}")
        if expr.keys is not None:
            first = "" if expr.window is None else f"start{expr.window:+d} <= "
            notes.append(f"{first}keys < stop{expr.keys:+d}")
    else:
        text, notes = _plain(expr, program, graph), []
    if statement.region is not None:
        notes.append(f"region {statement.region + 1} set-up")
    if statement.frees:
        notes.append(f"frees {', '.join(statement.frees)}")
    bound = f"{statement.var} = " if statement.var else ""
    return f"{bound}{text}" + (f"  # {'; '.join(notes)}" if notes else "")


def _plain(expr: Any, program: Program, graph: Graph) -> str:
    names = program.names
    if isinstance(expr, Call):
        return _call(expr.target, expr.args, expr.kwargs, graph, names)
    if isinstance(expr, InputSize):
        return f"size({expr.input}, axis={expr.axis}, offset={expr.offset}, scale={expr.scale})"
    if isinstance(expr, Budget):
        floor = f", floor={expr.floor}" if expr.floor else ""
        original = _size(expr.original_peak, graph)
        return f"budget(share={expr.share:.4g}, original={original}, example={expr.example}{floor})"
    if isinstance(expr, Floor):
        return f"floor({', '.join(_size(t, graph) for t in expr.terms)})"
    if isinstance(expr, TensorConstant):
        return f"tensor({_meta(expr.meta, graph)})"
    if isinstance(expr, Contiguous):
        return f"contiguous({_arg(Ref(expr.value), graph, names)})"
    if isinstance(expr, Overwrite):
        unless = ", unless hooked" if expr.unless_hooked else ""
        shape = (
            f", viewed as [{', '.join(_size(d, graph) for d in expr.shape)}]" if expr.shape else ""
        )
        return f"overwrite({_arg(Ref(expr.value), graph, names)}{shape}{unless})"
    if isinstance(expr, Empty):
        dtype = (
            f"dtype of {_arg(Ref(expr.dtype_of), graph, names)}" if expr.dtype_of else "fixed dtype"
        )
        device = (
            f"device of {_arg(Ref(expr.device_of), graph, names)}"
            if expr.device_of
            else "the inputs' device"
        )
        return f"empty({_meta(expr.meta, graph)}, {dtype}, {device})"
    if isinstance(expr, Rows):
        return (
            f"rows(budget, fixed={_size(expr.fixed, graph)}, per_row={_size(expr.per_row, graph)}, "
            f"cpu={expr.planned}, extent={_arg(expr.extent, graph)})"
        )
    if isinstance(expr, Stop):
        return f"min(start + {expr.rows}, {_arg(expr.extent, graph)})"
    if isinstance(expr, GroupStats):
        return (
            f"group_stats({_arg(Ref(expr.value), graph, names)}, groups={expr.groups}, "
            f"eps={expr.eps}, dim={expr.dim}, rows={expr.rows})"
        )
    if isinstance(expr, NewStats):
        return f"group_stats(groups={expr.groups}, eps={expr.eps})"
    if isinstance(expr, AddStats):
        return f"{expr.stats}.add({expr.value}, rows {_rows(expr.rows)} of {_rows(expr.made)})"
    if isinstance(expr, Bound):
        if expr.before:
            return f"max({expr.scale} * start - {expr.rows}, 0)"
        size = _arg(expr.size if expr.scale > 1 else expr.extent, graph)
        return f"min({expr.scale} * stop + {expr.rows}, {size}), {size} on the last chunk"
    if isinstance(expr, WriteChunk):
        return f"write({expr.buffer}@{expr.dim}, {expr.chunk})"
    if isinstance(expr, SumStart):  # NOTE [Sums over the chunks]
        total = expr.total
        starts = [_arg(Ref(v), graph, names) for v in (total.added, total.bias) if v]
        place = " in place" if total.overwrites else ""
        place += ", unless hooked" if total.unless_hooked else ""
        return f"sum_start({' + '.join(starts) or 'zeros'}{place})"
    if isinstance(expr, AddChunk):
        total = expr.total
        weight = f"{total.weight.value}[:, {_rows(total.weight.span)}]"
        return f"add_linear({_arg(Ref(total.value), graph, names)}, {total.chunk.value}, {weight})"
    if isinstance(expr, UpdateBuffer):
        return f"update(self.{expr.fqn}, {_arg(Ref(expr.value), graph, names)})"
    if isinstance(expr, SizeValue):
        return f"size({_size(expr.expr, graph)})"
    if isinstance(expr, ModuleCall):
        args = ", ".join(_arg(Ref(a), graph, names) for a in expr.args)
        return f"{', '.join(expr.targets) or '_'} <- self.{expr.path}({args})"
    if isinstance(expr, Return):
        return f"return {', '.join(_arg(v, graph, names) for v in expr.values)}"
    raise TypeError(f"cannot dump {type(expr).__name__}")


def format_pass(name: str, value: Any, graph: Graph) -> str:
    """Return one pass's result as text."""
    if value is None:
        return "(no rewrite kept: the plan is for the graph as captured)"
    if isinstance(value, Graph):
        return format_graph(value)
    if isinstance(value, ChunkPlan):
        return format_plan(value, graph)
    if isinstance(value, Program):
        return format_program(value, graph)
    raise TypeError(f"cannot dump the result of pass {name}")


__all__ = ["format_pass"]
