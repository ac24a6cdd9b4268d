"""One namespace for every identifier a generated forward uses."""

from __future__ import annotations

import builtins
import keyword
import ast
import operator
import re
from typing import Any, Callable, Container, Mapping

import sympy

from analysis.ir import Graph, Node
from analysis.fastpath import NO_PADDING, is_padding_check
from analysis.ops import info

#: names the generated code itself relies on
RESERVED = {"self", "torch", "start", "stop", "math"}


class Namespace:
    """Hand out clean, unique, deterministic Python identifiers."""

    def __init__(self) -> None:
        self._taken: set[str] = set(RESERVED)
        self._count: dict[str, int] = {}

    @staticmethod
    def clean(base: str) -> str:
        """Return `base` as an identifier: cleaned, not a keyword or builtin."""
        name = re.sub(r"\W+", "_", base).strip("_").lower() or "value"
        if name[0].isdigit():
            name = f"v_{name}"
        if keyword.iskeyword(name) or hasattr(builtins, name):
            name = f"{name}_"
        return name

    def create(self, base: str) -> str:
        """Return a fresh identifier made from `base`: cleaned, not a keyword or builtin."""
        name = self.clean(base)
        candidate = name
        while candidate in self._taken:
            self._count[name] = self._count.get(name, 0) + 1
            candidate = f"{name}_{self._count[name]}"
        self._taken.add(candidate)
        return candidate


def value_name(node: Node, graph: Graph) -> str:
    """Return the base of a value's name: its module path and op (`blocks_0_attn_softmax`),
    or the module path alone for ops named after their module (a Linear's output, or any
    layer's whole forward); an element of a tuple adds its index."""
    target = node.target
    op = getattr(getattr(target, "overloadpacket", None), "__name__", None)
    op = (op or getattr(target, "__name__", "value")).strip("_")
    if op == "getitem":
        return f"{value_name(graph[node.args[0].name], graph)}_{node.args[1]}"
    if is_padding_check(node):
        return NO_PADDING
    if node.module_path and (info(target).names_module or _layer_forward(node, graph)):
        return node.module_path
    return f"{node.module_path}_{op}" if node.module_path else op


def _layer_forward(node: Node, graph: Graph) -> bool:
    """Whether the op is the whole forward of the `torch.nn` layer it ran in (a ReLU's relu)."""
    layer = info(node.target).layer
    kind = graph.module_types.get(node.module_path, "")
    return layer is not None and kind.rpartition(".")[2] in layer[0]


def source_names(graph: Graph, layers: Container[str]) -> dict[str, str]:
    """Return, for the values a source line assigns, the base of a name made from its target.

    NOTE [Names from the source]
    `q, k, v = self.qkv(x).split(c, dim=-1)` runs a linear, a split and three getitems; the
    getitems are what the line assigns, and they are called `q`, `k` and `v`, after the module
    whose forward the line is in (`blocks_0_attn_q`). A line's ops are those of one caller (the
    module running the line; a torch.nn layer's op belongs to the module that called the layer)
    from one model line, in a stretch that ops of other callers (modules the line calls) may
    interrupt. What the line assigns are the ops whose results are read after the stretch, or
    are outputs: one for a plain target, or the elements of one tuple for a tuple of names.
    Anything else (an attribute or subscript target, a line that does not parse alone, more
    candidates than targets) keeps the op's name. Outside the loops a name is bound again
    when the value holding it dies at the rebinding statement (`q = q.view(...)` rebinds `q`):
    the statement reads it, or reads a value sharing its storage, so the rebinding frees it
    exactly where the memory estimate does, and no `del` is needed.
    """
    return {
        name: f"{caller}_{target}" if caller else target
        for name, (caller, target) in assignments(graph, layers).items()
    }


def assignments(graph: Graph, layers: Container[str]) -> dict[str, tuple[str, str]]:
    """Return, for the values a source line assigns (NOTE [Names from the source]), the
    module whose forward holds the line ("" for the model's own) and the name assigned."""
    outputs = graph.output_names()
    runs: list[tuple[str, Any, list[Node]]] = []
    current: dict[str, tuple[Any, list[Node]]] = {}
    for node in graph.ops():
        if node.source is None:
            continue
        caller = _caller(node.module_path, layers)
        where = (node.source.file, node.source.line)
        if caller in current and current[caller][0] == where:
            current[caller][1].append(node)
        else:
            current[caller] = (where, [node])
            runs.append((caller, node.source.code, current[caller][1]))
    found: dict[str, tuple[str, str]] = {}
    for caller, code, run in runs:
        targets = _targets(code)
        if not targets:
            continue
        end = graph.position(run[-1].name)
        assigned = [
            n
            for n in run
            if n.name in outputs or any(graph.position(u) > end for u in graph.users(n.name))
        ]
        if len(targets) == 1 and len(assigned) == 1:
            found[assigned[0].name] = (caller, targets[0])
        elif len(targets) > 1 and _elements(assigned, graph, len(targets)):
            for node in assigned:
                found[node.name] = (caller, targets[node.args[1]])
    return found


def _caller(module_path: str, layers: Container[str]) -> str:
    """The module whose forward holds the line: a layer's op belongs to the layer's caller."""
    return module_path.rpartition(".")[0] if module_path in layers else module_path


def _targets(code: str) -> tuple[str, ...]:
    """Return the names a one-line assignment binds, in order; () for anything else."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return ()
    if len(tree.body) != 1:
        return ()
    statement = tree.body[0]
    if isinstance(statement, ast.Assign) and len(statement.targets) == 1:
        target = statement.targets[0]
    elif isinstance(statement, (ast.AugAssign, ast.AnnAssign)):
        target = statement.target
    else:
        return ()
    if isinstance(target, ast.Name):
        return (target.id,)
    if isinstance(target, ast.Tuple) and all(isinstance(e, ast.Name) for e in target.elts):
        return tuple(e.id for e in target.elts)  # type: ignore[attr-defined]
    return ()


def _elements(nodes: list[Node], graph: Graph, count: int) -> bool:
    """Whether `nodes` are the elements 0..count-1 of one tuple value, once each."""
    if len(nodes) != count or any(n.target is not operator.getitem for n in nodes):
        return False
    sources = {n.args[0].name for n in nodes}
    return len(sources) == 1 and sorted(n.args[1] for n in nodes) == list(range(count))


def size_code(
    expr: sympy.Expr, names: Mapping[sympy.Expr, str], integer: Callable[[int], str] = str
) -> str:
    """Write a size expression as Python over the names of the sizes bound (dynamic dims, or
    whole sizes of a module's inputs), each whole number as `integer` writes it; TypeError when
    it cannot be."""
    return _size(expr, names, set(), integer)


def size_names(expr: sympy.Expr, names: Mapping[sympy.Expr, str]) -> set[str]:
    """The names `size_code` writes the expression with."""
    used: set[str] = set()
    _size(expr, names, used, str)
    return used


def _size(
    expr: sympy.Expr, names: Mapping[sympy.Expr, str], used: set[str], integer: Callable[[int], str]
) -> str:
    if expr in names:
        used.add(names[expr])
        return names[expr]
    if expr.free_symbols:
        for known, name in names.items():  # a bound size plus a constant, or times one
            if isinstance(known, sympy.Symbol) or not isinstance(known, sympy.Expr):
                continue
            offset, ratio = expr - known, expr / known
            if offset.is_Integer or (ratio.is_Integer and ratio > 0):
                used.add(name)
                if offset.is_Integer:
                    sign = "+" if offset > 0 else "-"
                    return name if offset == 0 else f"{name} {sign} {integer(abs(int(offset)))}"
                return f"{integer(int(ratio))} * {name}"
    if isinstance(expr, sympy.Symbol):
        raise TypeError(f"size symbol {expr} is not a dim of any input")
    if expr.is_Integer:
        value = int(expr)
        return integer(value) if value >= 0 else f"-{integer(-value)}"
    if isinstance(expr, sympy.Add):
        return " + ".join(_size(a, names, used, integer) for a in expr.args)
    if isinstance(expr, sympy.Mul):
        return " * ".join(_wrapped(a, names, used, integer) for a in expr.args)
    name = type(expr).__name__
    if name == "FloorDiv":
        left, right = (_wrapped(a, names, used, integer) for a in expr.args)
        return f"{left} // {right}"
    if name in ("Mod", "PythonMod"):
        left, right = (_wrapped(a, names, used, integer) for a in expr.args)
        return f"{left} % {right}"
    if isinstance(expr, sympy.Pow) and expr.exp.is_Integer and expr.exp > 0:
        return f"{_wrapped(expr.base, names, used, integer)} ** {integer(int(expr.exp))}"
    raise TypeError(f"cannot write size expression {expr}")


def _wrapped(
    expr: sympy.Expr, names: Mapping[sympy.Expr, str], used: set[str], integer: Callable[[int], str]
) -> str:
    text = _size(expr, names, used, integer)
    return f"({text})" if isinstance(expr, sympy.Add) else text


__all__ = ["Namespace", "assignments", "size_code", "size_names", "source_names", "value_name"]
