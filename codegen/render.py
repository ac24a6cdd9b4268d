"""Render one ATen node as a torch-level Python expression.

Ops with a one-to-one torch function are written as that function (`aten.linear` becomes
`torch.nn.functional.linear`); every other op falls back to its exact `torch.ops.aten` overload,
which is always correct, only less pleasant to read.
"""

from __future__ import annotations

import math
import operator
from typing import Any, Callable

import sympy
import torch

from analysis.ir import Node, Ref

aten = torch.ops.aten

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


def _kw(node: Node, arg: ArgFn, skip: tuple[str, ...] = ("pin_memory",)) -> list[str]:
    out = []
    for key, value in node.kwargs:
        if key in skip or (key == "pin_memory" and value is False):
            continue
        if key == "layout" and value == torch.strided:
            continue
        out.append(f"{key}={arg(value)}")
    return out


def _method(name: str, varargs: bool = False) -> Callable[[Node, list[str], ArgFn], str]:
    def render(node: Node, a: list[str], arg: ArgFn) -> str:
        rest = a[1:]
        if varargs and len(node.args) > 1 and isinstance(node.args[1], (list, tuple)):
            rest = [arg(v) for v in node.args[1]]
        return f"{a[0]}.{name}({_seq(rest + _kw(node, arg))})"

    return render


def _function(name: str, order: tuple[int, ...] | None = None) -> Callable[..., str]:
    def render(node: Node, a: list[str], arg: ArgFn) -> str:
        args = [a[i] for i in order if i < len(a)] if order is not None else a
        return f"{name}({_seq(args + _kw(node, arg))})"

    return render


def _binary(symbol: str) -> Callable[..., str]:
    def render(node: Node, a: list[str], arg: ArgFn) -> str:
        if len(a) != 2 or node.kwargs:
            return _fallback(node, a, arg)
        return f"{a[0]} {symbol} {a[1]}"

    return render


def _softmax(node: Node, a: list[str], arg: ArgFn) -> str:
    extra = [f"dtype={a[2]}"] if len(a) > 2 and a[2] != "None" else []
    return f"torch.softmax({_seq(a[:2] + extra)})"


def _layer_norm(node: Node, a: list[str], arg: ArgFn) -> str:
    return f"torch.nn.functional.layer_norm({_seq(a[:5])})"


def _gelu(node: Node, a: list[str], arg: ArgFn) -> str:
    approximate = node.kwarg("approximate", "none")
    extra = [f"approximate={approximate!r}"] if approximate != "none" else []
    return f"torch.nn.functional.gelu({_seq(a[:1] + extra)})"


def _dropout(node: Node, a: list[str], arg: ArgFn) -> str:
    return f"torch.nn.functional.dropout({a[0]}, {a[1]}, training={a[2]})"


def _upsample_nearest(node: Node, a: list[str], arg: ArgFn) -> str:
    """`F.interpolate(mode="nearest")` dispatches to this very overload with the same arguments."""
    size = node.args[1] if len(node.args) > 1 else None
    scales = node.args[2] if len(node.args) > 2 else None
    keyword = f"size={a[1]}" if size is not None else f"scale_factor={a[2]}"
    if (size is None) == (scales is None):
        return _fallback(node, a, arg)
    return f'torch.nn.functional.interpolate({a[0]}, {keyword}, mode="nearest")'


def _embedding(node: Node, a: list[str], arg: ArgFn) -> str:
    return f"torch.nn.functional.embedding({a[1]}, {a[0]})"


def _slice(node: Node, a: list[str], arg: ArgFn) -> str:
    args = list(node.args) + [None] * (5 - len(node.args))
    dim = args[1] or 0
    start = "" if args[2] in (None, 0) else a[2]
    end = "" if args[3] is None or args[3] == _INT_MAX else a[3]
    step = "" if args[4] in (None, 1) else f":{a[4]}"
    if dim < 0:
        return _fallback(node, a, arg)
    return f"{a[0]}[{'' .join(':, ' for _ in range(dim))}{start}:{end}{step}]"


def _select(node: Node, a: list[str], arg: ArgFn) -> str:
    dim = node.args[1]
    if dim < 0:
        return _fallback(node, a, arg)
    return f"{a[0]}[{''.join(':, ' for _ in range(dim))}{a[2]}]"


def _factory(name: str) -> Callable[..., str]:
    def render(node: Node, a: list[str], arg: ArgFn) -> str:
        sizes = node.args[0]
        shape = f"({_seq([arg(s) for s in sizes])}{',' if len(sizes) == 1 else ''})"
        return f"torch.{name}({_seq([shape, *a[1:], *_kw(node, arg)])})"

    return render


def _arange(node: Node, a: list[str], arg: ArgFn) -> str:
    return f"torch.arange({_seq(a + _kw(node, arg))})"


def _getitem(node: Node, a: list[str], arg: ArgFn) -> str:
    return f"{a[0]}[{a[1]}]"


def _sym_size(node: Node, a: list[str], arg: ArgFn) -> str:
    return f"{a[0]}.shape[{a[1]}]"


def _fallback(node: Node, a: list[str], arg: ArgFn) -> str:
    target = node.target
    if isinstance(target, torch._ops.OpOverload):
        name = f"torch.ops.{target.namespace}.{target._schema.name.split('::')[-1]}.{target._overloadname}"
        return f"{name}({_seq(a + _kw(node, arg, skip=()))})"
    raise TypeError(f"node {node.name}: cannot render {target!r}")


_RENDER: dict[Any, Callable[[Node, list[str], ArgFn], str]] = {
    aten.linear.default: _function("torch.nn.functional.linear"),
    aten.embedding.default: _embedding,
    aten.layer_norm.default: _layer_norm,
    aten.softmax.int: _softmax,
    aten.matmul.default: _function("torch.matmul"),
    aten.mm.default: _function("torch.mm"),
    aten.bmm.default: _function("torch.bmm"),
    aten.addmm.default: _function("torch.addmm"),
    aten.add.Tensor: _binary("+"),
    aten.sub.Tensor: _binary("-"),
    aten.mul.Tensor: _binary("*"),
    aten.div.Tensor: _binary("/"),
    aten.view.default: _method("view", varargs=True),
    aten.reshape.default: _method("reshape", varargs=True),
    aten._unsafe_view.default: _method("reshape", varargs=True),
    aten.expand.default: _method("expand", varargs=True),
    aten.permute.default: _method("permute", varargs=True),
    aten.transpose.int: _method("transpose"),
    aten.t.default: _method("t"),
    aten.unsqueeze.default: _method("unsqueeze"),
    aten.squeeze.dim: _method("squeeze"),
    aten.contiguous.default: _method("contiguous"),
    aten.to.dtype: _method("to"),
    aten.to.dtype_layout: _method("to"),
    aten.to.device: _method("to"),
    aten.type_as.default: _method("type_as"),
    aten.clone.default: _method("clone"),
    aten.split.Tensor: _function("torch.split"),
    aten.split_with_sizes.default: _function("torch.split"),
    aten.slice.Tensor: _slice,
    aten.select.int: _select,
    aten.masked_fill.Scalar: _method("masked_fill"),
    aten.masked_fill.Tensor: _method("masked_fill"),
    aten.where.self: _function("torch.where"),
    aten.bitwise_not.default: lambda node, a, arg: f"~{a[0]}",
    aten.neg.default: lambda node, a, arg: f"-{a[0]}",
    aten.gelu.default: _gelu,
    aten.relu.default: _function("torch.relu"),
    aten.silu.default: _function("torch.nn.functional.silu"),
    aten.sigmoid.default: _function("torch.sigmoid"),
    aten.tanh.default: _function("torch.tanh"),
    aten.exp.default: _function("torch.exp"),
    aten.cos.default: _function("torch.cos"),
    aten.sin.default: _function("torch.sin"),
    aten.upsample_nearest2d.vec: _upsample_nearest,
    aten.rsqrt.default: _function("torch.rsqrt"),
    aten.sqrt.default: _function("torch.sqrt"),
    aten.tril.default: _function("torch.tril"),
    aten.triu.default: _function("torch.triu"),
    aten.dropout.default: _dropout,
    aten.arange.default: _arange,
    aten.arange.start: _arange,
    aten.arange.start_step: _arange,
    aten.ones.default: _factory("ones"),
    aten.zeros.default: _factory("zeros"),
    aten.empty.memory_format: _factory("empty"),
    aten.full.default: _factory("full"),
    aten.sym_size.int: _sym_size,
    aten.flatten.using_ints: _method("flatten"),
    aten.einsum.default: _function("torch.einsum"),
    aten.baddbmm.default: _function("torch.baddbmm"),
    aten.cat.default: _function("torch.cat"),
    aten.conv2d.default: _function("torch.nn.functional.conv2d"),
    aten.conv1d.default: _function("torch.nn.functional.conv1d"),
    aten.group_norm.default: lambda node, a, arg: f"torch.nn.functional.group_norm({_seq(a[:5])})",
    aten.scaled_dot_product_attention.default: _function(
        "torch.nn.functional.scaled_dot_product_attention"
    ),
    aten.mean.dim: _function("torch.mean"),
    aten.sum.dim_IntList: _function("torch.sum"),
    aten.amax.default: _function("torch.amax"),
    aten.unbind.int: _function("torch.unbind"),
    aten.chunk.default: _function("torch.chunk"),
    aten.pow.Tensor_Scalar: _binary("**"),
    aten.log.default: _function("torch.log"),
    aten.abs.default: _function("torch.abs"),
    aten.squeeze.dims: _method("squeeze"),
    aten.eq.Scalar: _binary("=="),
    aten.eq.Tensor: _binary("=="),
    aten.ne.Scalar: _binary("!="),
    aten.lt.Scalar: _binary("<"),
    aten.gt.Scalar: _binary(">"),
    aten.le.Tensor: _binary("<="),
    aten.le.Scalar: _binary("<="),
    aten.lt.Tensor: _binary("<"),
    aten.gt.Tensor: _binary(">"),
    aten.ge.Tensor: _binary(">="),
    aten.ge.Scalar: _binary(">="),
    aten.ne.Tensor: _binary("!="),
    aten.__and__.Tensor: _binary("&"),
    aten.__or__.Tensor: _binary("|"),
    aten.__xor__.Tensor: _binary("^"),
    aten.bitwise_and.Tensor: _binary("&"),
    aten.bitwise_or.Tensor: _binary("|"),
    aten.add_.Tensor: _method("add_"),
    aten.sub_.Tensor: _method("sub_"),
    aten.mul_.Tensor: _method("mul_"),
    aten.div_.Tensor: _method("div_"),
    aten.copy_.default: _method("copy_"),
    aten.lift_fresh_copy.default: _method("clone"),
    aten.detach_.default: _method("detach_"),
    aten.masked_fill_.Scalar: _method("masked_fill_"),
    aten.masked_fill_.Tensor: _method("masked_fill_"),
    aten.relu_.default: _method("relu_"),
    aten.sigmoid_.default: _method("sigmoid_"),
    aten.tanh_.default: _method("tanh_"),
    aten.exp_.default: _method("exp_"),
    aten.neg_.default: _method("neg_"),
    aten.bitwise_not_.default: _method("bitwise_not_"),
    aten.tril_.default: _method("tril_"),
    aten.triu_.default: _method("triu_"),
    operator.getitem: _getitem,
    operator.add: _binary("+"),
    operator.sub: _binary("-"),
    operator.mul: _binary("*"),
    operator.floordiv: _binary("//"),
    operator.mod: _binary("%"),
}


def render_call(node: Node, arg: ArgFn) -> str:
    """Return a Python expression computing `node` from its rendered arguments."""
    rendered = [arg(value) for value in node.args]
    render = _RENDER.get(node.target, _fallback)
    return render(node, rendered, arg)


def is_ref(value: Any) -> bool:
    return isinstance(value, Ref)
