"""The analysis IR: an immutable, topologically ordered graph built from a torch.export graph.

Every value records its shape (sympy expressions where a dim is dynamic), dtype, producing op,
source line, and whether it aliases (views) or mutates (in-place ops) another value's storage.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Iterator, Union

import sympy
import torch

#: One dimension's size: a literal, or a sympy expression over the dynamic-dim symbols.
Size = Union[int, sympy.Expr]


@dataclass(frozen=True, slots=True)
class Ref:
    """A reference to another node's value inside a node's arguments."""

    #: name of the referenced node
    name: str


@dataclass(frozen=True, slots=True)
class TensorMeta:
    """Shape and dtype of one tensor value."""

    #: sizes, outermost first
    shape: tuple[Size, ...]
    #: element type
    dtype: torch.dtype
    #: whether the value is laid out contiguously (views may not be)
    contiguous: bool = True

    @property
    def rank(self) -> int:
        return len(self.shape)

    def numel(self, hints: dict[sympy.Symbol, int]) -> int:
        """Return the element count at the example sizes given by `hints`."""
        return math.prod(evaluate(s, hints) for s in self.shape)

    def nbytes(self, hints: dict[sympy.Symbol, int]) -> int:
        """Return the bytes of a contiguous tensor of this shape at the example sizes."""
        return self.numel(hints) * dtype_size(self.dtype)


#: What a node produces: a tensor, a tuple of tensors, a symbolic int, or nothing.
Meta = Union[TensorMeta, tuple[TensorMeta, ...], Size, None]


@dataclass(frozen=True, slots=True)
class Source:
    """The model line a node came from."""

    #: file name as given in the stack trace
    file: str
    #: 1-based line number
    line: int
    #: enclosing function
    function: str
    #: the source text of the line, stripped
    code: str

    def cite(self) -> str:
        """Return "file:line in function: code", the form generated comments use."""
        name = self.file.rsplit("/", 1)[-1]
        return f"{name}:{self.line} in {self.function}: {self.code}"


@dataclass(frozen=True, slots=True)
class Node:
    """One value-producing step: a model input, a parameter, a buffer, a constant or an op."""

    #: unique name from the exported graph
    name: str
    #: "input", "param", "buffer", "constant" or "op"
    kind: str
    #: the ATen OpOverload or Python callable for ops; the FQN for params, buffers, constants
    target: Any
    #: positional arguments, with Ref for node references
    args: tuple[Any, ...] = ()
    #: keyword arguments, in order
    kwargs: tuple[tuple[str, Any], ...] = ()
    #: shape and dtype of the result
    meta: Meta = None
    #: the model line this node came from
    source: Source | None = None
    #: the innermost nn.Module path that produced it ("blocks.0.attn")
    module_path: str = ""
    #: the class of that module ("Linear")
    module_type: str = ""
    #: the module calls it ran in, outermost first, the root left out: the module's path, with
    #: `@n` for its n-th call after the first ("blocks.0", "blocks.0.attn", "shared@1")
    calls: tuple[str, ...] = ()
    #: name of the node whose storage the result views, if it is a view
    aliases: str | None = None
    #: name of the node whose storage this op writes in place, if any
    mutates: str | None = None
    #: copies a composite op makes of its operands and drops before it returns (`matmul` folds
    #: the batch dims of a permuted operand with a reshape): (tensor input slot, the copy's
    #: bytes over the operand's)
    copies: tuple[tuple[int, float], ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in ("input", "param", "buffer", "constant", "op"):
            raise ValueError(f"node {self.name}: unknown kind {self.kind!r}")
        if self.aliases is not None and self.mutates is not None and self.aliases != self.mutates:
            raise ValueError(f"node {self.name}: aliases and mutates different values")

    @property
    def tensor(self) -> TensorMeta:
        """Return the single tensor this node produces (raises if it is not one)."""
        if not isinstance(self.meta, TensorMeta):
            raise TypeError(f"node {self.name} does not produce one tensor")
        return self.meta

    def kwarg(self, key: str, default: Any = None) -> Any:
        return dict(self.kwargs).get(key, default)

    def refs(self) -> Iterator[str]:
        """Yield the names of the nodes this node reads, in argument order."""
        for value in (*self.args, *(v for _, v in self.kwargs)):
            yield from refs_in(value)


def refs_in(value: Any) -> Iterator[str]:
    """Yield the node names referenced anywhere inside an argument."""
    if isinstance(value, Ref):
        yield value.name
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from refs_in(item)


def renamed_refs(value: Any, renamed: dict[str, str]) -> Any:
    """Return an argument with each reference to a key of `renamed` pointing at its value."""
    return replaced_refs(value, {name: Ref(new) for name, new in renamed.items()})


def replaced_refs(value: Any, replacements: dict[str, Any]) -> Any:
    """Return an argument with each reference to a key of `replacements` replaced by its value
    (another reference, or a constant)."""
    if isinstance(value, Ref):
        return replacements.get(value.name, value)
    if isinstance(value, (tuple, list)):
        return type(value)(replaced_refs(item, replacements) for item in value)
    return value


@dataclass(frozen=True, slots=True)
class Symbol:
    """A dynamic dim of a model input."""

    #: the sympy symbol torch.export chose
    symbol: sympy.Symbol
    #: readable name, from the Dim in `dynamic_shapes()` ("seq")
    name: str
    #: the model input it is read from, and the axis
    input: str
    axis: int
    #: its size in the example inputs
    hint: int
    #: the largest size its Dim allows, if bounded
    upper: int | None = None
    #: the input's size along the axis is `scale * symbol + offset` (a derived Dim: `4 * h`)
    scale: int = 1
    offset: int = 0


@dataclass(frozen=True)
class Graph:
    """A captured model: nodes in execution order, the outputs, and the dynamic dims."""

    #: every node, in topological (execution) order
    nodes: tuple[Node, ...]
    #: the flat outputs: Ref or a Python constant
    outputs: tuple[Any, ...]
    #: the pytree spec that rebuilds the model's output structure from `outputs`
    out_spec: Any
    #: names of the model's positional inputs, in order (node names of kind "input")
    inputs: tuple[str, ...]
    #: buffers the forward updates: (buffer FQN, the value written into it)
    mutations: tuple[tuple[str, Ref], ...] = ()
    #: dynamic dims, in the order they first appear in the inputs
    symbols: tuple[Symbol, ...] = ()
    #: the model file this came from
    model_file: str = ""
    #: name of the model's class
    model_class: str = "Model"
    #: module path -> its class, qualified ("torch.nn.modules.linear.Linear"), for every module
    #: a node ran in
    module_types: dict[str, str] = field(default_factory=dict, compare=False)
    #: module calls the generated module writes inline though they could stand alone, so that
    #: their callers hold no arguments: chosen when those are what keeps the peak over the
    #: target (NOTE [Arguments held by the caller])
    inline_calls: frozenset[str] = frozenset()
    #: the parameters (FQNs) that require grad: an attention mask that is one of them, or a
    #: view of one, sends CPU SDPA down its unfused path even under no_grad
    trainable: frozenset[str] = frozenset()
    _index: dict[str, Node] = field(default_factory=dict, repr=False, compare=False)
    _users: dict[str, tuple[str, ...]] = field(default_factory=dict, repr=False, compare=False)
    _position: dict[str, int] = field(default_factory=dict, repr=False, compare=False)
    #: the captured graph a rewrite (NOTE [Recomputed values]) started from: the original
    #: model's peak is its peak
    before: "Graph | None" = field(default=None, repr=False, compare=False)
    #: pure functions of the graph cached per graph (dimension rules, storage roots, causal
    #: facts); the graph never changes, so they never go stale. Never a decision that passes
    #: must agree on: those are taken once, in the loop program (NOTE [Loop program])
    memo: dict[Any, Any] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        index = {node.name: node for node in self.nodes}
        if len(index) != len(self.nodes):
            raise ValueError("graph has duplicate node names")
        users: dict[str, list[str]] = {node.name: [] for node in self.nodes}
        for node in self.nodes:
            for ref in dict.fromkeys(node.refs()):
                if ref not in index:
                    raise ValueError(f"node {node.name} reads unknown node {ref}")
                users[ref].append(node.name)
        object.__setattr__(self, "_index", index)
        object.__setattr__(self, "_position", {n.name: i for i, n in enumerate(self.nodes)})
        object.__setattr__(self, "_users", {k: tuple(v) for k, v in users.items()})

    def __getitem__(self, name: str) -> Node:
        return self._index[name]

    def __contains__(self, name: object) -> bool:
        return name in self._index

    def position(self, name: str) -> int:
        """Return the node's index in execution order."""
        return self._position[name]

    def users(self, name: str) -> tuple[str, ...]:
        """Return the nodes that read `name`, in execution order."""
        return self._users[name]

    @property
    def hints(self) -> dict[sympy.Symbol, int]:
        """Return each dynamic dim's size in the example inputs."""
        if "hints" not in self.memo:
            self.memo["hints"] = {s.symbol: s.hint for s in self.symbols}
        return self.memo["hints"]

    def output_names(self) -> set[str]:
        """Return the nodes whose values outlive the forward: outputs and buffer updates."""
        names = {name for value in self.outputs for name in refs_in(value)}
        return names | {ref.name for _, ref in self.mutations}

    @property
    def captured(self) -> "Graph":
        """Return the graph as captured, before any rewrite."""
        return self.before or self

    def ops(self) -> Iterator[Node]:
        return (node for node in self.nodes if node.kind == "op")


def evaluate(size: Size, hints: dict[sympy.Symbol, int]) -> int:
    """Return a size's value at the example sizes."""
    if isinstance(size, int):
        return size
    return int(size.xreplace(hints))


def dtype_size(dtype: torch.dtype) -> int:
    """Return the bytes per element of a dtype."""
    return dtype.itemsize


def value_bytes(meta: Meta, hints: dict[sympy.Symbol, int]) -> int:
    """Return the bytes a freshly allocated result of this shape takes."""
    if isinstance(meta, TensorMeta):
        return meta.nbytes(hints)
    if isinstance(meta, tuple):
        return sum(m.nbytes(hints) for m in meta if isinstance(m, TensorMeta))
    return 0


def storage_roots(graph: Graph) -> tuple[dict[str, str], dict[str, int]]:
    """Return each value's storage owner, and each owner's last reader's position (outputs
    and buffer updates count as read at the end)."""
    key = "storage_roots"
    if key not in graph.memo:
        roots: dict[str, str] = {}
        last_use: dict[str, int] = {}
        for node in graph.nodes:
            base = node.mutates or node.aliases
            roots[node.name] = roots.get(base, base) if base else node.name
            for ref in node.refs():
                root = roots.get(ref, ref)
                last_use[root] = graph.position(node.name)
        for name in graph.output_names():
            last_use[roots.get(name, name)] = len(graph.nodes)
        graph.memo[key] = (roots, last_use)
    return graph.memo[key]


def tensor_inputs(node: Node, graph: Graph) -> tuple[str, ...]:
    """Return the tensor-valued nodes a node reads, one slot per occurrence, in argument order."""
    slots: list[str] = []

    def visit(value: Any) -> None:
        if isinstance(value, Ref):
            meta = graph[value.name].meta
            if isinstance(meta, (TensorMeta, tuple)):
                slots.append(value.name)
        elif isinstance(value, (list, tuple)):
            for item in value:
                visit(item)

    for value in (*node.args, *(v for _, v in node.kwargs)):
        visit(value)
    return tuple(slots)


def out_meta(node: Node) -> TensorMeta | None:
    """Return the layout shared by the node's tensor results (all elements of a tuple agree)."""
    if isinstance(node.meta, TensorMeta):
        return node.meta
    if isinstance(node.meta, tuple) and node.meta:
        return node.meta[0]
    return None


def common_calls(calls: Iterator[tuple[str, ...]]) -> tuple[str, ...]:
    """The module calls every one of `calls` runs in, outermost first."""
    common: tuple[str, ...] | None = None
    for each in calls:
        each = tuple(each)
        size = 0
        while common is not None and size < min(len(common), len(each)):
            if common[size] != each[size]:
                break
            size += 1
        common = each if common is None else common[:size]
    return common or ()


def in_call(graph: Graph, node: Node, calls: tuple[str, ...]) -> Node:
    """`node` placed in the module call `calls`: a rewrite's new op that belongs to the caller
    of what it serves (a norm copied for the queries belongs to the decoder layer), with the
    module path and class of an op that runs right in that call."""
    owner = next((n for n in graph.nodes if tuple(n.calls) == tuple(calls)), None)
    path = owner.module_path if owner else (calls[-1].partition("@")[0] if calls else "")
    kind = owner.module_type if owner else ""
    return replace(node, calls=tuple(calls), module_path=path, module_type=kind)


def fresh_name(name: str, taken: set[str]) -> str:
    """`name`, or `name_<n>`, not in `taken`; added to it."""
    candidate, count = name, 1
    while candidate in taken:
        count += 1
        candidate = f"{name}_{count}"
    taken.add(candidate)
    return candidate


def without_dead(graph: Graph) -> Graph:
    """Drop the ops nothing reads any more. An in-place write stays, and keeps what it writes
    (remat's `_without` drops only the chains it copied, in-place ones included)."""
    live = set(graph.output_names())
    keep: list[Node] = []
    for node in reversed(graph.nodes):
        if node.kind != "op" or node.name in live or node.mutates is not None:
            keep.append(node)
            live.update(node.refs())
            if node.mutates is not None:
                live.add(node.mutates)
    return replace(graph, nodes=tuple(reversed(keep)), memo={})


__all__ = [
    "Graph",
    "Meta",
    "Node",
    "Ref",
    "Size",
    "Source",
    "Symbol",
    "TensorMeta",
    "common_calls",
    "evaluate",
    "fresh_name",
    "in_call",
    "out_meta",
    "refs_in",
    "renamed_refs",
    "replaced_refs",
    "storage_roots",
    "tensor_inputs",
    "value_bytes",
    "without_dead",
]
