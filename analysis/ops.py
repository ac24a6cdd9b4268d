"""The op registry: what each ATen op is, written once, keyed by the op a graph node runs.

NOTE [Op registry]
One entry per op overload (or Python operator) a captured graph may hold. An entry says:
- its dimension rule (NOTE [Dimension flow]), or none: it mixes every dim;
- whether it is elementwise, and whether it is cheap enough to recompute
  (NOTE [Recomputed values]);
- whether its result is always fresh storage, its in-place form, and whether its two tensor
  operands commute (NOTE [In-place in loops]);
- the torch call it is written as (`Written`), which codegen prints;
- its cost class (NOTE [Cost model]): plain, transcendental or a contraction, how a matrix
  product's rows are counted, and whether it copies a non-contiguous operand first;
- whether its value is named after its module (a Linear's output after the Linear);
- for ops that fill a new tensor with one value, where that value is;
- the `torch.nn` layer whose whole forward it is (`aten.linear` for `nn.Linear`).
Entries are built below from a few `_define` calls; a packet (`aten.add`) stands for its
functional overloads that return tensors. A rule that raises is a bug of ours: `dim_rule`
reports it as an internal error naming the node and its model line.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, fields, replace
from typing import Any, Callable

import torch

from analysis import dimflow as flow
from analysis.dimflow import DimRule, out_meta
from analysis.errors import InternalError
from analysis.ir import Graph, Node

aten = torch.ops.aten

Rule = Callable[[Node, Graph], "DimRule | None"]

#: cost classes (NOTE [Cost model])
PLAIN, TRANSCENDENTAL, CONTRACTION = "plain", "transcendental", "contraction"
#: how a matrix product's rows are counted: every output dim but the last, or the one before it
ALL_BUT_LAST, SECOND_TO_LAST = "all_but_last", "second_to_last"


@dataclass(frozen=True, slots=True)
class Written:
    """How an op is written in generated code.

    `form` is "function" (`name(a0, a1, ..., key=value)`), "method" (`a0.name(a1, ...)`, with
    a list argument spread when `varargs`), "binary" (`a0 name a1`), "prefix" (`name a0`) or
    "special" (a renderer of its own, called `name`).
    """

    #: the form, as above
    form: str
    #: the function path, method name, operator or special renderer
    name: str
    #: for methods: spread the second argument when it is a list (`x.view(2, 3)`)
    varargs: bool = False

    def __post_init__(self) -> None:
        if self.form not in ("function", "method", "binary", "prefix", "special"):
            raise ValueError(f"unknown form {self.form!r}")


@dataclass(frozen=True, slots=True)
class Fill:
    """Where a filling op's one value is: an argument (`full(size, value)`), or fixed (`ones`)."""

    #: the argument holding the value, or None
    index: int | None = None
    #: the value, when fixed
    value: Any = None


@dataclass(frozen=True, slots=True)
class OpInfo:
    """Everything the passes and the emitter know about one op."""

    #: the dimension rule; None: the op mixes every dim
    rule: Rule | None = None
    #: each output element depends on the inputs' elements at its position only
    elementwise: bool = False
    #: cheap enough to recompute in front of each reader (NOTE [Recomputed values])
    cheap: bool = False
    #: the result is always newly allocated storage (never a view, never its input unchanged)
    fresh: bool = False
    #: the op's in-place form (NOTE [In-place in loops])
    inplace: Any = None
    #: the two tensor operands may be swapped without changing a bit of the result
    commutative: bool = False
    #: how it is written; None: as its `torch.ops` overload
    written: Written | None = None
    #: PLAIN, TRANSCENDENTAL (runs at the softmax's rate) or CONTRACTION
    cost: str = PLAIN
    #: for matrix products: ALL_BUT_LAST or SECOND_TO_LAST
    gemm_rows: str | None = None
    #: copies a non-contiguous operand it reads whole before multiplying
    batched: bool = False
    #: its value is named after the module that calls it
    names_module: bool = False
    #: for ops that fill a new tensor with one value: where that value is
    fill: Fill | None = None
    #: the `torch.nn` layer whose forward is exactly this op, and the argument that is the
    #: layer's input: where a layer ran it, the generated code calls the layer
    layer: tuple[tuple[str, ...], int] | None = None


#: the transposed convolutions (upsampling by their stride)
CONV_TRANSPOSES = (aten.conv_transpose1d, aten.conv_transpose2d, aten.conv_transpose3d)
#: the convolutions, whose spatial dims have names ("image rows") and cost rules of their own
CONVOLUTIONS = (aten.conv1d, aten.conv2d, aten.conv3d, aten.convolution, *CONV_TRANSPOSES)


def is_convolution(node: Node) -> bool:
    """Return whether a graph node runs a convolution."""
    return node.kind == "op" and getattr(node.target, "overloadpacket", None) in CONVOLUTIONS


REGISTRY: dict[Any, OpInfo] = {}
_UNKNOWN = OpInfo()


def info(target: Any) -> OpInfo:
    """Return what the registry knows of an op (nothing, for an op it does not list)."""
    return REGISTRY.get(target, _UNKNOWN)


def inplace_form(target: Any) -> Any:
    """Return the op's in-place overload (raises for an op that has none)."""
    found = info(target).inplace
    if found is None:
        raise KeyError(f"{target} has no in-place form")
    return found


def dim_rule(node: Node, graph: Graph) -> DimRule | None:
    """Return the op's rule, or None when it mixes every dim (unknown ops included)."""
    key = ("dim_rule", node.name)  # a pure function of the graph: cached on it
    if key not in graph.memo:
        graph.memo[key] = _find_rule(node, graph)
    return graph.memo[key]


def _find_rule(node: Node, graph: Graph) -> DimRule | None:
    if node.kind != "op" or out_meta(node) is None:
        return None
    rule = info(node.target).rule
    if rule is None:
        return None
    try:
        return rule(node, graph)
    except Exception as exc:  # a rule that raises would silently switch chunking off
        where = f" ({node.source.cite()})" if node.source else ""
        raise InternalError(
            f"the dimension rule of {node.target} raised {type(exc).__name__}: {exc} "
            f"on node {node.name}{where}"
        ) from exc


# ------------------------------------------------------------------ building the table
def _overloads(op: Any) -> list[Any]:
    """Return an overload as itself, and a packet as its functional overloads that return
    tensors (no `out=` forms, no Python-scalar forms)."""
    if not isinstance(op, torch._ops.OpOverloadPacket):
        return [op]
    found = []
    for name in op.overloads():
        overload = getattr(op, name)
        schema = overload._schema
        skipped = name in _SKIPPED_OVERLOADS or f"{op.__name__}.{name}" in _SKIPPED_OVERLOADS
        if any(a.is_out for a in schema.arguments) or skipped:
            continue
        if name == "dtype" and op.__name__ in ("view", "mm", "bmm", "addmm", "baddbmm"):
            continue  # a dtype view, and matrix products with an output dtype
        if schema.is_mutable and not op.__name__.endswith("_"):
            continue
        returns = [str(r.type) for r in schema.returns]
        if returns and all(r in ("Tensor", "List[Tensor]") for r in returns):
            found.append(overload)
    return found


#: overload names no rule is meant for: TorchScript's string and sublist forms; and single
#: overloads ("packet.overload"): `where(condition)` is `nonzero` as a tuple of index vectors,
#: data-dependent in length and never shaped like its input
_SKIPPED_OVERLOADS = {"str", "Tensor_hacked_twin", "sublist", "where.default"}


def _define(*ops: Any, **properties: Any) -> None:
    """Merge `properties` into the entries of `ops` (packets stand for their overloads)."""
    known = {f.name for f in fields(OpInfo)}
    if not set(properties) <= known:
        raise TypeError(f"unknown op properties {set(properties) - known}")
    for op in ops:
        for overload in _overloads(op):
            REGISTRY[overload] = replace(REGISTRY.get(overload, _UNKNOWN), **properties)


def _function(name: str) -> Written:
    return Written("function", name)


def _method(name: str, varargs: bool = False) -> Written:
    return Written("method", name, varargs)


def _binary(symbol: str) -> Written:
    return Written("binary", symbol)


def _special(name: str) -> Written:
    return Written("special", name)


# ------------------------------------------------------------------ dimension rules
_ELEMENTWISE = (
    aten.add, aten.sub, aten.mul, aten.div, aten.neg, aten.exp, aten.log, aten.tanh,
    aten.sigmoid, aten.relu, aten.gelu, aten.silu, aten.sqrt, aten.rsqrt, aten.pow, aten.abs,
    aten.masked_fill, aten.where, aten.bitwise_not, aten.logical_not, aten.eq, aten.ne,
    aten.lt, aten.le, aten.gt, aten.ge, aten.clone, aten.contiguous, aten._to_copy, aten.to,
    aten.type_as, aten.alias, aten.detach, aten.clamp, aten.maximum, aten.minimum, aten.erf,
    aten.logical_and, aten.logical_or, aten.bitwise_and, aten.bitwise_or, aten.reciprocal,
    aten.add_, aten.sub_, aten.mul_, aten.div_, aten.masked_fill_, aten.relu_, aten.copy_,
    aten.square, aten.__and__, aten.__or__, aten.sin, aten.cos, aten.tanh_, aten.gelu_,
    aten.silu_, aten.sigmoid_, aten.min.other, aten.max.other, aten.log1p, aten.expm1,
    aten.exp2, aten.log2, aten.log10, aten.floor, aten.ceil, aten.round, aten.trunc, aten.sign,
    aten.remainder, aten.fmod, aten.floor_divide, aten.clamp_min, aten.clamp_max, aten.hardtanh,
    aten.leaky_relu, aten.elu, aten.softplus, aten.mish, aten.hardswish, aten.hardsigmoid,
    aten.bitwise_xor, aten.__xor__, aten.logical_xor, aten.isnan, aten.isinf, aten.nan_to_num,
    aten.lerp, aten.addcmul, aten.addcdiv, aten.atan,
)  # fmt: skip
_define(*_ELEMENTWISE, rule=flow.elementwise_rule, elementwise=True)
_define(aten.full_like, aten.zeros_like, aten.ones_like, aten.empty_like, rule=flow.like_rule)
_define(aten.dropout, aten.native_dropout, aten.feature_dropout, rule=flow.dropout_rule)
_define(aten.linear, rule=flow.linear_rule)
_define(aten.mm, rule=flow.mm_rule)
_define(aten.bmm, rule=flow.bmm_rule)
_define(aten.addmm, rule=flow.addmm_rule)
_define(aten.matmul, rule=flow.matmul_rule)
_define(aten.softmax, aten._softmax, aten.log_softmax, aten._log_softmax, rule=flow.softmax_rule)
_define(aten.layer_norm, rule=flow.layer_norm_rule)
_define(aten.tril, aten.triu, rule=flow.triangle_rule)
_define(aten.ones, aten.zeros, aten.empty, aten.full, rule=flow.factory_rule)
_define(
    aten.view, aten.reshape, aten._unsafe_view, aten.flatten, aten.unflatten, rule=flow.view_rule
)
_define(aten.transpose, rule=flow.transpose_rule)
_define(aten.t, rule=flow.t_rule)
_define(aten.permute, rule=flow.permute_rule)
_define(aten.unsqueeze, rule=flow.unsqueeze_rule)
_define(aten.squeeze, rule=flow.squeeze_rule)
_define(aten.expand, rule=flow.expand_rule)
_define(aten.split, aten.split_with_sizes, aten.chunk, aten.unbind, rule=flow.split_rule)
_define(operator.getitem, rule=flow.getitem_rule)
_define(aten.slice, rule=flow.slice_rule)
_define(aten.select, rule=flow.select_rule)
_define(aten.embedding, rule=flow.embedding_rule)
_define(aten.index, rule=flow.index_rule)
_define(
    aten.sum, aten.mean, aten.amax, aten.amin, aten.var, aten.std, aten.logsumexp,
    rule=flow.reduce_rule,
)  # fmt: skip
_define(aten.baddbmm, rule=flow.baddbmm_rule)
_define(aten.einsum, rule=flow.einsum_rule)
_define(aten.group_norm, aten.native_group_norm, rule=flow.group_norm_rule)
_define(aten.conv1d, aten.conv2d, aten.conv3d, aten.convolution, rule=flow.conv_rule)
_define(*CONV_TRANSPOSES, rule=flow.conv_transpose_rule)
_define(aten.batch_norm, rule=flow.batch_norm_rule)
# not avg_pool3d: it refuses a slice shorter than its kernel even where padding covers it
_define(
    aten.max_pool1d, aten.max_pool2d, aten.max_pool3d, aten.avg_pool1d, aten.avg_pool2d,
    rule=flow.pool_rule,
)  # fmt: skip
_define(
    aten.upsample_nearest2d, aten.upsample_bilinear2d, aten.upsample_nearest1d,
    aten.upsample_nearest3d, aten.upsample_linear1d, aten.upsample_trilinear3d,
    rule=flow.upsample_rule,
)  # fmt: skip
_define(aten.cat, rule=flow.cat_rule)
_define(aten.roll, rule=flow.roll_rule)
_define(aten.scaled_dot_product_attention, rule=flow.sdpa_rule)

# ------------------------------------------------------------------ in place, fresh storage
for _op, _inplace in (
    (aten.add.Tensor, aten.add_.Tensor),
    (aten.sub.Tensor, aten.sub_.Tensor),
    (aten.mul.Tensor, aten.mul_.Tensor),
    (aten.div.Tensor, aten.div_.Tensor),
    (aten.masked_fill.Scalar, aten.masked_fill_.Scalar),
    (aten.masked_fill.Tensor, aten.masked_fill_.Tensor),
    (aten.relu.default, aten.relu_.default),
    (aten.sigmoid.default, aten.sigmoid_.default),
    (aten.tanh.default, aten.tanh_.default),
    (aten.exp.default, aten.exp_.default),
    (aten.neg.default, aten.neg_.default),
    (aten.bitwise_not.default, aten.bitwise_not_.default),
    (aten.tril.default, aten.tril_.default),
    (aten.triu.default, aten.triu_.default),
):
    _define(_op, inplace=_inplace, fresh=True)
_define(aten.add.Tensor, aten.mul.Tensor, commutative=True)
_define(
    aten.matmul.default, aten.mm.default, aten.bmm.default, aten.addmm.default,
    aten.baddbmm.default, aten.linear.default, aten.softmax.int, aten._softmax.default,
    aten.layer_norm.default, aten.gelu.default, aten.silu.default, aten.ones.default,
    aten.zeros.default, aten.full.default, aten.where.self,
    fresh=True,
)  # fmt: skip

# ------------------------------------------------------------------ cheap to recompute
_define(
    aten.add, aten.sub, aten.mul, aten.neg, aten.eq, aten.ne, aten.le, aten.lt, aten.ge,
    aten.gt, aten.__and__, aten.__or__, aten.__xor__, aten.bitwise_and, aten.bitwise_or,
    aten.bitwise_xor, aten.bitwise_not, aten.logical_and, aten.logical_or, aten.logical_not,
    aten.where, aten.masked_fill, aten.tril, aten.triu, aten.to, aten._to_copy, aten.type_as,
    aten.expand, aten.unsqueeze, aten.view, aten.reshape, aten.alias, aten.clone, aten.slice,
    aten.abs, aten.log, aten.clamp, aten.clamp_min, aten.clamp_max, aten.floor, aten.ceil,
    aten.round, aten.sign, aten.remainder, aten.floor_divide, aten.pow, aten.div,
    aten.min.other, aten.max.other, aten.minimum, aten.maximum, aten.full_like, aten.permute,
    aten.contiguous, aten.embedding, aten.add_, aten.sub_, aten.mul_, aten.div_,
    aten.masked_fill_,
    cheap=True,
)  # fmt: skip

# ------------------------------------------------------------------ cost classes
_define(
    aten.linear.default, aten.matmul.default, aten.mm.default, aten.bmm.default,
    aten.addmm.default, aten.baddbmm.default, aten.einsum.default, aten.conv2d.default,
    aten.conv1d.default, aten.conv3d.default, aten.scaled_dot_product_attention.default,
    aten.conv_transpose1d.default, aten.conv_transpose2d.input, aten.conv_transpose3d.input,
    cost=CONTRACTION,
)  # fmt: skip
_define(
    aten.softmax.int, aten._softmax.default, aten.log_softmax.int, aten.exp.default,
    aten.gelu.default, aten.sigmoid.default, aten.tanh.default, aten.silu.default,
    cost=TRANSCENDENTAL,
)  # fmt: skip
_define(aten.linear.default, aten.addmm.default, aten.mm.default, gemm_rows=ALL_BUT_LAST)
_define(aten.matmul.default, aten.bmm.default, aten.baddbmm.default, gemm_rows=SECOND_TO_LAST)
_define(aten.matmul.default, aten.bmm.default, aten.mm.default, aten.baddbmm.default, batched=True)
_define(
    aten.linear, aten.embedding, aten.layer_norm, aten.conv2d, aten.group_norm, aten.conv1d,
    aten.conv3d, *CONV_TRANSPOSES,
    names_module=True,
)  # fmt: skip

# ------------------------------------------------------------------ fills (NOTE [Causal key truncation])
_define(aten.full.default, aten.full_like.default, fill=Fill(index=1))
_define(aten.new_full.default, fill=Fill(index=2))
_define(aten.ones.default, aten.ones_like.default, aten.new_ones.default, fill=Fill(value=1))
_define(aten.zeros.default, aten.zeros_like.default, aten.new_zeros.default, fill=Fill(value=0))

# ------------------------------------------------------------------ layers whose forward is one op
for _op, _layer in (
    (aten.linear.default, (("Linear",), 0)),
    (aten.embedding.default, (("Embedding",), 1)),
    (aten.layer_norm.default, (("LayerNorm",), 0)),
    (aten.group_norm.default, (("GroupNorm",), 0)),
    (aten.batch_norm.default, (("BatchNorm1d", "BatchNorm2d", "BatchNorm3d"), 0)),
    (aten.conv1d.default, (("Conv1d",), 0)),
    (aten.conv2d.default, (("Conv2d",), 0)),
    (aten.conv3d.default, (("Conv3d",), 0)),
    (aten.conv_transpose1d.default, (("ConvTranspose1d",), 0)),
    (aten.conv_transpose2d.input, (("ConvTranspose2d",), 0)),
    (aten.conv_transpose3d.input, (("ConvTranspose3d",), 0)),
    (aten.max_pool1d.default, (("MaxPool1d",), 0)),
    (aten.max_pool2d.default, (("MaxPool2d",), 0)),
    (aten.avg_pool1d.default, (("AvgPool1d",), 0)),
    (aten.avg_pool2d.default, (("AvgPool2d",), 0)),
    (aten.adaptive_avg_pool1d.default, (("AdaptiveAvgPool1d",), 0)),
    (aten.adaptive_avg_pool2d.default, (("AdaptiveAvgPool2d",), 0)),
    (aten.flatten.using_ints, (("Flatten",), 0)),
    (aten.gelu.default, (("GELU",), 0)),
    (aten.relu.default, (("ReLU",), 0)),
    (aten.relu_.default, (("ReLU",), 0)),
    (aten.hardtanh.default, (("ReLU6", "Hardtanh"), 0)),
    (aten.hardtanh_.default, (("ReLU6", "Hardtanh"), 0)),
    (aten.silu.default, (("SiLU",), 0)),
    (aten.silu_.default, (("SiLU",), 0)),
    (aten.hardswish.default, (("Hardswish",), 0)),
    (aten.hardswish_.default, (("Hardswish",), 0)),
    (aten.hardsigmoid.default, (("Hardsigmoid",), 0)),
    (aten.leaky_relu.default, (("LeakyReLU",), 0)),
    (aten.mish.default, (("Mish",), 0)),
    (aten.sigmoid.default, (("Sigmoid",), 0)),
    (aten.tanh.default, (("Tanh",), 0)),
    (aten.softmax.int, (("Softmax",), 0)),
):
    _define(_op, layer=_layer)

# ------------------------------------------------------------------ how ops are written
for _op, _written in (
    (aten.linear.default, _function("torch.nn.functional.linear")),
    (aten.embedding.default, _special("embedding")),
    (aten.layer_norm.default, _special("layer_norm")),
    (aten.softmax.int, _special("softmax")),
    (aten.matmul.default, _function("torch.matmul")),
    (aten.mm.default, _function("torch.mm")),
    (aten.bmm.default, _function("torch.bmm")),
    (aten.addmm.default, _function("torch.addmm")),
    (aten.add.Tensor, _binary("+")),
    (aten.sub.Tensor, _binary("-")),
    (aten.mul.Tensor, _binary("*")),
    (aten.div.Tensor, _binary("/")),
    (aten.view.default, _method("view", varargs=True)),
    (aten.reshape.default, _method("reshape", varargs=True)),
    (aten._unsafe_view.default, _method("reshape", varargs=True)),
    (aten.expand.default, _method("expand", varargs=True)),
    (aten.permute.default, _method("permute", varargs=True)),
    (aten.transpose.int, _method("transpose")),
    (aten.t.default, _method("t")),
    (aten.all.default, _method("all")),
    (aten.unsqueeze.default, _method("unsqueeze")),
    (aten.squeeze.dim, _method("squeeze")),
    (aten.squeeze.dims, _method("squeeze")),
    (aten.contiguous.default, _method("contiguous")),
    (aten.to.dtype, _method("to")),
    (aten.to.dtype_layout, _method("to")),
    (aten.to.device, _method("to")),
    (aten.type_as.default, _method("type_as")),
    (aten.clone.default, _method("clone")),
    (aten.split.Tensor, _function("torch.split")),
    (aten.split_with_sizes.default, _function("torch.split")),
    (aten.slice.Tensor, _special("slice")),
    (aten.select.int, _special("select")),
    (aten.masked_fill.Scalar, _method("masked_fill")),
    (aten.masked_fill.Tensor, _method("masked_fill")),
    (aten.where.self, _function("torch.where")),
    (aten.bitwise_not.default, Written("prefix", "~")),
    (aten.neg.default, Written("prefix", "-")),
    (aten.gelu.default, _special("gelu")),
    (aten.relu.default, _function("torch.relu")),
    (aten.silu.default, _function("torch.nn.functional.silu")),
    (aten.sigmoid.default, _function("torch.sigmoid")),
    (aten.tanh.default, _function("torch.tanh")),
    (aten.exp.default, _function("torch.exp")),
    (aten.cos.default, _function("torch.cos")),
    (aten.sin.default, _function("torch.sin")),
    (aten.upsample_nearest2d.vec, _special("upsample_nearest")),
    (aten.upsample_bilinear2d.vec, _special("upsample_bilinear")),
    (aten.rsqrt.default, _function("torch.rsqrt")),
    (aten.sqrt.default, _function("torch.sqrt")),
    (aten.tril.default, _function("torch.tril")),
    (aten.triu.default, _function("torch.triu")),
    (aten.dropout.default, _special("dropout")),
    (aten.arange.default, _function("torch.arange")),
    (aten.arange.start, _function("torch.arange")),
    (aten.arange.start_step, _function("torch.arange")),
    (aten.ones.default, _special("ones")),
    (aten.zeros.default, _special("zeros")),
    (aten.empty.memory_format, _special("empty")),
    (aten.full.default, _special("full")),
    (aten.sym_size.int, _special("sym_size")),
    (aten.flatten.using_ints, _method("flatten")),
    (aten.einsum.default, _special("einsum")),
    (aten.baddbmm.default, _function("torch.baddbmm")),
    (aten.cat.default, _function("torch.cat")),
    (aten.roll.default, _function("torch.roll")),
    (aten.conv2d.default, _function("torch.nn.functional.conv2d")),
    (aten.conv1d.default, _function("torch.nn.functional.conv1d")),
    (aten.conv3d.default, _function("torch.nn.functional.conv3d")),
    (aten.conv_transpose1d.default, _function("torch.nn.functional.conv_transpose1d")),
    (aten.conv_transpose2d.input, _function("torch.nn.functional.conv_transpose2d")),
    (aten.conv_transpose3d.input, _function("torch.nn.functional.conv_transpose3d")),
    (aten.group_norm.default, _special("group_norm")),
    (
        aten.scaled_dot_product_attention.default,
        _function("torch.nn.functional.scaled_dot_product_attention"),
    ),
    (aten.mean.dim, _function("torch.mean")),
    (aten.sum.dim_IntList, _function("torch.sum")),
    (aten.amax.default, _function("torch.amax")),
    (aten.unbind.int, _function("torch.unbind")),
    (aten.chunk.default, _function("torch.chunk")),
    (aten.pow.Tensor_Scalar, _binary("**")),
    (aten.log.default, _function("torch.log")),
    (aten.abs.default, _function("torch.abs")),
    (aten.eq.Scalar, _binary("==")),
    (aten.eq.Tensor, _binary("==")),
    (aten.ne.Scalar, _binary("!=")),
    (aten.lt.Scalar, _binary("<")),
    (aten.gt.Scalar, _binary(">")),
    (aten.le.Tensor, _binary("<=")),
    (aten.le.Scalar, _binary("<=")),
    (aten.lt.Tensor, _binary("<")),
    (aten.gt.Tensor, _binary(">")),
    (aten.ge.Tensor, _binary(">=")),
    (aten.ge.Scalar, _binary(">=")),
    (aten.ne.Tensor, _binary("!=")),
    (aten.__and__.Tensor, _binary("&")),
    (aten.__or__.Tensor, _binary("|")),
    (aten.__xor__.Tensor, _binary("^")),
    (aten.bitwise_and.Tensor, _binary("&")),
    (aten.bitwise_or.Tensor, _binary("|")),
    (aten.add_.Tensor, _method("add_")),
    (aten.sub_.Tensor, _method("sub_")),
    (aten.mul_.Tensor, _method("mul_")),
    (aten.div_.Tensor, _method("div_")),
    (aten.copy_.default, _method("copy_")),
    (aten.lift_fresh_copy.default, _method("clone")),
    (aten.detach_.default, _method("detach_")),
    (aten.masked_fill_.Scalar, _method("masked_fill_")),
    (aten.masked_fill_.Tensor, _method("masked_fill_")),
    (aten.relu_.default, _method("relu_")),
    (aten.sigmoid_.default, _method("sigmoid_")),
    (aten.tanh_.default, _method("tanh_")),
    (aten.exp_.default, _method("exp_")),
    (aten.neg_.default, _method("neg_")),
    (aten.bitwise_not_.default, _method("bitwise_not_")),
    (aten.tril_.default, _method("tril_")),
    (aten.triu_.default, _method("triu_")),
    (operator.getitem, _special("getitem")),
    (operator.add, _binary("+")),
    (operator.sub, _binary("-")),
    (operator.mul, _binary("*")),
    (operator.floordiv, _binary("//")),
    (operator.mod, _binary("%")),
):
    _define(_op, written=_written)


__all__ = [
    "ALL_BUT_LAST",
    "CONTRACTION",
    "Fill",
    "OpInfo",
    "PLAIN",
    "REGISTRY",
    "SECOND_TO_LAST",
    "TRANSCENDENTAL",
    "Written",
    "dim_rule",
    "info",
    "inplace_form",
]
