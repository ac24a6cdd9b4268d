"""Causal masks: attention masks that hide every key after the query's own position.

NOTE [Causal key truncation]
A chunk loop over the queries of `scaled_dot_product_attention` hands every chunk all the keys.
When the mask is causal, the rows `start:stop` of a chunk cannot see any key at or after
`stop + k` (k is the mask's diagonal, 0 for the usual causal mask), so the loop passes only
`keys[:, :, :stop + k]`, `values[:, :, :stop + k]` and the mask's columns up to there. Those
keys carried weight exp(-inf) = 0, so every row attends exactly the keys it did before; a row
with every key hidden stays so. On average a chunk does half the work of the full call, which is
the saving `is_causal=True` brings to the fused kernels, and an explicit mask never gets.

The proof is an abstract interpretation of the ops that build the mask, over the last two dims
(rows = queries, cols = keys). It knows:
- index values: `arange(n) + c`, moved onto an axis by `unsqueeze`: value = position + c;
- comparisons of positions with a number: `arange(n) >= 0` is True everywhere;
- comparisons of a column index with a row index (`kv_idx <= q_idx`), `tril(diagonal=k)`:
  hidden (False or 0) above the diagonal k; `triu` of a constant (`torch.full((n, n), -inf)
  .triu(1)`, nn.Transformer's square subsequent mask): that constant above its diagonal;
- `&` with anything (still hidden), `|` of two hidden masks, `~` (hidden becomes True, and
  back), `masked_fill(-inf)` and `where(mask, x, -inf)` under such a mask (hidden becomes -inf),
  dtype conversions to bool, and views that keep the last two dims.
Anything else proves nothing, and the loop keeps every key.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import torch

from analysis.dimflow import same_size, out_meta, schema_arg, tensor_inputs
from analysis.ir import Graph, Node, Ref, storage_roots
from analysis.ops import dim_rule, info
from analysis.plan import Region

aten = torch.ops.aten


@dataclass(frozen=True, slots=True)
class _Index:
    """An integer tensor whose value is its position along `axis` (counted from the end)
    plus `offset`."""

    axis: int
    offset: int


@dataclass(frozen=True, slots=True)
class _Above:
    """A tensor equal to `value` at every element whose column exceeds its row plus `diagonal`
    (columns: the last dim, rows: the one before)."""

    diagonal: int
    value: Any  # False, True, 0 or -inf


@dataclass(frozen=True, slots=True)
class _Const:
    """A tensor with one value everywhere (`torch.full`, `ones`, `zeros` and their `_like`)."""

    value: Any


@dataclass(frozen=True, slots=True)
class _Band:
    """A bool mask that is True exactly where `lower <= column - row <= upper` (None: no bound
    on that side): the causal mask is `_Band(None, 0)`, a sliding window of w keys
    `_Band(1 - w, 0)`. Exact, so it can stand for `is_causal` (NOTE [Attention as eager runs
    it] in `analysis/fastpath.py`); it hides every key above `upper` too."""

    lower: int | None
    upper: int | None


@dataclass(frozen=True, slots=True)
class _NonZero:
    """A tensor nonzero everywhere: a padding mask assumed to pad nothing, which the generated
    module checks at run time (NOTE [Padding checked at run time] in `analysis/fastpath.py`)."""


#: facts of every element alike, which views, slices and gathers keep
_UNIFORM = (_Const, _NonZero)

_Fact = Any  # _Index | _Above | _Band | _Const | _NonZero | None

#: the graph memo key naming the input assumed nonzero everywhere (`band_if_nonzero`)
_ASSUMED = "causal_assumed_nonzero"


def hidden_above(graph: Graph, name: str) -> int | None:
    """Return the diagonal k above which the mask `name` hides every key (False in a bool mask,
    -inf in an additive one), or None when that is not provable (NOTE [Causal key truncation])."""
    fact = _above(_fact(graph, name))
    if fact is None:
        return None
    dtype = out_meta(graph[name]).dtype
    if dtype == torch.bool:
        return fact.diagonal if fact.value is False else None
    return fact.diagonal if fact.value == -math.inf else None


def band(graph: Graph, name: str) -> tuple[int | None, int | None] | None:
    """Return (lower, upper) when the bool mask `name` is exactly True where `lower <= column -
    row <= upper`, over its last two dims (NOTE [Causal key truncation]), else None."""
    fact = _fact(graph, name)
    if isinstance(fact, _Band) and out_meta(graph[name]).dtype == torch.bool:
        return fact.lower, fact.upper
    return None


def band_if_nonzero(graph: Graph, name: str, assumed: str) -> tuple[int | None, int | None] | None:
    """`band` of the mask `name` if the input `assumed` is nonzero everywhere (an attention
    mask that pads nothing)."""
    return band(replace(graph, memo={_ASSUMED: assumed}), name)


def hides_nothing(graph: Graph, name: str) -> bool:
    """Whether the attention mask `name` hides no key: a bool mask True everywhere, or an
    additive one zero everywhere; SDPA with it equals SDPA without it."""
    fact = _fact(graph, name)
    if not isinstance(fact, _Const):
        return False
    if out_meta(graph[name]).dtype == torch.bool:
        return fact.value is True
    return fact.value == 0 and type(fact.value) is not bool


def exact(graph: Graph, name: str) -> Any:
    """The value's fact when it says every element (positions, a constant, a band), so two
    values of one shape and dtype with equal facts are equal; else None."""
    fact = _fact(graph, name)
    return fact if isinstance(fact, (_Index, _Const, _Band)) else None


def _above(fact: _Fact) -> _Above | None:
    """What a fact holds above a diagonal: an `_Above`; a band's keys past its upper bound are
    False, and a band with only a lower bound L is True above L - 1."""
    if isinstance(fact, _Band):
        if fact.upper is not None:
            return _Above(fact.upper, False)
        return _Above(fact.lower - 1, True) if fact.lower is not None else None
    return fact if isinstance(fact, _Above) else None


@dataclass(frozen=True, slots=True)
class KeyCut:
    """How one loop node skips the keys its chunk cannot see."""

    #: the mask's diagonal: the chunk `start:stop` sees keys up to `stop + diagonal`
    diagonal: int
    #: (operand slot, dim) of each operand read whole from outside the chain, cut to those keys
    slots: tuple[tuple[int, int], ...]
    #: a sliding window's lower bound (<= 0): the chunk sees no key before `start + lower`
    lower: int | None = None


#: products whose output's last dim is the keys, when their second operand is the keys
_PRODUCTS = {aten.matmul.default, aten.bmm.default}
#: elementwise ops the scores may pass through on their way to the softmax
_SCORE_OPS = {
    aten.div.Tensor, aten.div.Scalar, aten.mul.Tensor, aten.mul.Scalar, aten.add.Tensor,
    aten.sub.Tensor, aten.masked_fill.Scalar, aten.masked_fill.Tensor, aten.where.self,
    aten.div_.Tensor, aten.mul_.Tensor, aten.add_.Tensor, aten.masked_fill_.Scalar,
}  # fmt: skip
#: ops the probabilities may pass through on their way to the product with the values
_PROBABILITY_OPS = {aten.to.dtype, aten._to_copy.default, aten.type_as.default, aten.clone.default}
_SOFTMAX = {aten._softmax.default, aten.softmax.int}


def truncated_keys(graph: Graph, region: Region) -> dict[str, KeyCut]:
    """Return the loop nodes that may skip the keys after the chunk's last query (NOTE [Causal
    key truncation]): fused attention with a causal mask, and the chain of an attention written
    out (scores, causal masking, softmax, product with the values)."""
    found: dict[str, KeyCut] = {}
    loop = region.loop_dims
    for name, dim in region.loop:
        node = graph[name]
        if node.target is aten.scaled_dot_product_attention.default:
            cut = _fused(graph, node, dim)
            if cut is not None:
                found[name] = cut
        elif node.target in _SOFTMAX:
            found.update(_written_out(graph, node, loop))
    return found


def causal_rows(node: Node) -> bool:
    """Whether an SDPA call masks with `is_causal` (and no mask), so a loop over its queries
    passes each chunk its own causal mask (`CausalRows`) in place of the flag."""
    if node.target is not aten.scaled_dot_product_attention.default:
        return False
    mask, causal = schema_arg(node, "attn_mask"), schema_arg(node, "is_causal", False)
    return mask is None and causal is True


def _fused(graph: Graph, node: Node, dim: int) -> KeyCut | None:
    meta = out_meta(node)
    if dim == meta.rank - 2 and causal_rows(node):  # the chunk's own mask hides the rest
        ranks = [graph[arg.name].tensor.rank for arg in node.args[1:3]]
        return KeyCut(0, ((1, ranks[0] - 2), (2, ranks[1] - 2)))
    if dim != meta.rank - 2 or len(node.args) < 4 or not isinstance(node.args[3], Ref):
        return None
    mask = graph[node.args[3].name]
    keys = graph[node.args[1].name].tensor.shape[-2]
    if not same_size(mask.tensor.shape[-1], keys, graph) or not same_size(
        mask.tensor.shape[-2], meta.shape[-2], graph
    ):
        return None
    diagonal = hidden_above(graph, mask.name)
    if diagonal is None or diagonal < 0:
        return None
    ranks = [graph[arg.name].tensor.rank for arg in node.args[:4]]
    exact = band(graph, mask.name)
    lower = exact[0] if exact is not None and exact[0] is not None and exact[0] <= 0 else None
    return KeyCut(diagonal, ((1, ranks[1] - 2), (2, ranks[2] - 2), (3, ranks[3] - 1)), lower)


def _written_out(graph: Graph, softmax: Node, loop: dict[str, int]) -> dict[str, KeyCut]:
    """Cut the keys through `softmax(masked(q @ k^T)) @ v` inside a loop over the queries: the
    softmax's input is -inf above the diagonal, so its output is 0 there, and the product with
    the values adds nothing from those keys."""
    rank = out_meta(softmax).rank
    rows = rank - 2
    if rank < 2 or loop.get(softmax.name) != rows or softmax.args[1] not in (-1, rank - 1):
        return {}
    source = softmax.args[0]
    if not isinstance(source, Ref) or out_meta(graph[source.name]).dtype == torch.bool:
        return {}
    diagonal = hidden_above(graph, source.name)
    if diagonal is None or diagonal < 0:
        return {}
    keys = out_meta(softmax).shape[-1]
    chain = [softmax.name]  # back from the softmax to the product that made the scores
    current: str | None = source.name
    while True:
        if current is None or loop.get(current) != rows or graph.users(current) != (chain[-1],):
            return {}
        node = graph[current]
        if not same_size(out_meta(node).shape[-1], keys, graph):
            return {}
        chain.append(current)
        if node.target in _PRODUCTS:
            break
        if node.target not in _SCORE_OPS:
            return {}
        current = _scores_operand(graph, node, loop)
    current = softmax.name  # forward to the product with the values
    while True:
        users = graph.users(current)
        if len(users) != 1 or loop.get(users[0]) != rows:
            return {}
        user = graph[users[0]]
        if user.target in _PROBABILITY_OPS:
            chain.append(user.name)
            current = user.name
            continue
        if user.target not in _PRODUCTS or _ref(user.args[0]) != current:
            return {}
        consumer = user
        break
    values = _ref(consumer.args[1])
    if values is None or values in loop:
        return {}
    found = {consumer.name: KeyCut(diagonal, ((1, out_meta(graph[values]).rank - 2),))}
    inside = set(chain)
    for name in chain:
        node = graph[name]
        rule = dim_rule(node, graph)
        slots = []
        for slot, ref in enumerate(tensor_inputs(node, graph)):
            if ref in inside:
                continue
            if node.target in _PRODUCTS:  # q @ k^T: the keys are the second operand's columns
                if slot == 1:
                    if ref in loop:
                        return {}
                    slots.append((slot, out_meta(graph[ref]).rank - 1))
                continue
            axis = rule.input_dim(rank - 1, slot) if rule is not None else None
            if axis is not None and same_size(out_meta(graph[ref]).shape[axis], keys, graph):
                slots.append((slot, axis))  # a mask or bias with a column per key
        found[name] = KeyCut(diagonal, tuple(slots))
    return found


def _scores_operand(graph: Graph, node: Node, loop: dict[str, int]) -> str | None:
    """Return which operand of an elementwise op on the scores carries them: the first float
    loop value of the result's shape (`masked_fill(scores, ...)`, `bias + scores`)."""
    candidates = node.args[1:3] if node.target is aten.where.self else node.args[:2]
    meta = out_meta(node)
    for arg in candidates:
        name = _ref(arg)
        if name is None or name not in loop:
            continue
        other = out_meta(graph[name])
        if (
            other.dtype.is_floating_point
            and other.rank == meta.rank
            and all(same_size(x, y, graph) for x, y in zip(other.shape, meta.shape))
        ):
            return name
    return None


def _ref(value: Any) -> str | None:
    return value.name if isinstance(value, Ref) else None


def _fact(graph: Graph, name: str) -> _Fact:
    if "causal_facts" not in graph.memo:  # one pass in execution order: operands come first
        roots, _ = storage_roots(graph)
        # storage something writes in place (`mask[:, :64] = True` through a view): what
        # holds for its first value may not hold when it is read, so nothing is claimed
        written = {roots.get(n.mutates, n.mutates) for n in graph.nodes if n.mutates}
        facts: dict[str, _Fact] = {}
        graph.memo["causal_facts"] = facts
        for node in graph.nodes:
            unsafe = roots.get(node.name, node.name) in written
            facts[node.name] = None if unsafe else _derive(node, graph)
    return graph.memo["causal_facts"].get(name)


def _arg(graph: Graph, value: Any) -> _Fact:
    return _fact(graph, value.name) if isinstance(value, Ref) else None


def _derive(node: Node, graph: Graph) -> _Fact:
    if node.kind == "input" and graph.memo.get(_ASSUMED) == node.name:
        return _NonZero()
    if node.kind != "op" or out_meta(node) is None:
        return None
    packet = getattr(node.target, "overloadpacket", None)
    args = node.args
    meta = out_meta(node)
    if packet is aten.arange:
        return _arange(node)
    if packet in (aten.add, aten.sub) and len(args) >= 2 and isinstance(args[1], int):
        fact = _arg(graph, args[0])
        step = args[1] if packet is aten.add else -args[1]
        if node.kwarg("alpha", 1) != 1:
            return None
        if isinstance(fact, _Index):
            return _Index(fact.axis, fact.offset + step)
        if isinstance(fact, _Const) and type(fact.value) is int:
            return _Const(fact.value + step)
        return None
    if packet is aten.unsqueeze:
        return _unsqueezed(_arg(graph, args[0]), args[1], meta.rank)
    if packet in (aten.expand, aten.view, aten.reshape, aten.alias, aten.clone):
        return _kept_trailing(graph, node)
    if packet is aten.slice:
        return _sliced(graph, node)
    if packet in (aten.to, aten._to_copy):
        return _converted(_arg(graph, args[0]), meta.dtype)
    if packet in (aten.le, aten.ge, aten.lt, aten.gt) and len(args) == 2:
        return _compared(packet, _arg(graph, args[0]), _value(graph, args[1]))
    if packet in (aten.eq, aten.ne) and len(args) == 2:
        return _equal(packet, _arg(graph, args[0]), _value(graph, args[1]))
    if packet is aten.diff:
        return _differences(graph, node)
    if packet is aten.cumsum:
        fact = _arg(graph, args[0])
        if isinstance(fact, _Const) and fact.value in (0, False) and meta.dtype in _EXACT:
            return _Const(0)  # running sums of zeros
        return None
    if packet is aten.index and node.target is aten.index.Tensor:
        return _gathered(graph, node)
    if info(node.target).fill is not None:
        return _filled(node, meta.dtype)
    if packet in (aten.tril,):
        diagonal = args[1] if len(args) > 1 else node.kwarg("diagonal", 0)
        if not isinstance(diagonal, int):
            return None  # a diagonal that depends on the input's sizes
        if _arg(graph, args[0]) == _Const(True) and meta.dtype == torch.bool:
            return _Band(None, diagonal)  # ones(n, n, dtype=bool).tril(d)
        return _Above(diagonal, False if meta.dtype == torch.bool else 0)
    if packet in (aten.triu,):  # keeps the elements at or above its diagonal d
        fact = _arg(graph, args[0])
        diagonal = args[1] if len(args) > 1 else node.kwarg("diagonal", 0)
        if not isinstance(fact, _Const) or not isinstance(diagonal, int):
            return None
        if fact.value is True and meta.dtype == torch.bool:
            return _Band(diagonal, None)
        return _Above(diagonal - 1, fact.value)
    if packet in (aten.__and__, aten.bitwise_and, aten.logical_and) and meta.dtype == torch.bool:
        return _both(*(_full_width(graph, node, arg) for arg in args[:2]))
    if packet in (aten.__or__, aten.bitwise_or, aten.logical_or) and meta.dtype == torch.bool:
        return _either(*(_full_width(graph, node, arg) for arg in args[:2]))
    if packet in (aten.bitwise_not, aten.logical_not) and meta.dtype == torch.bool:
        fact = _arg(graph, args[0])
        if isinstance(fact, _Const):
            return _Const(not fact.value)
        if isinstance(fact, _Band) and (fact.lower is None) != (fact.upper is None):
            if fact.lower is None:  # not (j - i <= u) is j - i >= u + 1
                return _Band(fact.upper + 1, None)
            return _Band(None, fact.lower - 1)
        fact = _above(fact)
        if fact is not None and isinstance(fact.value, bool):
            return _Above(fact.diagonal, not fact.value)
        return None
    if packet is aten.masked_fill and len(args) == 3 and args[2] == -math.inf:
        fact = _above(_full_width(graph, node, args[1]))
        if fact is not None and fact.value is True:
            return _Above(fact.diagonal, -math.inf)
        return None
    if packet is aten.where and len(args) == 3:
        fact = _above(_full_width(graph, node, args[0]))
        if fact is not None and isinstance(fact.value, bool):
            chosen = args[1] if fact.value else args[2]
            if chosen == -math.inf:
                return _Above(fact.diagonal, -math.inf)
        return None
    return None


def _value(graph: Graph, value: Any) -> _Fact:
    """A fact, or a plain number as the constant it is."""
    if isinstance(value, (bool, int)):
        return _Const(value)
    return _arg(graph, value)


def _both(left: _Fact, right: _Fact) -> _Fact:
    """`a & b`: bands intersect; True changes nothing and False hides all; else what each
    hides above a diagonal, the lower diagonal."""
    for one, other in ((left, right), (right, left)):
        if isinstance(one, _Const):
            if one.value is True:
                return other if isinstance(other, (_Band, _Above, _Const)) else None
            if one.value is False:
                return _Const(False)
    if isinstance(left, _Band) and isinstance(right, _Band):
        lower = [b for b in (left.lower, right.lower) if b is not None]
        upper = [b for b in (left.upper, right.upper) if b is not None]
        return _Band(max(lower) if lower else None, min(upper) if upper else None)
    hidden = [
        f.diagonal for f in (_above(left), _above(right)) if f is not None and f.value is False
    ]
    return _Above(min(hidden), False) if hidden else None


def _either(left: _Fact, right: _Fact) -> _Fact:
    """`a | b`: False changes nothing and True shows all; two masks hidden above diagonals
    hide what is above the higher one."""
    for one, other in ((left, right), (right, left)):
        if isinstance(one, _Const):
            if one.value is False:
                return other if isinstance(other, (_Band, _Above, _Const)) else None
            if one.value is True:
                return _Const(True)
    facts = [_above(left), _above(right)]
    if all(f is not None and f.value is False for f in facts):
        return _Above(max(f.diagonal for f in facts), False)
    return None


def _equal(packet: Any, left: _Fact, right: _Fact) -> _Fact:
    """`a == b` and `a != b` of two constants."""
    if isinstance(left, _Const) and isinstance(right, _Const):
        same = left.value == right.value
        return _Const(same if packet is aten.eq else not same)
    return None


def _sliced(graph: Graph, node: Node) -> _Fact:
    """`x[..., a:b]` of an index along that dim starts its positions at a; along another dim
    it changes nothing; a constant stays one."""
    fact = _arg(graph, node.args[0])
    if isinstance(fact, _UNIFORM):
        return fact
    if not isinstance(fact, _Index):
        return None
    rank = out_meta(node).rank
    dim = node.args[1] if len(node.args) > 1 else 0
    start = node.args[2] if len(node.args) > 2 else 0
    step = node.args[4] if len(node.args) > 4 else 1
    if not isinstance(dim, int) or step != 1:
        return None
    if (dim - rank if dim >= 0 else dim) != fact.axis:
        return fact
    if start is None:
        start = 0
    if not isinstance(start, int) or start < 0:
        return None
    return _Index(fact.axis, fact.offset + start)


def _differences(graph: Graph, node: Node) -> _Fact:
    """`diff` of positions along their own dim is 1 everywhere, given nothing or a prepended
    value one below the first position (`torch.diff(p, prepend=p[..., :1] - 1)`, how
    transformers finds packed sequences in position ids)."""
    fact = _arg(graph, node.args[0])
    rank = out_meta(node).rank
    n = node.args[1] if len(node.args) > 1 else node.kwarg("n", 1)
    dim = node.args[2] if len(node.args) > 2 else node.kwarg("dim", -1)
    prepend = node.args[3] if len(node.args) > 3 else node.kwarg("prepend")
    append = node.args[4] if len(node.args) > 4 else node.kwarg("append")
    if not isinstance(fact, _Index) or n != 1 or append is not None or not isinstance(dim, int):
        return None
    if (dim - rank if dim >= 0 else dim) != fact.axis:
        return None
    if prepend is not None:
        before = _arg(graph, prepend)
        length = out_meta(graph[prepend.name]).shape[dim] if isinstance(prepend, Ref) else None
        one_position = isinstance(before, _Index) and before.axis == fact.axis and length == 1
        if not (one_position and before.offset == fact.offset - 1):
            return None
    return _Const(1)


def _gathered(graph: Graph, node: Node) -> _Fact:
    """`x[i0, i1, ...]` (advanced indexing) of a constant is the constant; of positions along
    one of the indexed dims, it is the index used on that dim, plus the positions' offset."""
    fact = _arg(graph, node.args[0])
    indices = node.args[1]
    if isinstance(fact, _UNIFORM):
        return fact
    source = out_meta(graph[node.args[0].name]) if isinstance(node.args[0], Ref) else None
    if not isinstance(fact, _Index) or source is None or not isinstance(indices, (list, tuple)):
        return None
    if len(indices) != source.rank or any(not isinstance(i, Ref) for i in indices):
        return None  # every dim indexed by a tensor: the result's shape is theirs
    index = indices[source.rank + fact.axis]
    used = _arg(graph, index)
    if not isinstance(used, _Index) or out_meta(graph[index.name]).dtype not in _EXACT:
        return None
    return _Index(used.axis, used.offset + fact.offset)


def _filled(node: Node, dtype: torch.dtype) -> _Fact:
    where = info(node.target).fill
    value = where.value if where.index is None else node.args[where.index]
    if not isinstance(value, (bool, int, float)):
        return None
    if dtype == torch.bool:
        return _Const(bool(value))
    return _Const(float(value) if dtype.is_floating_point else int(value))


#: index dtypes that hold every position exactly
_EXACT = {torch.int32, torch.int64}


def _arange(node: Node) -> _Fact:
    args = node.args
    if out_meta(node).dtype not in _EXACT:
        return None  # bfloat16 positions round, int8 ones wrap
    if node.target is aten.arange.default:
        return _Index(-1, 0)
    if node.target is aten.arange.start and isinstance(args[0], int):
        return _Index(-1, args[0])
    if node.target is aten.arange.start_step and isinstance(args[0], int) and args[2] == 1:
        return _Index(-1, args[0])
    return None


def _unsqueezed(fact: _Fact, dim: int, rank: int) -> _Fact:
    """Return the fact after a new dim at `dim` of a result of rank `rank`."""
    new = dim - rank if dim >= 0 else dim  # counted from the end
    if isinstance(fact, _Index):
        return _Index(fact.axis - 1 if new >= fact.axis else fact.axis, fact.offset)
    if isinstance(fact, (_Above, _Band)) and new < -2:
        return fact
    return fact if isinstance(fact, _UNIFORM) else None


def _kept_trailing(graph: Graph, node: Node) -> _Fact:
    """Views and broadcasts keep a constant; they keep a mask's fact when they leave its last
    two dims as they were, and positions when they leave every dim from theirs on."""
    source = node.args[0]
    fact = _arg(graph, source)
    if isinstance(fact, _UNIFORM):
        return fact
    before = out_meta(graph[source.name]).shape if isinstance(source, Ref) else ()
    after = out_meta(node).shape
    kept = {
        k
        for k in range(1, min(len(before), len(after)) + 1)
        if all(same_size(a, b, graph) for a, b in zip(before[-k:], after[-k:]))
    }
    if isinstance(fact, (_Above, _Band)):
        return fact if 2 in kept else None
    if isinstance(fact, _Index):
        if -fact.axis in kept:
            return fact
        return _moved(graph, node, fact, before, after)
    return None


def _moved(graph: Graph, node: Node, fact: _Index, before: Any, after: Any) -> _Fact:
    """A reshape that only adds or drops dims of size 1 (`idx.view(n, 1)`, how vmap's batched
    comparisons are lowered) moves positions to the same dim among the others."""
    if node.target not in (aten.view.default, aten.reshape.default, aten._unsafe_view.default):
        return None
    real = lambda shape: [(i, s) for i, s in enumerate(shape) if s != 1]  # noqa: E731
    old, new = real(before), real(after)
    if len(old) != len(new) or not all(same_size(a, b, graph) for (_, a), (_, b) in zip(old, new)):
        return None
    at = len(before) + fact.axis
    for (i, _), (j, _) in zip(old, new):
        if i == at:
            return _Index(j - len(after), fact.offset)
    return None


def _converted(fact: _Fact, dtype: torch.dtype) -> _Fact:
    if isinstance(fact, _Index) and dtype in _EXACT:
        return fact
    if isinstance(fact, _Band) and dtype == torch.bool:
        return fact
    if isinstance(fact, _Above) and dtype == torch.bool:
        return _Above(fact.diagonal, bool(fact.value))
    if isinstance(fact, _Const) and dtype == torch.bool:
        return _Const(bool(fact.value))
    if isinstance(fact, _NonZero) and dtype == torch.bool:
        return _Const(True)
    return None


def _compared(packet: Any, left: _Fact, right: _Fact) -> _Fact:
    """Comparing a key position (a column index, j + a) with a query position (a row index,
    i + b) bounds `j - i`: `col <= row` is `j - i <= b - a`, `col > row - w` is `j - i >= 1 - w`
    (a sliding window), and so on; the mirror images (`row >= col`) read the same."""
    if isinstance(left, _Index) and isinstance(right, _Const) and type(right.value) is int:
        return _bounded(packet, left.offset, right.value)
    if not (isinstance(left, _Index) and isinstance(right, _Index)):
        return None
    if (left.axis, right.axis) == (-2, -1):  # row op col: col (mirrored op) row
        mirror = {aten.le: aten.ge, aten.ge: aten.le, aten.lt: aten.gt, aten.gt: aten.lt}
        left, right, packet = right, left, mirror[packet]
    if (left.axis, right.axis) != (-1, -2):
        return None
    gap = right.offset - left.offset  # col <= row  <=>  j - i <= gap
    if packet is aten.le:
        return _Band(None, gap)
    if packet is aten.lt:
        return _Band(None, gap - 1)
    if packet is aten.ge:
        return _Band(gap, None)
    return _Band(gap + 1, None)  # gt


def _bounded(packet: Any, least: int, bound: int) -> _Fact:
    """Positions plus an offset compared with a number: every position is at least the
    offset, so `>=` and `>` a number at or below it are True everywhere (`arange(n) >= 0`,
    how transformers builds a bidirectional mask with no padding), `<` and `<=` False."""
    holds = {aten.ge: least >= bound, aten.gt: least > bound}
    fails = {aten.lt: least >= bound, aten.le: least > bound}
    if holds.get(packet):
        return _Const(True)
    return _Const(False) if fails.get(packet) else None


def _full_width(graph: Graph, node: Node, value: Any) -> _Fact:
    """Return an operand's fact when its columns are not broadcast: a size-1 column dim would
    spread one column's value along the whole row."""
    fact = _arg(graph, value)
    if not isinstance(fact, (_Above, _Band)):
        return fact
    shape = out_meta(graph[value.name]).shape
    out = out_meta(node).shape
    if len(shape) < 2 or not same_size(shape[-1], out[-1], graph):
        return None
    return fact


__all__ = [
    "band",
    "band_if_nonzero",
    "causal_rows",
    "exact",
    "hidden_above",
    "hides_nothing",
    "truncated_keys",
]
