"""Attention as eager runs it: `is_causal` instead of a causal mask, grouped keys as they are.

NOTE [Attention as eager runs it]
On a prompt with no padding, eager transformers calls SDPA with `is_causal=True`, no mask, and
the grouped keys and values as they are (`enable_gqa=True`); the fused kernel then never holds
the scores. While exporting, transformers takes another path: it builds the `seq x seq` mask
from position comparisons (`kv_idx <= q_idx`, and packed-sequence ids that are all equal when
the positions are `arange`), and repeats the keys and values to every head. Captured as it is,
that path holds the mask, its float copy inside the kernel, and keys and values several times
their size, and the masked kernel is slower.

This pass gives each such SDPA call back the eager form, where it is proven equal:
- a mask that hides nothing (`arange(n) >= 0` expanded to every query and key: how
  transformers builds an encoder's bidirectional mask when no padding mask is given, which
  eager skips) goes, and the call runs unmasked;
- a mask that `analysis.causal.band` proves exactly causal (True exactly where the key is at or
  before the query: `_Band(None, 0)`), whose last two dims are the queries and keys it masks,
  with as many queries as keys, becomes `is_causal=True` and no mask. Any other mask (padding,
  a window, a bias) stays as it is.
- keys or values repeated to every query head the way `repeat_kv` does (a new dim after the
  key heads, expanded and folded into them) are read as they were made, with
  `enable_gqa=True`: query head h reads key head h // (query heads / key heads), as the repeat
  made it.
The ops that built the mask and the repeats are dropped when nothing else reads them. First,
each value `analysis.causal` knows exactly (positions, constants, bands) is read as the
earliest of its own sources equal to it (`_merged`): a mask left in place (a window) shrinks to
the comparisons a person would write. The pass is a pure function `Graph -> Graph`; the result
is the graph the pipeline plans, and what it estimates for the original, since it is what eager
runs.

NOTE [Padding checked at run time]
A padding mask is data: no proof sees that it pads nothing. Eager transformers checks at run
time (`attention_mask.all()`) and then calls SDPA with `is_causal` and no mask. The same check
is exact here. For an SDPA call whose mask is not proven causal, each integer or bool model
input it is made from is tried: if the mask is exactly causal once that input is nonzero
everywhere (`analysis.causal.band_if_nonzero`: converted to bool it is all True, and `causal &
True` is causal), the graph gains one node, `no_padding = attention_mask.all()`, first in the
module call that runs every such attention, and the call reads it (the `no_padding` keyword).
The generated module runs the call as `_attention(q, k, v, mask, no_padding)`: `is_causal`
with no mask when the check holds (`_causal_attention` in a loop over the queries), else the
mask. The planner plans the masked path, the larger; each loop through such a call is sized a
second time for the unmasked path (`analysis.select.unpadded_sizes`), whose attention holds no
mask copy, and picks its rows by the check at run time. The mask's ops still run (they are
cheap next to the attention). Verification runs both paths: the example inputs, and the same
inputs switched to the other path (`codegen.verify.checked_inputs`: all ones, or one padded
token when the example pads nothing).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import sympy
import torch

from analysis.causal import band, band_if_nonzero, exact, hides_nothing
from analysis.dimflow import same_size, schema_arg
from analysis.ir import (
    Graph,
    Node,
    Ref,
    TensorMeta,
    common_calls,
    fresh_name,
    in_call,
    renamed_refs,
    without_dead,
)

aten = torch.ops.aten
SDPA = aten.scaled_dot_product_attention.default


def eager_attention(graph: Graph) -> Graph:
    """Return the graph with each proven-causal SDPA call written as eager runs it (NOTE
    [Attention as eager runs it]), and each mask value read as the earliest one equal to it;
    the graph itself when nothing changes."""
    graph = _merged(_without_empty_pads(graph))
    rewritten: dict[str, Node] = {}
    for node in graph.nodes:
        if node.target is SDPA:
            fast = _fast_call(graph, node)
            if fast is not None:
                rewritten[node.name] = fast
    if rewritten:
        nodes = tuple(rewritten.get(node.name, node) for node in graph.nodes)
        graph = without_dead(replace(graph, nodes=nodes, memo={}))
    return _padding_checked(graph)


#: the keyword an SDPA call carries when its mask is causal once padding is ruled out at run
#: time: the 0-d bool value `padding_mask.all()` (NOTE [Padding checked at run time])
NO_PADDING = "no_padding"


def unpadded(graph: Graph) -> Graph:
    """The graph as it runs when every padding check holds: each checked SDPA call with
    `is_causal` and no mask (the ops that build the mask stay, read by nothing)."""
    nodes = []
    for node in graph.nodes:
        options = dict(node.kwargs)
        if options.pop(NO_PADDING, None) is not None:
            node = replace(node, args=node.args[:3], kwargs=(("is_causal", True), *options.items()))
        nodes.append(node)
    return replace(graph, nodes=tuple(nodes), memo={})


def padding_check_of(graph: Graph, names: Any) -> str | None:
    """The padding check an SDPA call among `names` reads, if any."""
    for name in names:
        check = dict(graph[name].kwargs).get(NO_PADDING)
        if isinstance(check, Ref):
            return check.name
    return None


def is_padding_check(node: Node) -> bool:
    """Whether the node is a run-time padding check `_padding_checked` made."""
    return node.target is aten.all.default and node.name.startswith(NO_PADDING)


def _padding_checked(graph: Graph) -> Graph:
    """Return the graph with each SDPA call whose mask is exactly causal when one integer or
    bool input is nonzero everywhere reading that input's run-time check (NOTE [Padding
    checked at run time]); the graph itself when there is none."""
    checks: dict[str, str] = {}  # input -> the name of its check
    calls: dict[str, str] = {}  # SDPA call -> the input it checks
    taken = {node.name for node in graph.nodes}
    for node in graph.nodes:
        mask = schema_arg(node, "attn_mask") if node.target is SDPA else None
        if not isinstance(mask, Ref) or schema_arg(node, "is_causal", False):
            continue
        if schema_arg(node, "dropout_p", 0.0) != 0.0 or NO_PADDING in dict(node.kwargs):
            continue
        for name in _padding_inputs(graph, mask.name):
            if _exactly_causal(graph, node, mask.name, assumed=name):
                calls[node.name] = name
                if name not in checks:
                    checks[name] = fresh_name(NO_PADDING, taken)
                break
    if not calls:
        return graph
    scope = common_calls(graph[name].calls for name in calls)
    made = next(n for n in graph.nodes if n.kind == "op" and n.calls[: len(scope)] == scope)
    nodes: list[Node] = []
    for node in graph.nodes:
        if node is made:  # first in the module call that runs every checked attention
            for name, check in checks.items():
                meta = TensorMeta((), torch.bool)
                check_node = Node(check, "op", aten.all.default, (Ref(name),), meta=meta)
                nodes.append(in_call(graph, check_node, scope))
        if node.name in calls:  # q, k, v, mask; its options; the check
            options = _options(False, schema_arg(node, "scale"), schema_arg(node, "enable_gqa"))
            check = (NO_PADDING, Ref(checks[calls[node.name]]))
            args = (*node.args[:3], schema_arg(node, "attn_mask"))
            node = replace(node, args=args, kwargs=(*options, check))
        nodes.append(node)
    return replace(graph, nodes=tuple(nodes), memo={})


def _padding_inputs(graph: Graph, mask: str) -> list[str]:
    """The integer and bool model inputs the mask is made from, in order."""
    found: set[str] = set()
    pending, seen = [mask], {mask}
    while pending:
        node = graph[pending.pop()]
        if node.kind == "input":
            meta = node.meta
            if isinstance(meta, TensorMeta) and not meta.dtype.is_floating_point:
                found.add(node.name)
        for ref in node.refs():
            if ref not in seen:
                seen.add(ref)
                pending.append(ref)
    return sorted(found, key=graph.position)


def _fast_call(graph: Graph, node: Node) -> Node | None:
    """The SDPA call without its causal mask and repeats, or None when nothing changes."""
    query, key, value = (_ref(a) for a in node.args[:3])
    mask = schema_arg(node, "attn_mask")
    dropout = schema_arg(node, "dropout_p", 0.0)
    causal = schema_arg(node, "is_causal", False)
    if query is None or key is None or value is None or dropout != 0.0:
        return None
    scale = schema_arg(node, "scale")
    gqa = schema_arg(node, "enable_gqa", False)
    masked = isinstance(mask, Ref)
    if masked and not causal and _exactly_causal(graph, node, mask.name):
        mask, causal = None, True
    elif masked and hides_nothing(graph, mask.name):
        mask = None
    grouped = _grouped(graph, key), _grouped(graph, value)
    if grouped[0] is not None and grouped[1] is not None and grouped[0][1] == grouped[1][1]:
        key, value, gqa = grouped[0][0], grouped[1][0], True
    if (mask is None) == (not masked) and (key, value) == tuple(_ref(a) for a in node.args[1:3]):
        return None  # neither the mask nor the repeats could go
    args: tuple[Any, ...] = (Ref(query), Ref(key), Ref(value))
    if mask is not None:  # a mask kept (a window, padding) stays where readers look for it
        args = (*args, mask)
    return replace(node, args=args, kwargs=_options(causal, scale, gqa))


def _options(causal: bool, scale: Any, gqa: Any) -> tuple[tuple[str, Any], ...]:
    """An SDPA call's keywords, those left at their defaults left out."""
    options = (("is_causal", causal), ("scale", scale), ("enable_gqa", gqa))
    return tuple((k, v) for k, v in options if v is not None and v is not False)


def _exactly_causal(graph: Graph, node: Node, mask: str, assumed: str | None = None) -> bool:
    """Whether the mask is exactly the causal one, over as many queries as keys, its last two
    dims those of the scores (not broadcast), so `is_causal` (which aligns the diagonal at the
    top left) says the same; given `assumed`, if that input is nonzero everywhere."""
    found = band(graph, mask) if assumed is None else band_if_nonzero(graph, mask, assumed)
    if found != (None, 0):
        return False
    shape = graph[mask].tensor.shape
    queries = graph[node.args[0].name].tensor.shape[-2]
    keys = graph[node.args[1].name].tensor.shape[-2]
    return (
        len(shape) >= 2
        and same_size(queries, keys, graph)
        and same_size(shape[-2], queries, graph)
        and same_size(shape[-1], keys, graph)
    )


def _grouped(graph: Graph, name: str) -> tuple[str, int] | None:
    """For keys repeated to every query head as `repeat_kv` does it,
    `x[:, :, None].expand(b, kv_heads, n, s, d).reshape(b, kv_heads * n, s, d)`, return the
    keys as made and n; else None."""
    folded = graph[name]
    if folded.target not in (aten.reshape.default, aten.view.default, aten._unsafe_view.default):
        return None
    expanded = graph[_ref(folded.args[0]) or name]
    if expanded.target is not aten.expand.default:
        return None
    unsqueezed = graph[_ref(expanded.args[0]) or name]
    if unsqueezed.target is not aten.unsqueeze.default:
        return None
    source = _ref(unsqueezed.args[0])
    if source is None or not all(
        isinstance(graph[n].meta, TensorMeta) for n in (name, expanded.name, source)
    ):
        return None
    made, wide, out = graph[source].tensor.shape, expanded.tensor.shape, folded.tensor.shape
    rank = len(made)
    if rank < 3 or unsqueezed.args[1] not in (rank - 2, -3) or len(out) != rank:
        return None  # the new dim must sit right after the key heads
    repeats = wide[rank - 2]
    if not isinstance(repeats, int) or repeats < 2:
        return None
    same = lambda a, b: len(a) == len(b) and all(
        same_size(x, y, graph) for x, y in zip(a, b)
    )  # noqa: E731
    if not (same(wide[: rank - 2], made[: rank - 2]) and same(wide[rank - 1 :], made[rank - 2 :])):
        return None  # only the new dim is expanded
    heads = made[rank - 3]
    if not isinstance(heads, int) or out[rank - 3] != heads * repeats:
        return None
    if not (same(out[: rank - 3], made[: rank - 3]) and same(out[rank - 2 :], made[rank - 2 :])):
        return None
    return source, repeats


def _merged(graph: Graph) -> Graph:
    """Read each value that `analysis.causal.exact` knows exactly (positions, constants, bands)
    as the earliest value it was made from that is equal to it (same fact, shape and dtype),
    then drop what nothing reads.

    transformers builds a window's mask as `True & (kv > q - w).to(bool) & (kv <= q).to(bool)
    & (ids[q] == ids[kv])` over positions gathered from the position ids; all but the two
    comparisons are `& True` or a conversion to what it already is, and the gathered positions
    equal the `arange` they came from. What is left is the mask a person would write, and the
    chunk loops rebuild only that. Only a value's own sources are candidates: two equal masks
    that two layers build each stay their layer's own, so neither lives longer."""
    outputs = graph.output_names()
    renamed: dict[str, str] = {}
    for node in graph.nodes:
        fact = exact(graph, node.name)
        if fact is None or node.name in outputs or not isinstance(node.meta, TensorMeta):
            continue
        key = (fact, node.tensor.shape, node.tensor.dtype)
        found = [
            source
            for source in _exact_sources(graph, node.name)
            if isinstance(graph[source].meta, TensorMeta)
            and (exact(graph, source), graph[source].tensor.shape, graph[source].tensor.dtype)
            == key
        ]
        if found:
            earliest = min(found, key=graph.position)
            renamed[node.name] = renamed.get(earliest, earliest)
    return _read_as(graph, renamed)


def _read_as(graph: Graph, renamed: dict[str, str]) -> Graph:
    """The graph with each value in `renamed` read as the value it maps to, and what nothing
    reads any more dropped; the graph itself when `renamed` is empty."""
    if not renamed:
        return graph
    nodes = tuple(
        replace(
            node,
            args=renamed_refs(node.args, renamed),
            kwargs=renamed_refs(node.kwargs, renamed),
            aliases=renamed.get(node.aliases, node.aliases) if node.aliases else None,
            mutates=renamed.get(node.mutates, node.mutates) if node.mutates else None,
        )
        for node in graph.nodes
    )
    return without_dead(replace(graph, nodes=nodes, memo={}))


#: padding ops: a copy of their input when every amount is 0
_PADS = (aten.pad.default, aten.constant_pad_nd.default)


def _without_empty_pads(graph: Graph) -> Graph:
    """Read each pad whose amounts are all 0 as its input. HF Swin pads its feature map up to
    a multiple of its window (`maybe_pad`); with a dynamic size that is a multiple already,
    the amounts are sizes export proves 0 (`(16*w) % 8`), but the pad stays in the graph, a
    whole copy eager never makes (it pads only when the amounts are nonzero)."""
    renamed: dict[str, str] = {}
    written = {node.mutates for node in graph.nodes if node.mutates}
    for node in graph.nodes:
        if node.target not in _PADS or node.name in written or not isinstance(node.args[0], Ref):
            continue
        amounts = node.args[1] if len(node.args) > 1 else node.kwarg("pad")
        values = [graph[a.name].meta if isinstance(a, Ref) else a for a in amounts or ()]
        if values and all(isinstance(v, (int, sympy.Integer)) and v == 0 for v in values):
            source = node.args[0].name
            renamed[node.name] = renamed.get(source, source)
    return _read_as(graph, renamed)


def _exact_sources(graph: Graph, name: str) -> set[str]:
    """The values `name` is made from through values known exactly (its mask-building chain)."""
    found: set[str] = set()
    pending = [name]
    while pending:
        for ref in graph[pending.pop()].refs():
            if ref not in found and exact(graph, ref) is not None:
                found.add(ref)
                pending.append(ref)
    return found


def _ref(value: Any) -> str | None:
    return value.name if isinstance(value, Ref) else None


__all__ = ["NO_PADDING", "eager_attention", "is_padding_check", "padding_check_of", "unpadded"]
