"""Every op the registry gives a dimension rule has a numeric rule case and an exact rendering.

NOTE [Op registry] in analysis/ops.py lists, per ATen overload, a dimension rule and the torch
call codegen writes. `tests/test_dimflow.py` checks the rules of the ops models use most; the
table here covers every other overload that has a rule, one case each:
- the rule, checked numerically on real tensors (`check_numeric`: slicing each output dim's
  group reproduces the sliced full result; dims the rule makes from a size or an offset
  argument are cut the same way), and the dims it leaves out (`check_mixed`);
- the rendering: `render_call`'s text, evaluated with each argument bound to its real value,
  gives exactly what the overload itself returns.
Ops a model writes are exported with torch.export; overloads export does not emit (scalar
forms, in-place forms, TorchScript forms) are built by hand. A form whose rule answers None
(a full reduction) is checked to say so. The coverage test fails for a rule added without a
case; EDGE_CASES keep argument forms the rules once got wrong, and RENDER_CASES check the
written forms of ops that have no rule.
"""

from __future__ import annotations

import contextlib
import operator
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import pytest
import torch
import torch.nn.functional as F

from analysis import dimflow as flow
from analysis import ops
from analysis.dimflow import DimRule, out_meta
from analysis.ir import Graph, Node, Ref, TensorMeta, evaluate
from analysis.ops import Written, dim_rule
from codegen.render import literal, render_call
from tests.test_dimflow import (
    CASES,
    Fn,
    bind,
    capture,
    check_chunk,
    check_mixed,
    check_numeric,
    find,
    sub_ranges,
)

aten = torch.ops.aten
X = (2, 5, 4)  # the main operand; a second operand is (5, 4): aligned from the right


class Fresh(dict):
    """Node values that hand out a copy of each tensor, so an in-place op run on one (the full
    result, then each chunk) never changes what the next run reads."""

    def __getitem__(self, key: str) -> Any:
        value = super().__getitem__(key)
        return value.clone() if isinstance(value, torch.Tensor) else value


@dataclass(frozen=True)
class OpCase:
    """One overload: how to build a graph that runs it, and the dims its rule leaves out."""

    #: the ATen overload checked
    op: Any
    #: exported cases: a function of the inputs that runs `op`; None: build the node by hand
    fn: Callable[..., Any] | None
    #: exported: the inputs; by hand: the op's positional arguments, tensors among them
    args: tuple[Any, ...]
    #: by hand: keyword arguments (the schema's keyword-only ones, as torch.export puts them)
    kwargs: dict[str, Any] = field(default_factory=dict)
    #: input (slot, dim) pairs in no group: mixed or broadcast dims
    mixed: frozenset[tuple[int, int]] = frozenset()
    #: output dims with an empty group
    uncut: frozenset[int] = frozenset()
    #: the rule answers None for this form: the op mixes every dim
    mixes_all: bool = False

    def build(self) -> tuple[Graph, dict[str, Any], Node]:
        if self.fn is not None:
            graph, env = capture(Fn(self.fn), self.args)
            return graph, Fresh(env), find(graph, self.op)
        return by_hand(self.op, self.args, self.kwargs)


def _meta(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return TensorMeta(tuple(value.shape), value.dtype, value.is_contiguous())
    if isinstance(value, int):
        return value
    return tuple(TensorMeta(tuple(v.shape), v.dtype) for v in value)


def _copy(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, (list, tuple)):
        return type(value)(_copy(v) for v in value)
    return value


def by_hand(
    op: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[Graph, dict[str, Any], Node]:
    """Build an IR graph by hand (`hand_graph` with any number of inputs): one input node per
    tensor in the arguments, and one node running `op`, its result's layout taken from a
    real run."""
    inputs: list[Node] = []
    env = Fresh()

    def ref(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            name = f"a{len(inputs)}"
            inputs.append(Node(name=name, kind="input", target=name, meta=_meta(value)))
            env[name] = value
            return Ref(name)
        if isinstance(value, (list, tuple)):
            return type(value)(ref(v) for v in value)
        return value

    node_args = tuple(ref(a) for a in args)
    node_kwargs = tuple((key, ref(v)) for key, v in kwargs.items())
    with torch.no_grad():
        result = op(*_copy(args), **_copy(kwargs))
    node = Node(
        name="out", kind="op", target=op, args=node_args, kwargs=node_kwargs, meta=_meta(result)
    )
    graph = Graph(
        nodes=(*inputs, node),
        outputs=(Ref("out"),),
        out_spec=None,
        inputs=tuple(n.name for n in inputs),
    )
    return graph, env, node


def _id(op: Any) -> str:
    if isinstance(op, torch._ops.OpOverload):
        return str(op).removeprefix("aten.")
    return op.__name__  # operator.add


def traced(op: Any, fn: Callable[..., Any], *inputs: Any, **kw: Any) -> Any:
    """A case exported from `fn(*inputs)`, checking its `op` node."""
    return pytest.param(OpCase(op, fn, inputs, **_sets(kw)), id=_id(op))


def direct(
    op: Any,
    *args: Any,
    mixed: Any = (),
    uncut: Any = (),
    mixes_all: bool = False,
    id: str | None = None,
    **kwargs: Any,
) -> Any:
    """A case built by hand: `op(*args, **kwargs)`, tensors in the arguments as inputs."""
    case = OpCase(op, None, args, kwargs, frozenset(mixed), frozenset(uncut), mixes_all)
    return pytest.param(case, id=id or _id(op))


def _sets(kw: dict[str, Any]) -> dict[str, Any]:
    return {k: frozenset(v) if k in ("mixed", "uncut") else v for k, v in kw.items()}


with torch.random.fork_rng():  # seeded inputs; the global RNG is left as it was
    torch.manual_seed(0)

    def f(*shape: int) -> torch.Tensor:
        return torch.randn(*(shape or X))

    def pos(*shape: int) -> torch.Tensor:  # the domain of log, sqrt, a divisor
        return torch.rand(*(shape or X)) + 0.5

    def mask(*shape: int) -> torch.Tensor:
        return torch.randn(*(shape or X)) > 0

    def ints(*shape: int, low: int = -9) -> torch.Tensor:  # low=1: a non-zero divisor
        return torch.randint(low, 10, shape or X)

    def special() -> torch.Tensor:  # nan, inf and -inf among ordinary values
        x = f()
        x[0, 1, 2], x[1, 3, 0], x[1, 4, 3] = float("nan"), float("inf"), float("-inf")
        return x

    Y = (5, 4)
    BIG = f() * 4  # spans the kinks of hardswish, hardsigmoid, floor, round

    OP_CASES = [
        # ---------------------------------------------------------------- elementwise, one input
        traced(aten.neg.default, torch.neg, f()),
        traced(aten.exp.default, torch.exp, f()),
        traced(aten.log.default, torch.log, pos()),
        traced(aten.tanh.default, torch.tanh, f()),
        traced(aten.sigmoid.default, torch.sigmoid, f()),
        traced(aten.silu.default, F.silu, f()),
        traced(aten.sqrt.default, torch.sqrt, pos()),
        traced(aten.rsqrt.default, torch.rsqrt, pos()),
        traced(aten.abs.default, torch.abs, f()),
        traced(aten.erf.default, torch.erf, f()),
        traced(aten.reciprocal.default, torch.reciprocal, pos()),
        traced(aten.square.default, torch.square, f()),
        traced(aten.sin.default, torch.sin, f()),
        traced(aten.cos.default, torch.cos, f()),
        traced(aten.expm1.default, torch.expm1, f()),
        traced(aten.exp2.default, torch.exp2, f()),
        traced(aten.log2.default, torch.log2, pos()),
        traced(aten.log10.default, torch.log10, pos()),
        traced(aten.floor.default, torch.floor, BIG),
        traced(aten.ceil.default, torch.ceil, BIG),
        traced(aten.round.default, torch.round, BIG),
        traced(aten.round.decimals, lambda x: torch.round(x, decimals=1), BIG),
        traced(aten.trunc.default, torch.trunc, BIG),
        traced(aten.sign.default, torch.sign, ints()),
        traced(aten.mish.default, F.mish, f()),
        traced(aten.hardswish.default, F.hardswish, BIG),
        traced(aten.hardsigmoid.default, F.hardsigmoid, BIG),
        traced(aten.atan.default, torch.atan, f()),
        traced(aten.logical_not.default, torch.logical_not, mask()),
        traced(aten.bitwise_not.default, torch.bitwise_not, ints()),
        traced(aten.isnan.default, torch.isnan, special()),
        traced(aten.isinf.default, torch.isinf, special()),
        traced(aten.nan_to_num.default, lambda x: torch.nan_to_num(x, 0.5, 9.0, -9.0), special()),
        traced(aten.hardtanh.default, lambda x: F.hardtanh(x, -0.5, 0.5), f()),
        traced(aten.leaky_relu.default, lambda x: F.leaky_relu(x, 0.2), f()),
        traced(aten.elu.default, lambda x: F.elu(x, 0.7), f()),
        traced(aten.softplus.default, lambda x: F.softplus(x, 2.0, 1.0), f()),
        traced(aten.clamp.default, lambda x: x.clamp(-0.5, 0.5), f()),
        traced(aten.clamp_min.default, lambda x: torch.clamp_min(x, 0.1), f()),
        traced(aten.clamp_max.default, lambda x: torch.clamp_max(x, 0.1), f()),
        traced(aten.clone.default, torch.clone, f()),
        traced(aten.detach.default, torch.detach, f()),
        direct(aten.alias.default, f()),
        direct(aten.contiguous.default, f(), memory_format=torch.contiguous_format),
        direct(aten._to_copy.default, f(), dtype=torch.float64),
        direct(aten.to.device, f(), torch.device("cpu"), torch.float64),
        direct(aten.to.dtype_layout, f(), dtype=torch.float64, layout=torch.strided),
        direct(aten.to.other, f(), ints(*Y)),
        direct(aten.to.prim_Device, f(), torch.device("cpu"), torch.float64),
        direct(aten.to.prim_dtype, f(), torch.float64),
        direct(aten.to.prim_other, f()),
        direct(aten.type_as.default, f(), ints(*Y)),
        # ---------------------------------------------------------------- two tensors
        traced(aten.sub.Tensor, torch.sub, f(), f(*Y)),
        traced(aten.div.Tensor_mode, lambda x, y: x.div(y, rounding_mode="floor"), f(), pos(*Y)),
        traced(aten.pow.Tensor_Tensor, torch.pow, pos(), f(*Y)),
        traced(aten.maximum.default, torch.maximum, f(), f(*Y)),
        traced(aten.minimum.default, torch.minimum, f(), f(*Y)),
        traced(aten.max.other, torch.max, f(), f(*Y)),
        traced(aten.eq.Tensor, torch.eq, ints(low=0), ints(*Y, low=0)),
        traced(aten.ne.Tensor, torch.ne, ints(low=0), ints(*Y, low=0)),
        traced(aten.lt.Tensor, torch.lt, ints(), ints(*Y)),
        traced(aten.le.Tensor, torch.le, ints(), ints(*Y)),
        traced(aten.gt.Tensor, torch.gt, ints(), ints(*Y)),
        traced(aten.ge.Tensor, torch.ge, ints(), ints(*Y)),
        traced(aten.logical_and.default, torch.logical_and, mask(), mask(*Y)),
        traced(aten.logical_or.default, torch.logical_or, mask(), mask(*Y)),
        traced(aten.logical_xor.default, torch.logical_xor, mask(), mask(*Y)),
        traced(aten.bitwise_and.Tensor, torch.bitwise_and, ints(), ints(*Y)),
        traced(aten.bitwise_or.Tensor, torch.bitwise_or, ints(), ints(*Y)),
        traced(aten.bitwise_xor.Tensor, torch.bitwise_xor, ints(), ints(*Y)),
        direct(aten.__and__.Tensor, mask(), mask(*Y)),
        direct(aten.__or__.Tensor, ints(), ints(*Y)),
        direct(aten.__xor__.Tensor, mask(), mask(*Y)),
        traced(aten.remainder.Tensor, torch.remainder, f(), pos(*Y)),
        traced(aten.fmod.Tensor, torch.fmod, f(), pos(*Y)),
        traced(aten.floor_divide.default, torch.floor_divide, ints(), ints(*Y, low=1)),
        traced(aten.clamp.Tensor, torch.clamp, f(), f(*Y) - 1, f(*Y) + 1),
        traced(aten.clamp_min.Tensor, torch.clamp_min, f(), f(*Y)),
        traced(aten.clamp_max.Tensor, torch.clamp_max, f(), f(*Y)),
        traced(aten.lerp.Scalar, lambda x, y: torch.lerp(x, y, 0.3), f(), f(*Y)),
        traced(aten.lerp.Tensor, torch.lerp, f(), f(*Y), torch.rand(4)),
        traced(aten.addcmul.default, lambda x, y, z: x.addcmul(y, z, value=0.5), f(), f(*Y), f()),
        traced(aten.addcdiv.default, lambda x, y, z: x.addcdiv(y, z, value=0.5), f(), f(*Y), pos()),
        traced(aten.masked_fill.Tensor, torch.masked_fill, f(), mask(*Y), torch.tensor(-1.0)),
        traced(aten.where.ScalarOther, lambda c, x: torch.where(c, x, 0.5), mask(*Y), f()),
        direct(aten.where.ScalarSelf, mask(*Y), 0.5, f()),
        direct(aten.where.Scalar, mask(), 0.5, -1.5),
        # ---------------------------------------------------------------- a tensor and a number
        direct(aten.add.Scalar, f(), 1.5, 2),
        direct(aten.sub.Scalar, f(), 1.5, 2),
        direct(aten.mul.Scalar, f(), 1.5),
        direct(aten.div.Scalar, f(), 1.5),
        direct(aten.div.Scalar_mode, f(), 0.7, rounding_mode="trunc"),
        direct(aten.pow.Tensor_Scalar, f(), 2),
        direct(aten.pow.Scalar, 2.0, f()),
        direct(aten.eq.Scalar, ints(), 3),
        direct(aten.ne.Scalar, ints(), 3),
        direct(aten.lt.Scalar, f(), 0.5),
        direct(aten.le.Scalar, ints(), 3),
        direct(aten.gt.Scalar, f(), 0.5),
        direct(aten.ge.Scalar, ints(), 3),
        direct(aten.bitwise_and.Scalar, ints(), 6),
        direct(aten.bitwise_or.Scalar, ints(), 6),
        direct(aten.bitwise_xor.Scalar, ints(), 6),
        direct(aten.bitwise_and.Scalar_Tensor, 6, ints()),
        direct(aten.bitwise_or.Scalar_Tensor, 6, ints()),
        direct(aten.bitwise_xor.Scalar_Tensor, 6, ints()),
        direct(aten.__and__.Scalar, ints(), 6),
        direct(aten.__or__.Scalar, ints(), 6),
        direct(aten.__xor__.Scalar, mask(), True),
        direct(aten.remainder.Scalar, f(), 0.7),
        direct(aten.remainder.Scalar_Tensor, 5.0, pos()),
        direct(aten.fmod.Scalar, f(), 0.7),
        direct(aten.floor_divide.Scalar, ints(), 4),
        # ---------------------------------------------------------------- in place
        direct(aten.add_.Tensor, f(), f(*Y), alpha=2),
        direct(aten.sub_.Tensor, f(), f(*Y)),
        direct(aten.mul_.Tensor, f(), f(*Y)),
        direct(aten.div_.Tensor, f(), pos(*Y)),
        direct(aten.div_.Tensor_mode, f(), pos(*Y), rounding_mode="floor"),
        direct(aten.add_.Scalar, f(), 1.5),
        direct(aten.sub_.Scalar, f(), 1.5, 2),
        direct(aten.mul_.Scalar, f(), 1.5),
        direct(aten.div_.Scalar, f(), 1.5),
        direct(aten.div_.Scalar_mode, f(), 0.7, rounding_mode="floor"),
        direct(aten.masked_fill_.Scalar, f(), mask(*Y), -1.0),
        direct(aten.masked_fill_.Tensor, f(), mask(*Y), torch.tensor(-1.0)),
        direct(aten.relu_.default, f()),
        direct(aten.tanh_.default, f()),
        direct(aten.sigmoid_.default, f()),
        direct(aten.silu_.default, f()),
        direct(aten.gelu_.default, f(), approximate="tanh"),
        direct(aten.copy_.default, f(), f(*Y)),
        direct(aten.copy_.Tensor, f(), f(*Y)),
        direct(aten.copy_.int, f(), 3),
        direct(aten.copy_.float, f(), 2.5),
        # ---------------------------------------------------------------- new tensors
        direct(aten.zeros_like.default, f()),
        direct(aten.ones_like.default, f(), dtype=torch.int64),
        direct(aten.empty_like.default, ints()),  # deterministic mode fills it
        direct(aten.ones.default, [5, 4]),
        direct(aten.zeros.default, [2, 5, 4], dtype=torch.int64),
        direct(aten.full.default, [5, 4], 1.5),
        direct(aten.empty.memory_format, [5, 4], dtype=torch.int64),
        direct(aten.native_dropout.default, f(), 0.5, False),
        direct(aten.feature_dropout.default, f(), 0.5, False),
        # ---------------------------------------------------------------- axes mixed
        direct(aten._softmax.default, f(), 1, False, mixed={(0, 1)}, uncut={1}),
        direct(aten.log_softmax.int, f(), -1, mixed={(0, 2)}, uncut={2}),
        direct(aten._log_softmax.default, f(), 1, False, mixed={(0, 1)}, uncut={1}),
        direct(aten.amin.default, f(), [1], mixed={(0, 1)}),
        direct(
            aten.std.correction, f(), [1], correction=0, keepdim=True, mixed={(0, 1)}, uncut={1}
        ),
        # full reductions and squeeze(): the rule answers "mixes every dim"
        direct(aten.sum.default, f(), mixes_all=True),
        direct(aten.mean.default, f(), dtype=torch.float64, mixes_all=True),
        direct(aten.var.default, f(), False, mixes_all=True),
        direct(aten.std.default, f(), mixes_all=True),
        direct(aten.squeeze.default, f(2, 1, 5), mixes_all=True),
        # ---------------------------------------------------------------- reshapes and splits
        direct(aten._unsafe_view.default, f(), [2, 5, 2, 2], uncut={3}),  # a split: its outer part
        direct(aten.flatten.using_ints, f(), 1, 2, mixed={(0, 2)}),  # merged: with the outer dim
        direct(aten.split.sizes, f(), [2, 3], 1, mixed={(0, 1)}, uncut={1}),
        direct(aten.split.default, f(), [2, 3], 1, mixed={(0, 1)}, uncut={1}),
        direct(aten.split_with_sizes.default, f(), [1, 3], -1, mixed={(0, 2)}, uncut={2}),
        direct(
            aten.cat.default,
            [f(), f(2, 3, 4)],
            1,
            mixed={(0, 1), (1, 1)},
            uncut={1},
        ),
        # ---------------------------------------------------------------- contractions
        direct(
            aten.baddbmm.default,
            f(2, 5, 6),
            f(),
            f(2, 4, 6),
            beta=0.5,
            alpha=2.0,
            mixed={(1, 2), (2, 1)},
        ),
        direct(aten.einsum.default, "bij,bjk->bik", [f(), f(2, 4, 6)], mixed={(0, 2), (1, 1)}),
        direct(
            aten.scaled_dot_product_attention.default,
            f(2, 3, 5, 4),
            f(2, 3, 6, 4),
            f(2, 3, 6, 4),
            f(5, 6),
            mixed={(0, 3), (1, 2), (1, 3), (2, 2), (2, 3), (3, 1)},
            uncut={3},
        ),
        # ---------------------------------------------------------------- convolutions
        direct(  # a 1x1 kernel: spatial dims move with the input's
            aten.conv2d.default, f(2, 3, 5, 4), f(6, 3, 1, 1), f(6), mixed={(0, 1), (1, 1)}
        ),
        direct(  # a 3-wide kernel padded to the same length: the length moves, with a halo
            aten.conv1d.default,
            f(2, 3, 7),
            f(6, 3, 3),
            f(6),
            [1],
            [1],
            mixed={(0, 1), (1, 1), (1, 2)},
        ),
        direct(  # dilated: a halo of 4 rows, the kernel's reach over 2
            aten.conv2d.default,
            f(1, 3, 9, 4),
            f(6, 3, 3, 1),
            f(6),
            [1, 1],
            [4, 0],
            [4, 1],
            mixed={(0, 1), (1, 1), (1, 2)},
        ),
        direct(  # frames and rows of a video both move, each with its halo
            aten.conv3d.default,
            f(1, 2, 5, 6, 3),
            f(4, 2, 3, 3, 3),
            f(4),
            [1, 1, 1],
            [1, 1, 1],
            mixed={(0, 1), (1, 1), (1, 2), (1, 3), (1, 4)},
        ),
        direct(
            aten.conv3d.padding,
            f(1, 2, 5, 4, 3),
            f(4, 2, 3, 1, 1),
            None,
            [1, 1, 1],
            "same",
            mixed={(0, 1), (1, 1), (1, 2)},
        ),
        direct(  # strided: output row r reads input rows 2r - 1 to 2r + 1
            aten.conv1d.default,
            f(2, 3, 9),
            f(6, 3, 3),
            f(6),
            [2],
            [1],
            mixed={(0, 1), (1, 1), (1, 2)},
            id="conv1d_strided",
        ),
        direct(  # strided by 3, dilated, padded less than its reach
            aten.conv2d.default,
            f(1, 2, 13, 4),
            f(3, 2, 3, 1),
            None,
            [3, 1],
            [1, 0],
            [2, 1],
            mixed={(0, 1), (1, 1), (1, 2)},
            id="conv2d_stride3",
        ),
        direct(  # the usual upsampler (4 wide, stride 2, padding 1): output rows 2r and 2r + 1
            # read input rows r - 1 to r + 1
            aten.conv_transpose2d.input,
            f(1, 3, 7, 5),
            f(3, 4, 4, 4),
            f(4),
            [2, 2],
            [1, 1],
            mixed={(0, 1), (1, 0), (1, 2), (1, 3)},
            id="conv_transpose2d_by2",
        ),
        direct(  # 2 wide, stride 2: each input row makes two output rows of its own
            aten.conv_transpose1d.default,
            f(2, 3, 9),
            f(3, 5, 2),
            None,
            [2],
            mixed={(0, 1), (1, 0), (1, 2)},
        ),
        direct(  # 3 wide with output padding 1 along the frames (twice as many); along the
            # rows and columns 3 wide with padding 1 and none: 2n - 1 rows, mixed
            aten.conv_transpose3d.input,
            f(1, 2, 5, 4, 3),
            f(2, 3, 3, 3, 3),
            f(3),
            [2, 2, 1],
            [1, 1, 1],
            [1, 0, 0],
            mixed={(0, 1), (0, 3), (1, 0), (1, 2), (1, 3), (1, 4)},
            uncut={3},
        ),
        direct(  # dilated by 2, 3 wide, stride 3: d(k - 1) + op + 1 - 2p = 3 with p = 1, op = 0
            aten.conv_transpose1d.default,
            f(1, 2, 8),
            f(2, 4, 3),
            f(4),
            [3],
            [1],
            [0],
            1,
            [2],
            mixed={(0, 1), (1, 0), (1, 2)},
            id="conv_transpose1d_dilated",
        ),
        direct(  # in groups: the channels are left whole
            aten.conv_transpose2d.input,
            f(1, 4, 6, 3),
            f(4, 3, 2, 1),
            None,
            [2, 1],
            [0, 0],
            [0, 0],
            2,
            mixed={(0, 1), (1, 0), (1, 1), (1, 2), (1, 3)},
            uncut={1},
            id="conv_transpose2d_groups",
        ),
        direct(  # ResNet's stem pool
            aten.max_pool2d.default,
            f(1, 3, 11, 6),
            [3, 3],
            [2, 2],
            [1, 1],
            id="max_pool2d_resnet",
        ),
        direct(  # dilated, with a partial last window
            aten.max_pool2d.default,
            f(1, 2, 12, 5),
            [2, 2],
            [2, 1],
            [0, 0],
            [2, 1],
            True,
            mixed={(0, 3)},  # 2 wide with stride 1: shorter than its input
            uncut={3},
            id="max_pool2d_ceil",
        ),
        direct(  # the border windows average their real elements only
            aten.avg_pool2d.default,
            f(1, 2, 9, 7),
            [3, 3],
            [2, 2],
            [1, 1],
            True,
            False,
            id="avg_pool2d_no_pad_count",
        ),
        direct(aten.avg_pool1d.default, f(2, 3, 10), [2], [2], id="avg_pool1d"),
        direct(aten.max_pool1d.default, f(2, 3, 10), [3], [1], [1], id="max_pool1d"),
        direct(aten.max_pool3d.default, f(1, 2, 5, 6, 4), [2, 2, 2], id="max_pool3d"),
        direct(  # 3 wide, stride 1: a halo of one frame
            aten.max_pool3d.default,
            f(1, 2, 5, 6, 4),
            [3, 3, 3],
            [1, 1, 1],
            [1, 1, 1],
            id="max_pool3d_halo",
        ),
        direct(  # unpadded: the output is shorter than the input
            aten.conv1d.default,
            f(2, 3, 8),
            f(6, 3, 3),
            f(6),
            [1],
            [0],
            mixed={(0, 1), (0, 2), (1, 1), (1, 2)},
            uncut={2},
            id="conv1d_valid",
        ),
        direct(  # in inference: per channel, with the running statistics
            aten.batch_norm.default,
            f(2, 3, 5, 4),
            f(3),
            f(3),
            f(3),
            pos(3),
            False,
            0.1,
            1e-5,
            False,
            mixed={(0, 1), (1, 0), (2, 0), (3, 0), (4, 0)},
            uncut={1},
        ),
        direct(
            aten.conv2d.padding,
            f(2, 3, 5, 4),
            f(6, 3, 1, 1),
            None,
            [1, 1],
            "valid",
            mixed={(0, 1), (1, 1)},
        ),
        direct(
            aten.conv1d.padding,
            f(2, 3, 5),
            f(6, 3, 3),
            f(6),
            [1],
            "same",
            mixed={(0, 1), (1, 1), (1, 2)},
        ),
        direct(
            aten.convolution.default,
            f(2, 4, 5, 4),
            f(6, 2, 1, 1),
            f(6),
            [1, 1],
            [0, 0],
            [1, 1],
            False,
            [0, 0],
            2,  # in groups: an output channel reads its group's input channels only
            mixed={(0, 1), (1, 0), (1, 1), (2, 0)},
            uncut={1},
        ),
        # ---------------------------------------------------------------- normalisations
        direct(
            aten.group_norm.default,
            f(2, 4, 3, 3),
            2,
            f(4),
            f(4),
            1e-5,
            False,
            mixed={(0, 1), (1, 0), (2, 0)},  # the rows move, with the whole input's statistics
            uncut={1},
        ),
        # the batch size is an argument (N) no resize reaches: a chunk of the batch fails
        direct(
            aten.native_group_norm.default,
            f(2, 4, 3, 3),
            f(4),
            f(4),
            2,
            4,
            9,
            2,
            1e-5,
            mixes_all=True,
        ),
        # ---------------------------------------------------------------- resampling
        direct(
            aten.upsample_nearest2d.default,
            f(2, 3, 4, 4),
            [8, 6],
            mixed={(0, 2), (0, 3)},
            uncut={2, 3},
        ),
        direct(  # by 2 along the rows: they move, each input row made twice; 1.5: mixed
            aten.upsample_nearest2d.vec,
            f(2, 3, 5, 4),
            None,
            [2.0, 1.5],
            mixed={(0, 3)},
            uncut={3},
        ),
        direct(  # to a size twice the input's: as by 2, a chunk runs by the factor
            aten.upsample_nearest2d.vec,
            f(2, 3, 5, 4),
            [10, 8],
            None,
            id="upsample_nearest2d_to_twice",
        ),
        direct(  # to a size 3 times the rows and 1 times the columns, a row of halo each side
            aten.upsample_bilinear2d.vec,
            f(2, 3, 5, 4),
            [15, 4],
            False,
            None,
            id="upsample_bilinear2d_to_thrice",
        ),
        direct(  # to a size that is no whole factor of the rows: every spatial dim mixed
            aten.upsample_nearest2d.vec,
            f(2, 3, 5, 4),
            [7, 8],
            None,
            mixed={(0, 2), (0, 3)},
            uncut={2, 3},
            id="upsample_nearest2d_to_7",
        ),
        direct(aten.upsample_nearest1d.vec, f(2, 3, 5), None, [3.0], id="upsample_nearest1d_by3"),
        direct(aten.upsample_nearest3d.vec, f(1, 2, 3, 4, 2), None, [2.0, 2.0, 1.0]),
        direct(  # to a given size: mixed
            aten.upsample_nearest3d.default,
            f(1, 2, 3, 4, 2),
            [6, 8, 2],
            mixed={(0, 2), (0, 3), (0, 4)},
            uncut={2, 3, 4},
        ),
        direct(
            aten.upsample_bilinear2d.default,
            f(2, 3, 4, 4),
            [8, 6],
            True,
            mixed={(0, 2), (0, 3)},
            uncut={2, 3},
        ),
        direct(  # by 2 along the rows, with a row of halo each side; 1.5: mixed
            aten.upsample_bilinear2d.vec,
            f(2, 3, 5, 4),
            None,
            False,
            [2.0, 1.5],
            mixed={(0, 3)},
            uncut={3},
        ),
        direct(  # corners aligned: each row's source depends on the whole length
            aten.upsample_bilinear2d.vec,
            f(2, 3, 4, 4),
            None,
            True,
            [2.0, 2.0],
            mixed={(0, 2), (0, 3)},
            uncut={2, 3},
            id="upsample_bilinear2d_aligned",
        ),
        direct(
            aten.upsample_linear1d.vec, f(2, 3, 5), None, False, [3.0], id="upsample_linear1d_by3"
        ),
        direct(aten.upsample_trilinear3d.vec, f(1, 2, 3, 4, 2), None, False, [2.0, 2.0, 1.0]),
        direct(  # to a given size: mixed
            aten.upsample_linear1d.default, f(2, 3, 5), [10], False, mixed={(0, 2)}, uncut={2}
        ),
        direct(
            aten.upsample_trilinear3d.default,
            f(1, 2, 3, 4, 2),
            [6, 8, 2],
            False,
            mixed={(0, 2), (0, 3), (0, 4)},
            uncut={2, 3, 4},
        ),
        direct(aten.upsample_nearest1d.default, f(2, 3, 5), [10], mixed={(0, 2)}, uncut={2}),
        direct(aten.upsample_nearest1d.vec, f(2, 3, 5), [7], None, mixed={(0, 2)}, uncut={2}),
    ]

    # forms the rules once got wrong: each case failed the numeric check (or its rule raised)
    EDGE_CASES = [
        direct(  # a 0-dim bias: the rule indexed its last dim
            aten.addmm.default,
            torch.tensor(1.5),
            f(5, 4),
            f(4, 6),
            mixed={(1, 1), (2, 0)},
            id="addmm_scalar_bias",
        ),
        # a vector weight drops the feature dim; a bias of one element is broadcast
        direct(aten.linear.default, f(), f(4), mixes_all=True, id="linear_vector_weight"),
        direct(aten.linear.default, f(), f(6, 4), f(1), mixes_all=True, id="linear_broadcast_bias"),
        # an unbatched input's first dim is its channels, not a batch
        direct(
            aten.conv1d.default, f(3, 5), f(6, 3, 1), f(6), mixes_all=True, id="conv1d_unbatched"
        ),
        direct(
            aten.conv2d.default, f(3, 5, 4), f(6, 3, 1, 1), mixes_all=True, id="conv2d_unbatched"
        ),
        # opt_einsum's contraction path, which torch.einsum does not take as an argument
        direct(
            aten.einsum.default,
            "ij,jk,kl->il",
            [f(3, 4), f(4, 5), f(5, 2)],
            path=[0, 1, 0, 1],
            mixed={(0, 1), (1, 0), (1, 1), (2, 0)},
            id="einsum_path",
        ),
        # a letter twice in one operand reads a diagonal
        direct(aten.einsum.default, "bii->bi", [f(2, 5, 5)], mixes_all=True, id="einsum_diagonal"),
        direct(  # grouped-query attention: a query head reads key head h // 2, not h
            aten.scaled_dot_product_attention.default,
            f(2, 4, 5, 3),
            f(2, 2, 6, 3),
            f(2, 2, 6, 3),
            enable_gqa=True,
            mixed={(0, 1), (0, 3), (1, 1), (1, 2), (1, 3), (2, 1), (2, 2), (2, 3)},
            uncut={1, 3},
            id="sdpa_grouped_query",
        ),
    ]

    # ops written in a form of their own that have no rule: their rendering is checked alone
    RENDER_CASES = [
        direct(aten.arange.default, 5, dtype=torch.int64),
        direct(aten.arange.start, 1, 7),
        direct(aten.arange.start_step, 1.0, 9.0, 2.5),
        direct(aten.sym_size.int, f(), 1),
        direct(aten.lift_fresh_copy.default, f()),
        direct(aten.detach_.default, f()),
        direct(aten.exp_.default, f()),
        direct(aten.neg_.default, f()),
        direct(aten.bitwise_not_.default, ints()),
        direct(aten.all.default, ints()),  # the run-time padding check
        direct(aten.tril_.default, f(2, 5, 5), 1),
        direct(aten.triu_.default, f(2, 5, 5), -1),
        *(direct(op, 7, -3) for op in (operator.add, operator.sub, operator.mul)),
        *(direct(op, -7, 3) for op in (operator.floordiv, operator.mod)),
    ]


@contextlib.contextmanager
def uninitialized_memory_filled() -> Iterator[None]:
    """Fill `empty` results (NaN, or an int type's largest value), so chunks compare equal."""
    enabled = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(enabled)


def check_made_dims(node: Node, graph: Graph, env: dict[str, Any], rule: DimRule) -> None:
    """Like `check_numeric`, for the output dims the rule makes with no input moving: from a
    size argument (a fill) or an offset (tril's diagonal)."""
    args, kwargs = bind(node, graph, env, lambda slot, value: value)
    with torch.no_grad():
        full = node.target(*args, **kwargs)
    out_shape = [evaluate(s, graph.hints) for s in out_meta(node).shape]
    for j, group in enumerate(rule.groups):
        if not group and rule.produces(j):
            for start, length in sub_ranges(out_shape[j]):
                check_chunk(node, graph, env, rule, full, j, start, length)


def check_rendering(node: Node, graph: Graph, env: dict[str, Any]) -> None:
    """Evaluate `render_call`'s text with each argument bound to its real value: it must give
    exactly what the overload returns."""
    scope: dict[str, Any] = {"torch": torch, "float": float, "device": torch.device("cpu")}
    scope.update({str(s.symbol): s.hint for s in graph.symbols})

    def arg(value: Any) -> str:
        if isinstance(value, Ref):
            scope[value.name] = env[value.name]  # a fresh copy: in-place ops write to it
            return value.name
        if isinstance(value, (list, tuple)):
            inner = ", ".join(arg(v) for v in value)
            if isinstance(value, list):
                return f"[{inner}]"
            return f"({inner}{',' if len(value) == 1 else ''})"
        return literal(value, sym=str, device="device")

    code = render_call(node, arg)
    args, kwargs = bind(node, graph, env, lambda slot, value: value)
    with torch.no_grad():
        want = node.target(*args, **kwargs)
        try:
            got = eval(code, scope)  # noqa: S307 - our own rendering, evaluated on test data
        except Exception as exc:
            raise AssertionError(f"{node.target} renders as {code!r}, which raises {exc!r}")
    assert_exact(got, want, f"{node.target} rendered as {code!r}")


def assert_exact(got: Any, want: Any, where: str) -> None:
    if isinstance(want, torch.Tensor):
        assert isinstance(got, torch.Tensor), f"{where}: gives {type(got).__name__}"
        torch.testing.assert_close(
            got, want, rtol=0, atol=0, equal_nan=True, msg=lambda m: f"{where}: {m}"
        )
    elif not isinstance(want, (list, tuple)):  # a size, an int
        assert type(got) is type(want) and got == want, f"{where}: gives {got!r}, not {want!r}"
    else:
        assert isinstance(got, (list, tuple)), f"{where}: gives {type(got).__name__}"
        assert len(got) == len(want), f"{where}: {len(got)} results, not {len(want)}"
        for g, w in zip(got, want):
            assert_exact(g, w, where)


@pytest.mark.parametrize("c", OP_CASES + EDGE_CASES)
def test_rule_and_rendering(c: OpCase) -> None:
    with uninitialized_memory_filled():
        graph, env, node = c.build()
        rule = dim_rule(node, graph)
        if c.mixes_all:
            assert rule is None, f"{node.target} should mix every dim here"
        else:
            assert rule is not None, f"{node.target} should have a rule"
            made = {j for j, group in enumerate(rule.groups) if not group and rule.produces(j)}
            check_mixed(node, graph, rule, set(c.mixed), set(c.uncut) | made)
            check_numeric(node, graph, env, rule)
            check_made_dims(node, graph, env, rule)
        check_rendering(node, graph, env)


@pytest.mark.parametrize("c", CASES)
def test_dimflow_cases_render(c: Any) -> None:
    """The ops `tests/test_dimflow.py` checks the rules of render exactly too."""
    graph, env = capture(c.build(), c.inputs, c.dynamic)
    node = find(graph, c.op, c.nth)
    check_rendering(node, graph, Fresh(env))


def uncovered() -> set[Any]:
    """Return the overloads with a rule that no numeric case here or in test_dimflow checks."""
    covered = {p.values[0].op for p in CASES} | {p.values[0].op for p in OP_CASES}
    return {op for op, entry in ops.REGISTRY.items() if entry.rule is not None} - covered


def test_every_op_with_a_rule_has_a_rendering_and_a_numeric_case() -> None:
    missing = uncovered()
    assert not missing, (
        f"{len(missing)} overloads have a dimension rule but no case in OP_CASES "
        f"(tests/test_registry.py) or CASES (tests/test_dimflow.py): "
        f"{', '.join(sorted(map(str, missing)))}"
    )


def test_the_coverage_check_catches_a_rule_without_a_case(monkeypatch) -> None:
    assert aten.cumsum.default not in ops.REGISTRY
    monkeypatch.setitem(ops.REGISTRY, aten.cumsum.default, ops.OpInfo(rule=flow.elementwise_rule))
    assert aten.cumsum.default in uncovered()
    with pytest.raises(AssertionError, match=r"aten\.cumsum\.default"):
        test_every_op_with_a_rule_has_a_rendering_and_a_numeric_case()


@pytest.mark.parametrize("c", RENDER_CASES)
def test_rendering_of_ops_without_a_rule(c: OpCase) -> None:
    graph, env, node = c.build()
    check_rendering(node, graph, env)


def test_every_written_op_has_a_rendering_case() -> None:
    checked = {p.values[0].op for p in (*CASES, *OP_CASES, *RENDER_CASES)}
    missing = {op for op, entry in ops.REGISTRY.items() if entry.written} - checked
    assert not missing, f"no rendering case for {', '.join(sorted(map(str, missing)))}"


def test_the_rendering_check_catches_a_wrong_written_form(monkeypatch) -> None:
    c = next(p.values[0] for p in OP_CASES if p.values[0].op == aten.exp.default)
    graph, env, node = c.build()
    wrong = ops.OpInfo(rule=flow.elementwise_rule, written=Written("function", "torch.expm1"))
    monkeypatch.setitem(ops.REGISTRY, aten.exp.default, wrong)
    with pytest.raises(AssertionError, match=r"torch\.expm1\(xs_0\)"):
        check_rendering(node, graph, env)
