"""Render one ATen node as a torch-level Python expression.

Each op is written in the form its registry entry gives (NOTE [Op registry]): a torch function
(`aten.linear` becomes `torch.nn.functional.linear`), a method, an operator, or a renderer of
its own. An op without one falls back to its exact `torch.ops.aten` overload, which is always
correct, only less pleasant to read.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import sympy
import torch

from analysis.ops import Written, info

#: Render an argument value as Python source.
ArgFn = Callable[[Any], str]

_INT_MAX = 2**63 - 1


def literal(value: Any, sym: Callable[[sympy.Expr], str], device: str) -> str:
    """Render a non-reference argument: numbers, dtypes, devices, sizes, nested lists."""
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, float):
        if math.isinf(value):
            return 'float("inf")' if value > 0 else 'float("-inf")'
        if math.isnan(value):
            return 'float("nan")'
        return repr(value)
    if isinstance(value, int):
        return repr(value)
    if isinstance(value, sympy.Expr):
        return sym(value)
    if isinstance(value, torch.dtype):
        return str(value)
    if isinstance(value, torch.device):
        return device
    if isinstance(value, torch.memory_format):
        return f"torch.{str(value).removeprefix('torch.')}"
    if isinstance(value, torch.layout):
        return f"torch.{str(value).removeprefix('torch.')}"
    if isinstance(value, str):
        return repr(value)
    raise TypeError(f"cannot render argument {value!r}")


def _seq(items: list[str]) -> str:
    return ", ".join(items)


def _kw(node: Any, arg: ArgFn, skip: tuple[str, ...] = ("pin_memory",)) -> list[str]:
    out = []
    for key, value in node.kwargs:
        if key in skip or (key == "pin_memory" and value is False):
            continue
        if key == "layout" and value == torch.strided:
            continue
        out.append(f"{key}={arg(value)}")
    return out


def _method(name: str, varargs: bool = False) -> Callable[[Any, list[str], ArgFn], str]:
    def render(node: Any, a: list[str], arg: ArgFn) -> str:
        rest = a[1:]
        if varargs and len(node.args) > 1 and isinstance(node.args[1], (list, tuple)):
            rest = [arg(v) for v in node.args[1]]
        return f"{a[0]}.{name}({_seq(rest + _kw(node, arg))})"

    return render


def _function(name: str, order: tuple[int, ...] | None = None) -> Callable[..., str]:
    def render(node: Any, a: list[str], arg: ArgFn) -> str:
        args = [a[i] for i in order if i < len(a)] if order is not None else a
        return f"{name}({_seq(args + _kw(node, arg))})"

    return render


def _binary(symbol: str) -> Callable[..., str]:
    def render(node: Any, a: list[str], arg: ArgFn) -> str:
        if len(a) != 2 or node.kwargs:
            return _fallback(node, a, arg)
        return f"{a[0]} {symbol} {a[1]}"

    return render


def _softmax(node: Any, a: list[str], arg: ArgFn) -> str:
    extra = [f"dtype={a[2]}"] if len(a) > 2 and a[2] != "None" else []
    return f"torch.softmax({_seq(a[:2] + extra)})"


def _layer_norm(node: Any, a: list[str], arg: ArgFn) -> str:
    return f"torch.nn.functional.layer_norm({_seq(a[:5])})"


def _gelu(node: Any, a: list[str], arg: ArgFn) -> str:
    approximate = dict(node.kwargs).get("approximate", "none")
    extra = [f"approximate={approximate!r}"] if approximate != "none" else []
    return f"torch.nn.functional.gelu({_seq(a[:1] + extra)})"


def _dropout(node: Any, a: list[str], arg: ArgFn) -> str:
    return f"torch.nn.functional.dropout({a[0]}, {a[1]}, training={a[2]})"


def _upsample_nearest(node: Any, a: list[str], arg: ArgFn) -> str:
    """`F.interpolate(mode="nearest")` dispatches to this very overload with the same arguments."""
    size = node.args[1] if len(node.args) > 1 else None
    scales = node.args[2] if len(node.args) > 2 else None
    keyword = f"size={a[1]}" if size is not None else f"scale_factor={a[2]}"
    if (size is None) == (scales is None):
        return _fallback(node, a, arg)
    return f'torch.nn.functional.interpolate({a[0]}, {keyword}, mode="nearest")'


def _upsample_bilinear(node: Any, a: list[str], arg: ArgFn) -> str:
    """`F.interpolate(mode="bilinear")` by scale factors dispatches to this very overload."""
    size = node.args[1] if len(node.args) > 1 else None
    scales = node.args[3] if len(node.args) > 3 else None
    if size is not None or scales is None:
        return _fallback(node, a, arg)
    corners = ", align_corners=True" if node.args[2] else ""
    return f'torch.nn.functional.interpolate({a[0]}, scale_factor={a[3]}, mode="bilinear"{corners})'


def _embedding(node: Any, a: list[str], arg: ArgFn) -> str:
    return f"torch.nn.functional.embedding({a[1]}, {a[0]})"


def _slice(node: Any, a: list[str], arg: ArgFn) -> str:
    args = list(node.args) + [None] * (5 - len(node.args))
    dim = args[1] or 0
    start = "" if args[2] in (None, 0) else a[2]
    end = "" if args[3] is None or args[3] == _INT_MAX else a[3]
    step = "" if args[4] in (None, 1) else f":{a[4]}"
    if dim < 0:
        return _fallback(node, a, arg)
    return f"{a[0]}[{'' .join(':, ' for _ in range(dim))}{start}:{end}{step}]"


def _select(node: Any, a: list[str], arg: ArgFn) -> str:
    dim = node.args[1]
    if dim < 0:
        return _fallback(node, a, arg)
    return f"{a[0]}[{''.join(':, ' for _ in range(dim))}{a[2]}]"


def _factory(name: str) -> Callable[..., str]:
    def render(node: Any, a: list[str], arg: ArgFn) -> str:
        sizes = node.args[0]
        shape = f"({_seq([arg(s) for s in sizes])}{',' if len(sizes) == 1 else ''})"
        return f"torch.{name}({_seq([shape, *a[1:], *_kw(node, arg)])})"

    return render


def _arange(node: Any, a: list[str], arg: ArgFn) -> str:
    return f"torch.arange({_seq(a + _kw(node, arg))})"


def _getitem(node: Any, a: list[str], arg: ArgFn) -> str:
    return f"{a[0]}[{a[1]}]"


def _sym_size(node: Any, a: list[str], arg: ArgFn) -> str:
    return f"{a[0]}.shape[{a[1]}]"


def _einsum(node: Any, a: list[str], arg: ArgFn) -> str:
    """`torch.einsum` takes no contraction `path` (opt_einsum's choice, recorded by export):
    with one, the exact overload keeps the same order of contractions."""
    if any(key == "path" for key, _ in node.kwargs):
        return _fallback(node, a, arg)
    return _function("torch.einsum")(node, a, arg)


def _group_norm(node: Any, a: list[str], arg: ArgFn) -> str:
    return f"torch.nn.functional.group_norm({_seq(a[:5])})"


def _fallback(node: Any, a: list[str], arg: ArgFn) -> str:
    target = node.target
    if isinstance(target, torch._ops.OpOverload):
        name = f"torch.ops.{target.namespace}.{target._schema.name.split('::')[-1]}.{target._overloadname}"
        return f"{name}({_seq(a + _kw(node, arg, skip=()))})"
    module, name = getattr(target, "__module__", ""), getattr(target, "__qualname__", "")
    if module.startswith("torch.") and name.isidentifier():  # vmap's batching steps, and such
        return f"{module}.{name}({_seq(a + _kw(node, arg, skip=()))})"
    raise TypeError(f"cannot render {target!r}")


#: renderers of ops written in a form of their own (`Written("special", name)` in the registry)
_SPECIAL: dict[str, Callable[[Any, list[str], ArgFn], str]] = {
    "embedding": _embedding,
    "layer_norm": _layer_norm,
    "softmax": _softmax,
    "slice": _slice,
    "select": _select,
    "gelu": _gelu,
    "upsample_nearest": _upsample_nearest,
    "upsample_bilinear": _upsample_bilinear,
    "dropout": _dropout,
    "ones": _factory("ones"),
    "zeros": _factory("zeros"),
    "empty": _factory("empty"),
    "full": _factory("full"),
    "sym_size": _sym_size,
    "group_norm": _group_norm,
    "getitem": _getitem,
    "einsum": _einsum,
}


def _renderer(written: Written | None) -> Callable[[Any, list[str], ArgFn], str]:
    if written is None:
        return _fallback
    if written.form == "function":
        return _function(written.name)
    if written.form == "method":
        return _method(written.name, written.varargs)
    if written.form == "binary":
        return _binary(written.name)
    if written.form == "prefix":
        return lambda op, a, arg: f"{written.name}{a[0]}"
    return _SPECIAL[written.name]


def render_call(op: Any, arg: ArgFn) -> str:
    """Return a Python expression computing `op` (anything with a target, args and kwargs)
    from its rendered arguments, in the form the registry gives it."""
    rendered = [arg(value) for value in op.args]
    return _renderer(info(op.target).written)(op, rendered, arg)


__all__ = ["literal", "render_call"]
