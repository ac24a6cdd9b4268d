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
from dataclasses import dataclass
from typing import Any

import torch

from analysis.dimflow import same_size, out_meta, tensor_inputs
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


_Fact = Any  # _Index | _Above | _Const | None


def hidden_above(graph: Graph, name: str) -> int | None:
    """Return the diagonal k above which the mask `name` hides every key (False in a bool mask,
    -inf in an additive one), or None when that is not provable (NOTE [Causal key truncation])."""
    fact = _fact(graph, name)
    if not isinstance(fact, _Above):
        return None
    dtype = out_meta(graph[name]).dtype
    if dtype == torch.bool:
        return fact.diagonal if fact.value is False else None
    return fact.diagonal if fact.value == -math.inf else None


@dataclass(frozen=True, slots=True)
class KeyCut:
    """How one loop node skips the keys its chunk cannot see."""

    #: the mask's diagonal: the chunk `start:stop` sees keys up to `stop + diagonal`
    diagonal: int
    #: (operand slot, dim) of each operand read whole from outside the chain, cut to those keys
    slots: tuple[tuple[int, int], ...]


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


def _fused(graph: Graph, node: Node, dim: int) -> KeyCut | None:
    meta = out_meta(node)
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
    return KeyCut(diagonal, ((1, ranks[1] - 2), (2, ranks[2] - 2), (3, ranks[3] - 1)))


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
    if node.kind != "op" or out_meta(node) is None:
        return None
    packet = getattr(node.target, "overloadpacket", None)
    args = node.args
    meta = out_meta(node)
    if packet is aten.arange:
        return _arange(node)
    if packet in (aten.add, aten.sub) and len(args) >= 2 and isinstance(args[1], int):
        fact = _arg(graph, args[0])
        if isinstance(fact, _Index) and node.kwarg("alpha", 1) == 1:
            step = args[1] if packet is aten.add else -args[1]
            return _Index(fact.axis, fact.offset + step)
        return None
    if packet is aten.unsqueeze:
        return _unsqueezed(_arg(graph, args[0]), args[1], meta.rank)
    if packet in (aten.expand, aten.view, aten.reshape, aten.alias, aten.clone):
        return _kept_trailing(graph, node)
    if packet in (aten.to, aten._to_copy):
        return _converted(_arg(graph, args[0]), meta.dtype)
    if packet in (aten.le, aten.ge, aten.lt, aten.gt) and len(args) == 2:
        return _compared(packet, _arg(graph, args[0]), _arg(graph, args[1]))
    if info(node.target).fill is not None:
        return _filled(node, meta.dtype)
    if packet in (aten.tril,):
        diagonal = args[1] if len(args) > 1 else node.kwarg("diagonal", 0)
        if not isinstance(diagonal, int):
            return None  # a diagonal that depends on the input's sizes
        return _Above(diagonal, False if meta.dtype == torch.bool else 0)
    if packet in (aten.triu,):  # keeps the elements at or above its diagonal d
        fact = _arg(graph, args[0])
        diagonal = args[1] if len(args) > 1 else node.kwarg("diagonal", 0)
        if isinstance(fact, _Const) and isinstance(diagonal, int):
            return _Above(diagonal - 1, fact.value)
        return None
    if packet in (aten.__and__, aten.bitwise_and, aten.logical_and) and meta.dtype == torch.bool:
        facts = [_full_width(graph, node, arg) for arg in args[:2]]
        hidden = [f.diagonal for f in facts if isinstance(f, _Above) and f.value is False]
        return _Above(min(hidden), False) if hidden else None
    if packet in (aten.__or__, aten.bitwise_or, aten.logical_or) and meta.dtype == torch.bool:
        facts = [_full_width(graph, node, arg) for arg in args[:2]]
        if all(isinstance(f, _Above) and f.value is False for f in facts):
            return _Above(max(f.diagonal for f in facts), False)
        return None
    if packet in (aten.bitwise_not, aten.logical_not) and meta.dtype == torch.bool:
        fact = _arg(graph, args[0])
        if isinstance(fact, _Above) and isinstance(fact.value, bool):
            return _Above(fact.diagonal, not fact.value)
        return None
    if packet is aten.masked_fill and len(args) == 3 and args[2] == -math.inf:
        fact = _full_width(graph, node, args[1])
        if isinstance(fact, _Above) and fact.value is True:
            return _Above(fact.diagonal, -math.inf)
        return None
    if packet is aten.where and len(args) == 3:
        fact = _full_width(graph, node, args[0])
        if isinstance(fact, _Above) and isinstance(fact.value, bool):
            chosen = args[1] if fact.value else args[2]
            if chosen == -math.inf:
                return _Above(fact.diagonal, -math.inf)
        return None
    return None


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
    if isinstance(fact, _Above) and new < -2:
        return fact
    return None


def _kept_trailing(graph: Graph, node: Node) -> _Fact:
    """Views and broadcasts that leave the last two dims as they were keep an `_Above`."""
    source = node.args[0]
    fact = _arg(graph, source)
    if not isinstance(fact, _Above):
        return None
    before = out_meta(graph[source.name]).shape
    after = out_meta(node).shape
    if len(before) < 2 or len(after) < 2:
        return None
    if all(same_size(a, b, graph) for a, b in zip(before[-2:], after[-2:])):
        return fact
    return None


def _converted(fact: _Fact, dtype: torch.dtype) -> _Fact:
    if isinstance(fact, _Index) and dtype in _EXACT:
        return fact
    if isinstance(fact, _Above) and dtype == torch.bool:
        return _Above(fact.diagonal, bool(fact.value))
    if isinstance(fact, _Const) and dtype == torch.bool:
        return _Const(bool(fact.value))
    return None


def _compared(packet: Any, left: _Fact, right: _Fact) -> _Fact:
    """`col <= row + k` (or its mirror images) hides the keys above diagonal k."""
    if not (isinstance(left, _Index) and isinstance(right, _Index)):
        return None
    if packet in (aten.ge, aten.gt):
        left, right = right, left  # a >= b is b <= a
    if left.axis != -1 or right.axis != -2:
        return None
    diagonal = right.offset - left.offset - (1 if packet in (aten.lt, aten.gt) else 0)
    return _Above(diagonal, False)


def _full_width(graph: Graph, node: Node, value: Any) -> _Fact:
    """Return an operand's fact when its columns are not broadcast: a size-1 column dim would
    spread one column's value along the whole row."""
    fact = _arg(graph, value)
    if not isinstance(fact, _Above):
        return fact
    shape = out_meta(graph[value.name]).shape
    out = out_meta(node).shape
    if len(shape) < 2 or not same_size(shape[-1], out[-1], graph):
        return None
    return fact


__all__ = ["hidden_above", "truncated_keys"]
