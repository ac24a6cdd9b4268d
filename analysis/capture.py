"""Capture a loaded model with torch.export (non-strict, eval, no_grad) into the analysis IR.

torch.export traces on fake tensors, so capturing a long sequence allocates no activation memory.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import re
import warnings
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import sympy
import torch
from torch.export import ExportedProgram
from torch.export.graph_signature import InputKind, OutputKind
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from analysis.errors import UserError
from analysis.ir import Graph, Meta, Node, Ref, Size, Source, Symbol, TensorMeta, replaced_refs
from analysis.loader import LoadedModel, describe, model_frame

_FRAME = re.compile(
    r'File "(?P<file>[^"]+)", line (?P<line>\d+), in (?P<function>\S+)\n\s*(?P<code>.*)'
)

_KINDS = {
    InputKind.PARAMETER: "param",
    InputKind.BUFFER: "buffer",
    InputKind.CONSTANT_TENSOR: "constant",
    InputKind.USER_INPUT: "input",
}


#: ops that only assert what the exported graph already guarantees; they produce nothing
_CHECKS = {
    torch.ops.aten._assert_tensor_metadata.default,
    torch.ops.aten._assert_scalar.default,
    torch.ops.aten.sym_constrain_range_for_size.default,
}


def export(loaded: LoadedModel) -> ExportedProgram:
    """Run torch.export on the model, turning a capture failure into a UserError at the model line."""
    try:
        with torch.no_grad(), _quiet():
            return torch.export.export(
                loaded.module, loaded.inputs, dynamic_shapes=loaded.dynamic_shapes, strict=False
            )
    except Exception as exc:
        shown = loaded.shown or loaded.path
        where = model_frame(exc, shown) or str(shown)
        if "DataDependent" in type(exc).__name__:
            reason = "the model branches on a tensor's value (data-dependent control flow)"
        else:
            reason = constraint_reason(str(exc)) or describe(exc)
        raise UserError(f"{where}: torch.export could not capture the model: {reason}") from None


def constraint_reason(text: str) -> str | None:
    """export's `Constraints violated` explanation on one line: the first guard a declared
    `Dim` range breaks, written with the Dim's name, and export's suggested fix; None for any
    other error."""
    lines = text.splitlines()
    if not lines or not lines[0].startswith("Constraints violated"):
        return None
    names: dict[str, str] = {}
    guards: list[str] = []
    for line in lines:
        found = re.search(r"values of (\w+) = (\S+) in the specified range", line)
        guard = re.search(r"satisfy the generated guard (.+)\.$", line)
        if found:
            names[found[2]] = found[1]
        if guard:
            guards.append(guard[1])
    head = lines[0].split("!", 1)[0]
    if not guards:
        return head
    guard = guards[0]
    for expr, name in names.items():
        guard = guard.replace(expr, name)
    more = f" (and {len(guards) - 1} more)" if len(guards) > 1 else ""
    reason = f"{head}: the declared range breaks the guard {guard}{more}"
    if "Suggested fixes:" in lines:
        fixes = []
        for line in lines[lines.index("Suggested fixes:") + 1 :]:
            if not line.startswith("  ") or not line.strip():
                break
            fixes.append(line.strip())
        if fixes:
            reason += f"; export suggests: {'; '.join(fixes)}"
    return reason


def _batched(ep: ExportedProgram) -> bool:
    """Whether the program holds `torch.vmap`'s batching steps (`_add_batch_dim`, ...), which
    only the functorch interpreter can run: lowering it (`run_decompositions`) writes them as
    plain ops (a vmapped `j <= i` becomes a broadcast comparison). It also turns in-place ops
    into new values, so only such programs are lowered."""
    return any(
        getattr(node.target, "__module__", "") == "torch._functorch.predispatch"
        for node in ep.graph.nodes
    )


def _lowered(ep: ExportedProgram) -> ExportedProgram:
    """The program with vmap's batching written as plain ops. Lowering writes each `reshape` as
    the `view` the traced strides allowed; a chunk loop's output buffer may not allow it, so
    those go back to `reshape` (a view wherever it can be, the same values)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # pytree's own deprecation notes
        lowered = ep.run_decompositions({})
    for node in lowered.graph.nodes:
        if node.target is torch.ops.aten.view.default:
            node.target = torch.ops.aten.reshape.default
    return lowered


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence torch's logging and stderr dumps while exporting.

    On a failed capture torch logs the failing op's traceback and prints the partial graph to
    stderr; the UserError raised instead already says what went wrong, in one line.
    """
    disabled = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        logging.disable(disabled)


def capture(loaded: LoadedModel) -> Graph:
    """Export the model and build the IR."""
    return build_graph(export(loaded), loaded)


def _linear_in_one_symbol(size: Any) -> tuple[sympy.Symbol, int, int] | None:
    """Return (s, a, b) when an input's size is `a * s + b` (a derived Dim such as `4 * h`)."""
    if not isinstance(size, sympy.Expr) or len(size.free_symbols) != 1:
        return None
    (symbol,) = size.free_symbols
    poly = sympy.Poly(size, symbol) if size.is_polynomial(symbol) else None
    if poly is None or poly.degree() != 1:
        return None
    scale, offset = poly.all_coeffs()
    if not (scale.is_Integer and offset.is_Integer and scale > 0):
        return None
    return symbol, int(scale), int(offset)


def _upper(ep: ExportedProgram, symbol: sympy.Symbol) -> int | None:
    """Return the largest size the dynamic dim may take, when its Dim declares one."""
    bound = ep.range_constraints.get(symbol)
    upper = getattr(bound, "upper", None)
    try:
        return int(upper) if upper is not None and upper.is_finite else None
    except (TypeError, AttributeError):
        return None


def build_graph(ep: ExportedProgram, loaded: LoadedModel) -> Graph:
    """Translate an ExportedProgram into the immutable analysis IR."""
    if _batched(ep):
        ep = _lowered(ep)
    specs = {spec.arg.name: spec for spec in ep.graph_signature.input_specs}
    dim_names = _dim_names(loaded)
    nodes: list[Node] = []
    inputs: list[str] = []
    symbols: dict[sympy.Symbol, Symbol] = {}
    outputs: tuple[Any, ...] = ()
    mutations: tuple[tuple[str, Ref], ...] = ()
    for fx in ep.graph.nodes:
        if fx.op == "placeholder":
            spec = specs[fx.name]
            kind = _KINDS.get(spec.kind)
            if kind is None:
                raise UserError(f"graph input {fx.name}: unsupported input kind {spec.kind.name}")
            meta = _meta(fx.meta.get("val"))
            if kind == "input":
                position = len(inputs)
                inputs.append(fx.name)
                if isinstance(meta, TensorMeta):
                    for axis, size in enumerate(meta.shape):
                        found = _linear_in_one_symbol(size)
                        if found is None or found[0] in symbols:
                            continue
                        symbol, scale, offset = found
                        actual = int(loaded.inputs[position].shape[axis])
                        name = dim_names.get((position, axis), f"{fx.name}_size_{axis}")
                        symbols[symbol] = Symbol(
                            symbol,
                            name,
                            fx.name,
                            axis,
                            (actual - offset) // scale,
                            _upper(ep, symbol),
                            scale,
                            offset,
                        )
            target = fx.name if kind == "input" else spec.target
            args = (
                (_constant_values(ep, fx, spec.target, loaded.path),) if kind == "constant" else ()
            )
            nodes.append(Node(name=fx.name, kind=kind, target=target, args=args, meta=meta))
        elif fx.op == "call_function":
            if fx.target in _CHECKS:
                continue  # export-time metadata checks: no result, nothing to run
            nodes.append(_op_node(fx, loaded.path))
        elif fx.op == "output":
            values = [_arg(a) for a in fx.args[0]]
            for spec, value in zip(ep.graph_signature.output_specs, values, strict=True):
                if spec.kind == OutputKind.USER_OUTPUT:
                    outputs += (value,)
                elif spec.kind == OutputKind.BUFFER_MUTATION and isinstance(value, Ref):
                    mutations += ((spec.target, value),)
                else:
                    raise UserError(
                        f"graph output {spec.arg.name}: the model {spec.kind.name.lower()}s, "
                        "which the generated module does not support"
                    )
        else:
            raise UserError(f"graph node {fx.name}: unsupported fx op {fx.op}")
    return _static_sizes_folded(
        Graph(
            nodes=tuple(nodes),
            outputs=outputs,
            mutations=mutations,
            out_spec=ep.call_spec.out_spec,
            inputs=tuple(inputs),
            symbols=tuple(symbols.values()),
            model_file=str(loaded.path),
            model_class=type(loaded.module).__name__,
            module_types=_module_types(ep),
            trainable=frozenset(
                name
                for name, parameter in loaded.module.named_parameters(remove_duplicate=False)
                if parameter.requires_grad
            ),
        )
    )


def _static_sizes_folded(graph: Graph) -> Graph:
    """Read each size export read off a tensor but proved constant (`x.shape[1]` of a window's
    64 tokens) as that number: it is the same at every size the graph allows, and a reader no
    longer waits on the tensor (a loop over windows may make it chunk by chunk)."""
    static = {
        node.name: int(node.meta)
        for node in graph.nodes
        if node.target is torch.ops.aten.sym_size.int
        and isinstance(node.meta, (int, sympy.Integer))
        and node.name not in graph.output_names()
    }
    if not static:
        return graph
    nodes = tuple(
        replace(
            node, args=replaced_refs(node.args, static), kwargs=replaced_refs(node.kwargs, static)
        )
        for node in graph.nodes
        if node.name not in static
    )
    return replace(graph, nodes=nodes, memo={})


def _module_types(ep: ExportedProgram) -> dict[str, str]:
    """Each module path a node ran in, with its qualified class."""
    found: dict[str, str] = {}
    for fx in ep.graph.nodes:
        for entry in (fx.meta.get("nn_module_stack") or {}).values():
            if isinstance(entry, tuple) and isinstance(entry[0], str) and entry[0]:
                kind = (
                    entry[1] if isinstance(entry[1], str) else getattr(entry[1], "__module__", "")
                )
                found.setdefault(entry[0], kind)
    return found


#: the most elements a tensor constant may have: the generated module spells its values out
CONSTANT_LIMIT = 1024


def _constant_values(ep: ExportedProgram, fx: torch.fx.Node, target: str, path: Path) -> Any:
    """Return a tensor constant's values as nested lists, for the generated module to embed.

    Tensors the forward builds from Python data (`torch.tensor([...])`) and tensor attributes
    that are not buffers become graph constants. The generated module has no copy of them, so
    it writes small ones out; a large one is the user's to make a buffer.
    """
    value = ep.constants.get(target)
    users = [user for user in fx.users if user.meta.get("stack_trace")]
    where = source_of(users[0].meta["stack_trace"], path) if users else None
    cite = f"{where.file.rsplit('/', 1)[-1]}:{where.line}: " if where else ""
    if not isinstance(value, torch.Tensor):
        raise UserError(f"{cite}graph constant {target} is not a tensor ({type(value).__name__})")
    if value.is_complex():
        raise UserError(f"{cite}tensor constant {target} is complex; register it as a buffer")
    if value.numel() > CONSTANT_LIMIT:
        raise UserError(
            f"{cite}tensor constant {target} has {value.numel()} elements; the generated module "
            f"writes out at most {CONSTANT_LIMIT}: register it as a buffer "
            "(self.register_buffer(name, tensor, persistent=False))"
        )
    return value.tolist()


def _op_node(fx: torch.fx.Node, path: Path) -> Node:
    target = fx.target
    args = tuple(_arg(a) for a in fx.args)
    kwargs = tuple((k, _arg(v)) for k, v in fx.kwargs.items())
    aliases = _shared_storage(fx) or _returned_input(target, fx)
    mutates = _mutated(target, fx) if isinstance(target, torch._ops.OpOverload) else None
    stack = fx.meta.get("nn_module_stack") or {}
    module_path, module_type = "", ""
    if stack:
        module_path, module_type = list(stack.values())[-1]
        if module_path.startswith("_"):
            module_path, module_type = "", ""
        module_type = module_type.rsplit(".", 1)[-1] if isinstance(module_type, str) else ""
    return Node(
        name=fx.name,
        kind="op",
        target=target,
        args=args,
        kwargs=kwargs,
        meta=_meta(fx.meta.get("val")),
        source=source_of(fx.meta.get("stack_trace"), path),
        module_path=module_path if isinstance(module_path, str) else "",
        module_type=module_type,
        calls=_calls(stack),
        aliases=aliases,
        mutates=mutates,
        copies=_hidden_copies(fx),
    )


#: composite ops whose decomposition may copy an operand it cannot view into the shape a
#: kernel takes: `matmul` folds batch dims with `reshape`, `linear` runs `matmul`, `einsum`
#: permutes and reshapes
_COPYING = {
    torch.ops.aten.matmul.default,
    torch.ops.aten.linear.default,
    torch.ops.aten.einsum.default,
    torch.ops.aten.tensordot.default,
}


def _hidden_copies(fx: torch.fx.Node) -> tuple[tuple[int, float], ...]:
    """The copies a composite op makes of its operands on the way to its kernel and frees
    before it returns, found by running its decomposition on meta tensors with the traced
    sizes and strides (at their example values): (tensor input slot, copy bytes / operand
    bytes)."""
    if fx.target not in _COPYING:
        return ()
    try:
        args = [_on_meta(a) for a in fx.args]
        kwargs = {k: _on_meta(v) for k, v in fx.kwargs.items()}
    except _NoHint:
        return ()
    operands = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
    slots = {StorageWeakRef(t.untyped_storage()): slot for slot, t in enumerate(operands)}
    counter = _CopyCounter(dict(slots))
    try:
        with counter:
            out = fx.target(*args, **kwargs)
    except Exception:  # no meta kernel on the way: the estimate goes without the copies
        return ()
    made = counter.made
    for ref in _storages(out):
        made.pop(ref, None)
    copied: dict[int, int] = {}
    for slot, nbytes in made.values():
        copied[slot] = copied.get(slot, 0) + nbytes
    return tuple(
        (slot, nbytes / max(operands[slot].numel() * operands[slot].element_size(), 1))
        for slot, nbytes in sorted(copied.items())
    )


class _NoHint(Exception):
    """A size without an example value."""


def _hint(value: Any) -> int:
    if isinstance(value, torch.SymInt):
        try:
            return int(value.node.shape_env.guarding_hint_or_throw(value.node.expr))
        except Exception as exc:  # an unbacked size
            raise _NoHint from exc
    return int(value)


def _on_meta(value: Any) -> Any:
    """A graph argument with its fake tensors as meta tensors of the same layout."""
    if isinstance(value, torch.fx.Node):
        value = value.meta.get("val")
        if not isinstance(value, torch.Tensor):
            raise _NoHint
        size = [_hint(s) for s in value.shape]
        stride = [_hint(s) for s in value.stride()]
        return torch.empty_strided(size, stride, dtype=value.dtype, device="meta")
    if isinstance(value, (list, tuple)):
        return type(value)(_on_meta(v) for v in value)
    if isinstance(value, torch.SymInt):
        return _hint(value)
    return value


class _CopyCounter(TorchDispatchMode):
    """Under it, each new storage an op makes, with the operand slot whose data it holds."""

    def __init__(self, slots: dict[StorageWeakRef, int]) -> None:
        super().__init__()
        self.slots = slots
        self.made: dict[StorageWeakRef, tuple[int, int]] = {}

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        read = [
            StorageWeakRef(t.untyped_storage())
            for t in tree_leaves((args, kwargs))
            if isinstance(t, torch.Tensor)
        ]
        slot = next((self.slots[ref] for ref in read if ref in self.slots), None)
        for t in tree_leaves(out):
            if not isinstance(t, torch.Tensor):
                continue
            ref = StorageWeakRef(t.untyped_storage())
            if ref in read or ref in self.slots or slot is None:
                continue
            self.slots[ref] = slot
            self.made[ref] = (slot, t.untyped_storage().nbytes())
        return out


def _calls(stack: dict[str, Any]) -> tuple[str, ...]:
    """Return the module calls of an `nn_module_stack`, outermost first, without the root:
    each the module's path, with export's `@n` kept for a module's n-th call after the first."""
    calls = []
    for key, entry in stack.items():
        path = entry[0] if isinstance(entry, tuple) and isinstance(entry[0], str) else None
        if not path or path.startswith("_"):
            continue
        count = key.rpartition("@")[2] if "@" in key else ""
        calls.append(f"{path}@{count}" if count.isdigit() else path)
    return tuple(calls)


def _storages(value: Any) -> list[StorageWeakRef]:
    if isinstance(value, torch.Tensor):
        try:
            return [StorageWeakRef(value.untyped_storage())]
        except NotImplementedError:  # vmap's batched tensors have none to compare
            return []
    if isinstance(value, (list, tuple)):
        return [ref for v in value for ref in _storages(v)]
    return []


def _shared_storage(fx: torch.fx.Node) -> str | None:
    """Return the input whose storage the result shares (a view), from the fake tensors."""
    produced = _storages(fx.meta.get("val"))
    if not produced:
        return None
    for arg in fx.all_input_nodes:
        if any(ref in produced for ref in _storages(arg.meta.get("val"))):
            return arg.name
    return None


#: dropouts that return their input itself, not a copy, when not training or dropping nothing
#: (ATen's `_dropout_impl`); fake tensors give them a storage of their own
_IDENTITY_DROPOUTS = {
    torch.ops.aten.dropout.default,
    torch.ops.aten.feature_dropout.default,
    torch.ops.aten.alpha_dropout.default,
    torch.ops.aten.feature_alpha_dropout.default,
}


def _returned_input(target: Any, fx: torch.fx.Node) -> str | None:
    """The input an op returns as itself: an eval-mode dropout's (NOTE [Memory model])."""
    if target not in _IDENTITY_DROPOUTS or not isinstance(fx.args[0], torch.fx.Node):
        return None
    p = fx.args[1] if len(fx.args) > 1 else fx.kwargs.get("p", 0.5)
    train = fx.args[2] if len(fx.args) > 2 else fx.kwargs.get("train")
    return fx.args[0].name if train is False or p == 0 else None


def _mutated(op: torch._ops.OpOverload, fx: torch.fx.Node) -> str | None:
    """Return the input an in-place op writes, from the op schema's alias annotations."""
    for position, argument in enumerate(op._schema.arguments):
        if argument.alias_info is None or not argument.alias_info.is_write:
            continue
        value = fx.args[position] if position < len(fx.args) else fx.kwargs.get(argument.name)
        if isinstance(value, torch.fx.Node):
            return value.name
    return None


def _arg(value: Any) -> Any:
    if isinstance(value, torch.fx.Node):
        return Ref(value.name)
    if isinstance(value, (list, tuple)):
        return type(value)(_arg(v) for v in value)
    if isinstance(value, torch.SymInt):
        return _size(value)
    return value


def _size(value: Any) -> Size:
    if isinstance(value, torch.SymInt):
        expr = value.node.expr
        return int(expr) if expr.is_Integer else expr
    return int(value)


def _contiguous(value: torch.Tensor) -> bool:
    try:
        return bool(value.is_contiguous())
    except Exception:  # a layout question the symbolic shapes cannot answer
        return False


def _meta(value: Any) -> Meta:
    if isinstance(value, torch.Tensor):
        return TensorMeta(tuple(_size(s) for s in value.shape), value.dtype, _contiguous(value))
    if isinstance(value, (list, tuple)) and all(isinstance(v, torch.Tensor) for v in value):
        return tuple(TensorMeta(tuple(_size(s) for s in v.shape), v.dtype) for v in value)
    if isinstance(value, (torch.SymInt, int)) and not isinstance(value, bool):
        return _size(value)
    return None


#: frames from these directories are never cited: torch itself, and this tool
_INTERNAL = (str(Path(torch.__file__).parent) + "/", str(Path(__file__).parent) + "/")


#: functions that only pass a call on (decorators' wrappers, `__call__` hooks): never cited
_PLUMBING = {"wrapper", "inner", "wrapped", "decorate_context", "__call__", "_call_impl"}


def source_of(stack: str | None, path: Path) -> Source | None:
    """Return the deepest stack frame outside torch that is not plumbing: the model file's own
    line, or, where the model file only delegates (a wrapper passing `use_cache=False` to a
    library model), the library's line that made the value."""
    if not stack:
        return None
    frames = [m for m in _FRAME.finditer(stack)]
    outside = [m for m in frames if not m["file"].startswith(_INTERNAL)]
    ours = [m for m in outside if Path(m["file"]).resolve() == path]
    code = [m for m in outside if m["function"] not in _PLUMBING]
    chosen = (code or ours or outside or [None])[-1]
    if chosen is None:
        return None
    return Source(chosen["file"], int(chosen["line"]), chosen["function"], chosen["code"].strip())


def _dim_names(loaded: LoadedModel) -> dict[tuple[int, int], str]:
    """Map (input position, axis) to the Dim name `dynamic_shapes()` gives it."""
    spec = loaded.dynamic_shapes
    if spec is None:
        return {}
    if isinstance(spec, dict):
        params = list(inspect.signature(loaded.module.forward).parameters)
        per_input = [spec.get(name) for name in params[: len(loaded.inputs)]]
    else:
        per_input = list(spec)
    names: dict[tuple[int, int], str] = {}
    for position, dims in enumerate(per_input):
        items = dims.items() if isinstance(dims, dict) else enumerate(dims or ())
        for axis, dim in items:
            name = getattr(getattr(dim, "root", dim), "__name__", None)  # 4 * h: its root, h
            if isinstance(name, str) and name.isidentifier():
                names[(position, axis)] = name
    return names


__all__ = ["build_graph", "capture", "export", "source_of"]
