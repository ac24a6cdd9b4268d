"""Which module calls the generated module keeps as calls, and what each one reads and returns.

NOTE [Module scopes]
The generated module mirrors the original's module tree: a custom or library module the forward
calls becomes a method call in its parent (`x = self.blocks[0](x)`), and its ops are written in
its own class's forward. Each such call is a scope: the ops it runs itself, the child calls it
makes, the values it reads from outside (its arguments, in the order it first reads them) and
the values made inside that are read after it (what it returns). Parameters and buffers of its
own subtree are read as `self.<path>`; any other is an argument.

A call is written inline in its parent instead, and listed (`Scopes.inlined`) with the reason,
when it cannot stand alone:
- it is a `torch.nn` class that is not a standard layer (`analysis.layers`): a container, or a
  layer like `MultiheadAttention` that holds its intermediates inside;
- a chunk loop crosses its boundary: the loop lives in the forward of the innermost module
  that holds all of it, so a module it runs only partly, or runs whole inside the loop, is
  written out in that forward;
- its ops are not one contiguous stretch of the forward;
- a dynamic size it uses is not a dim of any tensor it reads, so it could not bind it;
- it is called more than once and the calls do not run the same code.
Standard layers are never scopes: a layer's op is a call of the layer (`analysis.lower.layer_call`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator, Mapping

import sympy
import torch

from analysis.ir import Graph, TensorMeta
from analysis.names import size_code
from analysis.plan import ChunkPlan, in_dim_names

if TYPE_CHECKING:
    from analysis.symbolic import Formulas


@dataclass
class Scope:
    """One module call written as the call of a generated class's forward (the root: "")."""

    #: the call ("blocks.0"; "shared@1" for a module's second call)
    call: str
    #: the module's path
    path: str
    #: the enclosing scope's call; None for the root
    parent: str | None
    #: the op and constant nodes it runs itself, in graph order
    nodes: list[str] = field(default_factory=list)
    #: the scopes it calls, in order
    children: list[str] = field(default_factory=list)
    #: values from outside it reads, in the order it first reads them
    inputs: list[str] = field(default_factory=list)
    #: values made inside it that are read after it, in graph order
    outputs: list[str] = field(default_factory=list)
    #: the plan's regions whose loops it holds
    regions: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class Inlined:
    """A module call written inline in its parent, and why."""

    call: str
    reason: str


@dataclass
class Scopes:
    """The scopes of a graph (NOTE [Module scopes])."""

    #: by call; the root is ""
    scopes: dict[str, Scope]
    #: node -> the scope that runs it
    scope_of: dict[str, str]
    #: module calls written inline, with the reason
    inlined: tuple[Inlined, ...]

    #: call -> the nodes its scope and the scopes below it run (filled as asked)
    _under: dict[str, frozenset[str]] = field(default_factory=dict, repr=False)

    def subtree(self, call: str) -> list[str]:
        """The scope and every scope below it."""
        out = [call]
        for child in self.scopes[call].children:
            out.extend(self.subtree(child))
        return out

    def nodes_under(self, call: str) -> frozenset[str]:
        """The nodes the scope and every scope below it run."""
        if call not in self._under:
            self._under[call] = frozenset(
                n for c in self.subtree(call) for n in self.scopes[c].nodes
            )
        return self._under[call]

    def child_holding(self, call: str, node: str) -> str | None:
        """The child scope of `call` whose subtree runs `node`, or None if `call` runs it."""
        scope = self.scope_of.get(node)
        while scope is not None and scope != call:
            parent = self.scopes[scope].parent
            if parent == call:
                return scope
            scope = parent
        return None


def path_of(call: str) -> str:
    return call.partition("@")[0]


def module_scopes(
    graph: Graph,
    plan: ChunkPlan,
    layers: Mapping[str, object],
    root: torch.nn.Module,
    formulas: Formulas | None = None,
    also_inline: Mapping[str, str] | None = None,
) -> Scopes:
    """Return the scopes of `graph` under `plan` (NOTE [Module scopes]); `also_inline` names
    more calls to write inline, with the reason."""
    ops = [node for node in graph.nodes if node.kind == "op"]
    position = {node.name: i for i, node in enumerate(ops)}
    members: dict[str, list[str]] = {}
    for node in ops:
        for call in node.calls:
            if path_of(call) not in layers:
                members.setdefault(call, []).append(node.name)
    reasons: dict[str, str] = dict(also_inline or {})
    for call in sorted(graph.inline_calls):
        reasons.setdefault(call, "as a call, its caller would hold its arguments over the target")
    for call, names in members.items():
        if call in reasons:
            continue
        module = _submodule(root, path_of(call))
        if module is None:
            reasons[call] = "it is no submodule of the model"
        elif type(module).__module__.startswith("torch.nn."):
            reasons[call] = f"a torch.nn {type(module).__name__} that is no standard layer"
        elif position[names[-1]] - position[names[0]] + 1 != len(names):
            reasons[call] = "its ops are not one stretch of the forward"
    by_path: dict[str, list[str]] = {}
    for call in members:
        by_path.setdefault(path_of(call), []).append(call)
    for path, calls in by_path.items():  # one class runs every call of a module
        codes = {tuple(str(graph[n].target) for n in members[c]) for c in calls}
        if len(codes) > 1:
            for call in calls:
                reasons.setdefault(call, f"it is called {len(calls)} times, running different ops")
    for index, region in enumerate(plan.regions):
        span = {name for name in region.span if name in position}
        for call, names in members.items():
            inside = span & set(names)
            if inside and not span <= set(names) and call not in reasons:
                whole = set(names) <= span
                how = "all of it inside the loop" if whole else "part of it"
                reasons[call] = f"chunk loop {index + 1} runs {how}"
    while True:
        scopes = _build(graph, ops, members, reasons)
        for index, region in enumerate(plan.regions):
            owner = scopes.scope_of[next(n for n in region.span if n in position)]
            scopes.scopes[owner].regions.append(index)
        unwritable = _unwritable(graph, scopes, plan, formulas)
        if not unwritable:
            break
        reasons.update(unwritable)
    scopes.inlined = tuple(Inlined(call, reasons[call]) for call in members if call in reasons)
    return scopes


def _submodule(root: torch.nn.Module, path: str) -> torch.nn.Module | None:
    try:
        return root.get_submodule(path)
    except AttributeError:
        return None


def _build(
    graph: Graph, ops: list, members: dict[str, list[str]], inlined: Mapping[str, str]
) -> Scopes:
    scopes = {"": Scope("", "", None)}
    scope_of: dict[str, str] = {}
    for node in ops:
        parent = ""
        for call in node.calls:
            if call not in members or call in inlined:
                continue
            if call not in scopes:
                scopes[call] = Scope(call, path_of(call), parent)
                scopes[parent].children.append(call)
            parent = call
        scope_of[node.name] = parent
        scopes[parent].nodes.append(node.name)
    result = Scopes(scopes, scope_of, ())
    for node in graph.nodes:
        if node.kind == "constant":
            users = [scope_of[u] for u in graph.users(node.name) if u in scope_of]
            owner = _common(result, users) if users else ""
            scope_of[node.name] = owner
            scopes[owner].nodes.insert(0, node.name)
    for call in scopes:
        if call:
            _signature(graph, result, call)
    return result


def _common(scopes: Scopes, calls: list[str]) -> str:
    """The innermost scope holding all of `calls`."""
    chains = []
    for call in calls:
        chain = []
        while call is not None:
            chain.append(call)
            call = scopes.scopes[call].parent
        chains.append(chain[::-1])
    common = ""
    for level in zip(*chains):
        if len(set(level)) != 1:
            break
        common = level[0]
    return common


def _signature(graph: Graph, scopes: Scopes, call: str) -> None:
    """Fill in what a scope reads from outside and what it returns.

    NOTE [Sizes passed as numbers]
    A size the scope's ops read that no tensor it reads anyway gives (SegFormer's attention
    reshapes by the `height` and `width` of the patch embedding's convolution) is passed in as
    a number, as the model's own forward passes it (`self.attention(hidden_states, height,
    width)`): passing the tensor for its shape would hold it, a convolution's whole output,
    until the call returns. The caller writes the number from the sizes it binds, and no size
    read anywhere keeps a tensor alive, in the generated module or in the estimates.
    """
    scope = scopes.scopes[call]
    inside = scopes.nodes_under(call)
    prefix = f"{scope.path}."

    def own(ref: str) -> bool:  # a parameter or buffer of the module itself
        node = graph[ref]
        return node.kind in ("param", "buffer") and str(node.target).startswith(prefix)

    ordered = sorted(inside, key=graph.position)
    tensors = [
        ref
        for ref in dict.fromkeys(tensor_refs(graph, ordered))
        if ref not in inside and not is_size(graph, ref) and not own(ref)
    ]
    bound = {size: "n" for size in bound_symbols(graph, tensors)}

    def passed(size: str) -> bool:  # NOTE [Sizes passed as numbers]
        try:
            size_code(graph[size].meta, bound)
        except TypeError:
            return True
        return False

    inputs: dict[str, None] = {}
    for ref in tensor_refs(graph, ordered):  # in the order first read
        if is_size(graph, ref):  # made inside too: from sizes its tensors do not give
            if passed(ref):
                inputs[ref] = None
        elif ref not in inside and not own(ref):
            inputs[ref] = None
    # a size is written from the sizes bound where it is read
    outside_reads = set(tensor_refs(graph, [n.name for n in graph.nodes if n.name not in inside]))
    outside_reads |= graph.output_names() | {ref.name for _, ref in graph.mutations}
    scope.inputs = list(inputs)
    scope.outputs = [n for n in ordered if n in outside_reads and not is_size(graph, n)]


def is_size(graph: Graph, name: str) -> bool:
    """A size computed from the dynamic dims (export shares one between modules): no module
    passes one to another; each writes its own from the sizes it binds."""
    meta = graph[name].meta
    return isinstance(meta, sympy.Expr) and bool(meta.free_symbols)


def tensor_refs(graph: Graph, names: list[str]) -> Iterator[str]:
    """What the ops among `names` read, sizes aside: a size reads no tensor where it runs (eager
    reads it off a shape at once; the generated module writes it from the sizes it binds)."""
    return (ref for name in names if not is_size(graph, name) for ref in graph[name].refs())


def bound_symbols(
    graph: Graph, inputs: list[str]
) -> dict[sympy.Expr, tuple[str, int | None, int, int]]:
    """The sizes a module can bind from its inputs' shapes: each dynamic dim some input has as
    `scale * symbol + offset` (a whole dim preferred), and each other size expression an input
    has (`((height - 1) // 4) + 1` after a strided conv), with the first (input, axis, offset,
    scale) that gives it; then those of the sizes passed as numbers (axis None: NOTE [Sizes
    passed as numbers])."""
    out: dict[sympy.Expr, tuple[str, int | None, int, int]] = {}
    dims = [
        (name, axis, size)
        for name in inputs
        if isinstance(graph[name].meta, TensorMeta)
        for axis, size in enumerate(graph[name].meta.shape)
        if isinstance(size, sympy.Expr) and size.free_symbols
    ]
    dims += [(name, None, graph[name].meta) for name in inputs if is_size(graph, name)]
    for name, axis, size in dims:
        if isinstance(size, sympy.Symbol):
            out.setdefault(size, (name, axis, 0, 1))
    for name, axis, size in dims:
        linear = _linear(size)
        if linear is not None:
            out.setdefault(linear[0], (name, axis, linear[1], linear[2]))
        else:
            out.setdefault(size, (name, axis, 0, 1))
    return out


def _linear(size: object) -> tuple[sympy.Symbol, int, int] | None:
    """(symbol, offset, scale) for a size `scale * symbol + offset` with integer terms."""
    if not isinstance(size, sympy.Expr) or len(size.free_symbols) != 1:
        return None
    (symbol,) = size.free_symbols
    try:
        poly = sympy.Poly(size, symbol)
    except sympy.PolynomialError:
        return None
    if poly.degree() != 1 or not all(c.is_Integer for c in poly.all_coeffs()):
        return None
    scale, offset = (int(c) for c in poly.all_coeffs())
    return (symbol, offset, scale) if scale > 0 else None


def needed_sizes(
    graph: Graph, scopes: Scopes, call: str, plan: ChunkPlan, formulas: Formulas | None
) -> set[sympy.Expr]:
    """The size expressions a scope's own statements write: its ops' size arguments, and its
    loops' lengths, output buffers and chunk-size formulas (a shape annotation that has no
    name for a size writes it in the model's dims)."""
    found: set[sympy.Expr] = set()

    def visit(value: object) -> None:
        if isinstance(value, TensorMeta):
            visit(list(value.shape))
        elif isinstance(value, sympy.Expr):
            if value.free_symbols:
                found.add(value)
        elif isinstance(value, (list, tuple)):
            for item in value:
                visit(item)

    for name in scopes.scopes[call].nodes:
        node = graph[name]
        if is_size(graph, name):  # written where a tensor op reads it, from the bound sizes
            continue
        visit(node.args)
        visit([v for _, v in node.kwargs])
        visit([graph[r].meta for r in node.refs() if is_size(graph, r)])
    for child in scopes.scopes[call].children:  # NOTE [Sizes passed as numbers]
        visit([graph[name].meta for name in scopes.scopes[child].inputs if is_size(graph, name)])
    for index in scopes.scopes[call].regions:  # the loops' lengths and output buffers
        visit(plan.regions[index].extent)
        visit([graph[name].meta for name, _ in plan.regions[index].outputs])
        visit([graph[name].meta for name in plan.regions[index].sum_values.values()])
        formula = formulas.regions[index] if formulas is not None else None
        if formula is not None:
            visit([formula.fixed, formula.per_row])
    return found


def _unwritable(
    graph: Graph, scopes: Scopes, plan: ChunkPlan, formulas: Formulas | None
) -> dict[str, str]:
    """Scopes that write a size their inputs' shapes do not give."""
    out = {}
    for call, scope in scopes.scopes.items():
        if not call:
            continue
        names = {size: "n" for size in bound_symbols(graph, scope.inputs)}
        for size in sorted(needed_sizes(graph, scopes, call, plan, formulas), key=str):
            try:
                size_code(size, names)
            except TypeError:
                out[call] = f"it uses the size {in_dim_names(size, graph)}, no input's dim"
                break
    return out


__all__ = [
    "Inlined",
    "Scope",
    "Scopes",
    "bound_symbols",
    "is_size",
    "tensor_refs",
    "module_scopes",
    "needed_sizes",
    "path_of",
]
