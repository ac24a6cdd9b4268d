"""Build the generated forward: statements for every node, chunk loops for every region.

The body is first laid out as a small tree of `Line` and `Loop` items (so liveness can place
`del` statements), then turned into libcst nodes with the source-line comments attached.
"""

from __future__ import annotations

import collections
import re
from dataclasses import dataclass, field, replace
from typing import Any

import libcst as cst
import sympy
import torch

from analysis.causal import KeyCut, truncated_keys
from analysis.dimflow import dim_rule, out_meta
from analysis.errors import UserError
from analysis.inplace import INPLACE, inplace_operands
from analysis.loader import MODEL_MODULE_PREFIX
from analysis.ir import Graph, Node, Ref, Size, TensorMeta, evaluate, value_bytes
from analysis.plan import ChunkPlan, Region, describe_lines, symbol_name
from analysis.symbolic import Formulas
from codegen.names import Namespace
from codegen.render import literal, render_call

#: ops whose module is named after the value it returns ("blocks.0.attn.qkv" for its Linear)
_LEAF_OPS = {"linear", "embedding", "layer_norm", "conv2d", "group_norm", "conv1d"}


@dataclass
class Line:
    """One statement: `code`, the names it reads, the name it binds."""

    code: str
    uses: set[str] = field(default_factory=set)
    binds: str | None = None
    comments: list[str] = field(default_factory=list)


@dataclass
class Loop:
    """A chunk loop: its header comments, the `for` head, and its body."""

    head: str
    body: list[Any]
    uses: set[str] = field(default_factory=set)
    comments: list[str] = field(default_factory=list)
    binds: str | None = None


def format_bytes(n: float) -> str:
    """Return a byte count in the largest binary unit that keeps it at or above 1."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def short_dtype(dtype: torch.dtype) -> str:
    names = {
        torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16", torch.float64: "f64",
        torch.int64: "i64", torch.int32: "i32", torch.bool: "b8", torch.uint8: "u8",
    }  # fmt: skip
    return names.get(dtype, str(dtype).removeprefix("torch."))


class ForwardBuilder:
    """Lay out the forward body for a graph and its plan."""

    def __init__(self, graph: Graph, plan: ChunkPlan, formulas: Formulas | None = None) -> None:
        self.graph = graph
        self.plan = plan
        #: memory formulas for run-time chunk sizes (NOTE [Run-time chunk sizes])
        self.formulas = formulas if formulas and any(formulas.regions) else None
        self.budget = ""
        self.ns = Namespace()
        self.names: dict[str, str] = {}
        self.symbols: dict[sympy.Symbol, str] = {}
        self.params: list[str] = []
        self._cited: tuple[str, int] | None = None
        self.device = ""

    # ---------------------------------------------------------------- names
    def sym(self, expr: sympy.Expr) -> str:
        """Render a size expression over the dynamic-dim symbols as Python."""
        return _pycode(expr, self.symbols)

    def shape(self, shape: tuple[Size, ...]) -> str:
        inner = ", ".join(str(s) if isinstance(s, int) else self.sym(s) for s in shape)
        return f"({inner}{',' if len(shape) == 1 else ''})"

    def annotate(self, meta: Any) -> str:
        if isinstance(meta, TensorMeta):
            dims = ", ".join(str(s) if isinstance(s, int) else self.sym(s) for s in meta.shape)
            return f"{short_dtype(meta.dtype)}[{dims}]"
        return ""

    def _base(self, node: Node) -> str:
        target = node.target
        op = getattr(getattr(target, "overloadpacket", None), "__name__", None)
        op = (op or getattr(target, "__name__", "value")).strip("_")
        if op == "getitem":
            source = self.graph[node.args[0].name]
            return f"{self._base(source)}_{node.args[1]}"
        if op in _LEAF_OPS and node.module_path:
            return node.module_path
        return f"{node.module_path}_{op}" if node.module_path else op

    def bind(self, node: Node) -> str:
        name = self.ns.create(self._base(node))
        self.names[node.name] = name
        return name

    def value(self, name: str) -> str:
        node = self.graph[name]
        if node.kind in ("param", "buffer"):
            return _attribute_path(node.target)
        return self.names[name]

    def _constant(self, node: Node) -> Line:
        """A tensor constant, written out (NOTE in `capture._constant_values`)."""
        meta = node.tensor
        values = self.arg_plain(node.args[0])
        var = self.ns.create(str(node.target).rsplit(".", 1)[-1])
        self.names[node.name] = var
        code = f"{var} = torch.tensor({values}, dtype={meta.dtype}, device={self.device})"
        if meta.numel(self.graph.hints) == 0:  # [] alone would lose the shape
            code += f".reshape({self.shape(meta.shape)})"
        comments = ["A tensor constant of the traced forward, written out."]
        return Line(code, uses=_idents(code), binds=var, comments=comments)

    # ---------------------------------------------------------------- layout
    def build(self) -> tuple[list[str], list[Any]]:
        """Return the forward's parameter names and its body items."""
        graph = self.graph
        items: list[Any] = []
        for name in graph.inputs:
            self.names[name] = self.ns.create(name)
            self.params.append(self.names[name])
        tensors = [n for n in graph.inputs if isinstance(graph[n].meta, TensorMeta)]
        self.device = f"{self.names[tensors[0]]}.device" if tensors else "None"
        for symbol in graph.symbols:
            var = self.ns.create(symbol.name)
            self.symbols[symbol.symbol] = var
            size = f"{self.names[symbol.input]}.shape[{symbol.axis}]"
            if symbol.offset:
                size = (
                    f"({size} - {symbol.offset})"
                    if symbol.offset > 0
                    else f"({size} + {-symbol.offset})"
                )
            if symbol.scale != 1:
                size = f"{size} // {symbol.scale}"
            items.append(Line(f"{var} = {size}", binds=var))
        if self.formulas is not None:
            items.extend(self._budget_lines())
        starts = {region.span[0]: (i, region) for i, region in enumerate(self.plan.regions)}
        covered = {name for region in self.plan.regions for name in region.span}
        live = _needed(graph, self.plan)
        outputs = graph.output_names()
        for node in graph.nodes:
            if node.name in starts:
                index, region = starts[node.name]
                items.extend(self._region(index, region, live))
            elif node.kind == "op" and node.name not in covered and node.name in live:
                items.append(self._line(node, self.arg_plain))
            elif node.kind == "constant" and (graph.users(node.name) or node.name in outputs):
                items.append(self._constant(node))
        items.extend(self._return())
        return self.params, _with_dels(items, set(self.params) | self._outputs())

    def _budget_lines(self) -> list[Line]:
        """`budget = ...`: the constructor's budget, else the plan's share of the original's
        estimated peak at this input's size; never below what the hungriest loop needs."""
        plan, formulas = self.plan, self.formulas
        assert formulas is not None
        share = plan.budget_bytes / max(plan.original_peak_bytes, 1)
        original = _pycode(formulas.original_peak, self.symbols)
        self.budget = self.ns.create("budget")
        wanted = (
            f"self.memory_budget if self.memory_budget is not None "
            f"else max(int({share:.4g} * ({original})), {plan.budget_bytes})"
        )
        comments = [
            "Activation bytes for the chunk loops: the constructor's budget, else",
            f"{share:.0%} of the original's estimated peak at this input's size, and no less",
            f"than at the example size ({format_bytes(plan.budget_bytes)}): short inputs run fast.",
        ]
        floors = list(
            dict.fromkeys(_pycode(f.fixed + f.per_row, self.symbols) for f in formulas.regions if f)
        )
        lines = []
        if len(floors) > 1:
            floor = self.ns.create("floor")
            code = f"{floor} = max({', '.join(floors)}) * 21 // 20"
            why = [
                "The most a loop holds at one row per chunk, plus 5%. Where that is over the",
                "budget the peak is there anyway, and the other loops may use as much.",
            ]
            lines.append(Line(code, uses=_idents(code), binds=floor, comments=why))
            wanted = f"max({floor}, {wanted})"
        code = f"{self.budget} = {wanted}"
        lines.append(
            Line(code, uses=_idents(code) - {"self"}, binds=self.budget, comments=comments)
        )
        return lines

    def _outputs(self) -> set[str]:
        return {self.names[n] for n in self.graph.output_names() if n in self.names}

    def arg_plain(self, value: Any) -> str:
        if isinstance(value, Ref):
            return self.value(value.name)
        if isinstance(value, (list, tuple)):
            inner = ", ".join(self.arg_plain(v) for v in value)
            return (
                f"[{inner}]"
                if isinstance(value, list)
                else f"({inner}{',' if len(value) == 1 else ''})"
            )
        return literal(value, self.sym, self.device)

    def _cite(self, node: Node, reset: bool = False) -> list[str]:
        if reset:
            self._cited = None
        source = node.source
        if source is None:
            return []
        key = (source.file, source.line)
        if key == self._cited:
            return []
        self._cited = key
        return [source.cite()]

    def _line(self, node: Node, arg: Any) -> Line:
        sym_value = node.meta if node.target is torch.ops.aten.sym_size.int else None
        if isinstance(sym_value, sympy.Symbol) and sym_value in self.symbols:
            self.names[node.name] = self.symbols[sym_value]
            return Line("", uses=set())
        expr = render_call(node, arg)
        var = self.bind(node)
        note = self.annotate(node.meta)
        code = f"{var}: {note!r} = {expr}" if note else f"{var} = {expr}"
        return Line(code, uses=_idents(expr), binds=var, comments=self._cite(node))

    def _return(self) -> list[Line]:
        lines = []
        for fqn, ref in self.graph.mutations:
            code = f"{_attribute_path(fqn)}.copy_({self.value(ref.name)})"
            lines.append(
                Line(code, uses=_idents(code), comments=[f"the forward updates buffer {fqn}"])
            )
        flat = [self.arg_plain(v) for v in self.graph.outputs]
        expr = _unflatten(self.graph.out_spec, iter(flat), self.graph.model_file)
        return [*lines, Line(f"return {expr}", uses=_idents(expr))]

    # ---------------------------------------------------------------- regions
    def _region(self, index: int, region: Region, live: set[str]) -> list[Any]:
        graph = self.graph
        items: list[Any] = []
        extent = self.arg_plain(region.extent)
        where = describe_lines(region, graph)
        dim_name = symbol_name(region.extent, graph)
        over = f"`{dim_name}`" if dim_name else f"a dim of length {extent}"
        modules = sorted({graph[n].module_path for n, _ in region.loop if graph[n].module_path})
        owner = _common_prefix(modules) or "model"
        biggest = max(region.loop, key=lambda p: value_bytes(graph[p[0]].meta, graph.hints))
        full = value_bytes(graph[biggest[0]].meta, graph.hints)
        n = max(evaluate(region.extent, graph.hints), 1)
        header = [
            f"Chunk region {index + 1}/{len(self.plan.regions)}: {owner} ({where}), over {over}.",
            f"{self.annotate(out_meta(graph[biggest[0]]))} {format_bytes(full)} -> "
            f"{format_bytes(full * min(region.chunk_size, n) / n)} per chunk of "
            f"{region.chunk_size}.",
        ]
        inplace = inplace_operands(graph, region)
        if inplace:
            methods = ", ".join(
                dict.fromkeys(
                    f"`{INPLACE[graph[n].target].__name__.split('.')[0]}`" for n in inplace
                )
            )
            header.append(f"In place, on chunks nothing else reads: {methods}.")
        truncated = truncated_keys(graph, region)
        if truncated:
            header.append(
                "Causal mask: each chunk attends only the keys up to its last query "
                "(NOTE [Causal key truncation])."
            )
        self._cited = None
        hoisted = [graph[n] for n in region.hoisted if n in live]
        for number, node in enumerate(hoisted):
            line = self._line(node, self.arg_plain)
            if number == 0:
                line.comments = [
                    "Hoisted: the next values do not depend on the chunk.",
                    *line.comments,
                ]
            items.append(line)
        outputs = dict(region.outputs)
        device = f"{self.value(region.slices[0][0])}.device" if region.slices else self.device
        contiguous: dict[str, str] = {}
        sliced = dict(region.slices)
        for name in region.materialized:
            var = self.ns.create(f"{self.value(name)}_contiguous")
            contiguous[name] = var
            code = f"{var} = {self.value(name)}.contiguous()"
            comment = (
                "Copied contiguous once: a matmul in the loop would copy it every chunk."
                if name not in sliced
                else "Copied contiguous once, so the larger value it views can be freed."
            )
            items.append(Line(code, uses=_idents(code), binds=var, comments=[comment]))
        buffers: dict[str, str] = {}
        for name, dim in region.outputs:
            node = graph[name]
            var = self.bind(node)
            buffers[name] = var
            like = self._like(region, node.tensor.dtype)
            code = (
                f"{var} = torch.empty({self.shape(node.tensor.shape)}, "
                f"dtype={like}, device={device})"
            )
            items.append(Line(code, uses=_idents(code), binds=var))
        chunk_names: dict[str, str] = {}

        def operand(name: str, want: int | None, keys: tuple[int, str] | None = None) -> str:
            """Render one tensor operand of a loop node: its chunk, a slice, or it whole;
            `keys` = (dim, end) also cuts the keys a causal mask hides from the chunk."""
            cuts = {} if want is None or name in chunk_names else {want: "start:stop"}
            if keys is not None:
                cuts[keys[0]] = f":{keys[1]}"
            code = chunk_names.get(name) or contiguous.get(name) or self.value(name)
            return _index_expr(code, cuts)

        def arg_chunk(value: Any) -> str:
            if isinstance(value, _Code):
                return value.text
            if isinstance(value, Ref):
                return self.value(value.name)  # a size: symbolic ints are never chunked
            if isinstance(value, (list, tuple)):
                inner = ", ".join(arg_chunk(v) for v in value)
                return f"[{inner}]" if isinstance(value, list) else f"({inner},)"
            return literal(value, self.sym, self.device)

        formula = self.formulas.regions[index] if self.formulas is not None else None
        rows = str(region.chunk_size)
        if formula is not None:
            rows = self.ns.create("chunk")
            fixed = _pycode(formula.fixed, self.symbols)
            per_row = _pycode(formula.per_row, self.symbols)
            most = f"{region.chunk_size} if {self.device}.type == 'cpu' else {extent}"
            code = f"{rows} = _rows({self.budget}, {fixed}, {per_row}, {most})"
            comments = [
                f"Rows per chunk within the budget: the loop holds about {fixed} bytes,",
                f"plus {per_row} per row. On a CPU at most {region.chunk_size} rows, the planned",
                "size (cache-friendly); on a GPU, where a chunk costs kernel launches, all that fit.",
            ]
            items.append(Line(code, uses=_idents(code), binds=rows, comments=comments))
        body: list[Any] = [Line(f"stop = min(start + {rows}, {extent})", binds="stop")]
        self._cited = None
        for name, dim in region.loop:
            node = _resized(graph[name], dim, graph)
            rule = dim_rule(node, graph)
            assert rule is not None, f"loop node {name} has no dimension rule"
            cut = _key_cuts(truncated.get(name))
            node = _operands(
                node,
                graph,
                lambda slot, ref: operand(ref, rule.input_dim(dim, slot), cut.get(slot)),
            )
            if name in inplace:
                node = _in_place(node, inplace[name])
            expr = render_call(node, arg_chunk)
            base = self._base(graph[name])
            var = self.ns.create(f"{base}_chunk" if name in outputs else base)
            chunk_names[name] = var
            code = f"{var} = {expr}"
            body.append(Line(code, uses=_idents(expr), binds=var, comments=self._cite(node)))
            if name in outputs:
                target = _slice_expr(buffers[name], outputs[name])
                body.append(Line(f"{target} = {var}", uses={var, buffers[name]}))
        head = f"for start in range(0, {extent}, {rows}):"
        items.append(Loop(head, body, uses=_idents(extent) | ({rows} if formula else set())))
        items[0].comments = header + items[0].comments  # the region opens with what it saves
        self._cited = None
        return items

    def _like(self, region: Region, dtype: torch.dtype) -> str:
        for name, _ in region.slices:
            meta = out_meta(self.graph[name])
            if meta is not None and meta.dtype == dtype:
                return f"{self.value(name)}.dtype"
        return str(dtype)


def _resized(node: Node, dim: int, graph: Graph) -> Node:
    """Return the node with size arguments of the chunked dim replaced by the chunk length."""
    found = dim_rule(node, graph)
    paths = found.resized(dim) if found else ()
    offsets = found.offsets(dim) if found else ()
    if not paths and not offsets:
        return node
    args = list(node.args)
    for position, sign, default in offsets:
        while len(args) <= position:
            args.append(default)
        base = args[position]
        args[position] = _Code(
            f"{base} {'+' if sign > 0 else '-'} start"
            if base
            else ("start" if sign > 0 else "-start")
        )
    for position, element in paths:
        sizes = list(args[position])
        if sizes[element] != -1:
            sizes[element] = (
                _ChunkLength() if node.target is not torch.ops.aten.expand.default else -1
            )
        args[position] = sizes
    return _replace_args(node, tuple(args))


class _ChunkLength(sympy.Symbol):
    """Placeholder for `stop - start` inside a chunk loop."""

    def __new__(cls) -> "_ChunkLength":
        return sympy.Symbol.__new__(cls, "stop - start")


@dataclass(frozen=True)
class _Code:
    """An argument already rendered as Python source."""

    text: str


def _operands(node: Node, graph: Graph, render: Any) -> Node:
    """Return the node with each tensor operand replaced by `render(slot, name)` as code.

    Slots are numbered in the order `tensor_inputs` lists them, so a value read twice (h @ h)
    can be sliced in one place and read whole in the other.
    """
    slot = 0

    def visit(value: Any) -> Any:
        nonlocal slot
        if isinstance(value, Ref) and isinstance(graph[value.name].meta, (TensorMeta, tuple)):
            slot += 1
            return _Code(render(slot - 1, value.name))
        if isinstance(value, (list, tuple)):
            return type(value)(visit(v) for v in value)
        return value

    args = tuple(visit(v) for v in node.args)
    kwargs = tuple((k, visit(v)) for k, v in node.kwargs)
    return replace(node, args=args, kwargs=kwargs)


def _in_place(node: Node, slot: int) -> Node:
    """Return the node as its in-place op, writing into argument `slot` (NOTE [In-place in
    loops]); a commutative op writing into its second argument swaps the two."""
    args = node.args
    if slot == 1:
        args = (args[1], args[0], *args[2:])
    return replace(node, target=INPLACE[node.target], args=args)


def _replace_args(node: Node, args: tuple[Any, ...]) -> Node:
    return replace(node, args=args)


def _slice_expr(var: str, dim: int) -> str:
    return _index_expr(var, {dim: "start:stop"})


def _index_expr(var: str, cuts: dict[int, str]) -> str:
    """Return `var` indexed with the given slice text on each dim (non-negative dims)."""
    if not cuts:
        return var
    return f"{var}[{', '.join(cuts.get(d, ':') for d in range(max(cuts) + 1))}]"


def _key_cuts(cut: KeyCut | None) -> dict[int, tuple[int, str]]:
    """Return, per operand slot, the keys dim to cut and where it ends (NOTE [Causal key
    truncation]): keys and values along their rows, masks along their columns."""
    if cut is None:
        return {}
    end = f"stop + {cut.diagonal}" if cut.diagonal else "stop"
    return {slot: (dim, end) for slot, dim in cut.slots}


def _attribute_path(fqn: str) -> str:
    out = "self"
    for part in fqn.split("."):
        out += (
            f"[{part}]"
            if part.isdigit()
            else (f".{part}" if part.isidentifier() else f".get_submodule({part!r})")
        )
    return out


def _common_prefix(paths: list[str]) -> str:
    if not paths:
        return ""
    parts = [p.split(".") for p in paths]
    common = []
    for group in zip(*parts):
        if len(set(group)) != 1:
            break
        common.append(group[0])
    return ".".join(common)


def _pycode(expr: sympy.Expr, names: dict[sympy.Symbol, str]) -> str:
    if isinstance(expr, _ChunkLength):
        return "stop - start"
    if isinstance(expr, sympy.Symbol):
        if expr in names:
            return names[expr]
        raise TypeError(f"size symbol {expr} is not a dim of any input")
    if expr.is_Integer:
        return str(int(expr))
    if isinstance(expr, sympy.Add):
        return " + ".join(_pycode(a, names) for a in expr.args)
    if isinstance(expr, sympy.Mul):
        return " * ".join(_wrap(a, names) for a in expr.args)
    name = type(expr).__name__
    if name == "FloorDiv":
        return f"{_wrap(expr.args[0], names)} // {_wrap(expr.args[1], names)}"
    if name in ("Mod", "PythonMod"):
        return f"{_wrap(expr.args[0], names)} % {_wrap(expr.args[1], names)}"
    if isinstance(expr, sympy.Pow) and expr.exp.is_Integer and expr.exp > 0:
        return f"{_wrap(expr.base, names)} ** {int(expr.exp)}"
    raise TypeError(f"cannot write size expression {expr}")


def _wrap(expr: sympy.Expr, names: dict[sympy.Symbol, str]) -> str:
    text = _pycode(expr, names)
    return f"({text})" if isinstance(expr, sympy.Add) else text


_IDENT = re.compile(r"(?<![.\w])[A-Za-z_]\w*")


def _idents(code: str) -> set[str]:
    """Return the bare identifiers an expression reads (attribute names excluded)."""
    return set(_IDENT.findall(re.sub(r"\"[^\"]*\"|'[^']*'", "", code)))


def _needed(graph: Graph, plan: ChunkPlan) -> set[str]:
    """Return the nodes whose results are used: everything else is dead code."""
    needed = set(graph.output_names())
    for node in reversed(graph.nodes):
        if node.name in needed or node.mutates is not None:
            needed.add(node.name)
            needed.update(node.refs())
    return needed


def _unflatten(spec: Any, flat: Any, model_file: str) -> str:
    """Write the model's output structure around the flat outputs."""
    kind = getattr(spec, "type", None)
    if spec.is_leaf():
        return next(flat)
    children = [_unflatten(child, flat, model_file) for child in spec.children()]
    if kind is tuple:
        return f"({', '.join(children)}{',' if len(children) == 1 else ''})"
    if kind is list:
        return f"[{', '.join(children)}]"
    if kind is dict:
        keys = spec.context
        return "{" + ", ".join(f"{k!r}: {c}" for k, c in zip(keys, children)) + "}"
    if kind is collections.namedtuple:  # pytree keeps a namedtuple's class as the context
        kind = spec.context
    if isinstance(kind, type) and kind.__module__.startswith(MODEL_MODULE_PREFIX):
        raise UserError(
            f"{model_file}: the model returns a {kind.__qualname__}, a class defined in the model "
            "file itself, which the generated module cannot import; define it in an importable "
            "module, or return a tuple or dict"
        )
    if isinstance(kind, type):
        # The model's own output class (a ModelOutput, a dataclass, a namedtuple), imported
        # from where the original defines it when the forward returns (see `_output_class`).
        cls = f"_output_class({kind.__module__!r}, {kind.__qualname__!r})"
        if issubclass(kind, tuple) and hasattr(kind, "_fields"):
            return f"{cls}({', '.join(children)})"
        keys = spec.context
        if isinstance(keys, (list, tuple)) and all(
            isinstance(k, str) and k.isidentifier() for k in keys
        ):
            return f"{cls}({', '.join(f'{k}={c}' for k, c in zip(keys, children))})"
    raise TypeError(f"cannot write output structure {kind}")


def _with_dels(items: list[Any], keep: set[str]) -> list[Any]:
    """Insert `del` after the last use of every bound name (names in `keep` excluded)."""
    last: dict[str, int] = {}
    bound: set[str] = set()
    for index, item in enumerate(items):
        for name in _uses(item):
            last[name] = index
        for name in _binds(item):
            bound.add(name)
            last.setdefault(name, index)
    out: list[Any] = []
    for index, item in enumerate(items):
        if isinstance(item, Loop):
            inner_keep = keep | {n for n in bound} | _uses_after(items, index)
            item.body = _with_dels(item.body, (inner_keep - _loop_locals(item)) | {"stop"})
        if isinstance(item, Line) and not item.code:
            continue
        out.append(item)
        dead = sorted(n for n in bound if last.get(n) == index and n not in keep)
        if dead and not (isinstance(item, Line) and item.code.startswith("return")):
            out.append(Line(f"del {', '.join(dead)}"))
    return out


def _uses_after(items: list[Any], index: int) -> set[str]:
    return {n for item in items[index + 1 :] for n in _uses(item)}


def _loop_locals(loop: Loop) -> set[str]:
    return {n for item in loop.body for n in _binds(item)}


def _uses(item: Any) -> set[str]:
    if isinstance(item, Loop):
        inner = {n for child in item.body for n in _uses(child)}
        return (inner - _loop_locals(item)) | item.uses
    return item.uses


def _binds(item: Any) -> set[str]:
    if isinstance(item, Loop):
        return set()
    return {item.binds} if item.binds else set()


# ------------------------------------------------------------------- libcst
def to_cst(items: list[Any]) -> list[cst.BaseStatement]:
    """Turn laid-out items into libcst statements, comments attached as leading lines."""
    out: list[cst.BaseStatement] = []
    for item in items:
        comments = [cst.EmptyLine(comment=cst.Comment(f"# {c}")) for c in item.comments]
        if isinstance(item, Loop):
            body = to_cst(item.body)
            loop = cst.parse_statement(f"{item.head}\n    pass\n")
            assert isinstance(loop, cst.For)
            out.append(loop.with_changes(body=cst.IndentedBlock(body=body), leading_lines=comments))
        else:
            stmt = cst.parse_statement(item.code + "\n")
            out.append(stmt.with_changes(leading_lines=comments))
    return out


__all__ = ["ForwardBuilder", "to_cst", "format_bytes"]
