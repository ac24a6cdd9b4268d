"""Sums over the chunks: a loop whose last op contracts the chunked dim.

NOTE [Sums over the chunks]
A loop over heads makes each head's attention output, and the output projection reads all
heads' features at once: `o_proj(attn)` contracts the features the loop walks, so it mixes the
chunked dim and used to end the loop. Yet a contraction is a sum over that dim: `attn @ W.T` is
the sum over the chunks of `attn[..., chunk] @ W[:, chunk].T`. A loop may run it as such: each
chunk adds its product into one tensor of the projection's full shape (`addmm_`, in place, no
temporary the size of the sum), set before the loop to the bias. The heads' outputs are then
never held whole: the loop keeps the sum instead of an output buffer of the same size.

The gain is in what the sum is added to next. A transformer block adds the projection to its
residual (`hidden_states = residual + attn_output`): the residual is held through the whole
attention anyway, so when the addition is the projection's only reader, and the other operand
is made before the loop, the sum starts as `residual + bias` and the block's output is made in
the residual's place. When the residual is read nowhere after, and is an op's own contiguous
result made in the module holding the loop, its own storage takes the sum (NOTE [Outputs in
place], with the same hook guard): the loop then holds one tensor of the block's width where it
held three (the residual, the heads' output buffer, the projection's output).

What a sum allows, kept narrow:
- the op is `linear` with a 2-D weight, reading the chunk as its input, contracted over the
  input's last dim, which is the loop's dim (the heads' features, at their scale); the weight
  is sliced along its input features the same way, the bias (whole) goes into the start;
- after it, at most one addition, its only reader, of a value of the same shape and dtype
  made before the loop (the residual), whose storage the sum may take; nothing else in the
  loop reads the projection or the sum;
- the sum is read after the loop, whole, like any loop output.
With no addition to start from, or a residual read after, the sum is a tensor of its own:
it still spares the heads' outputs, held in a buffer while the projection makes its output
(BERT, whose projection goes through a dropout before its add). But a loop ending in a sum
cannot grow past it, and a greedy choice of one may stop a plan that loops over rows would
have taken further (ConvNeXt's feed-forward summed over its hidden features: 61% where the
rows reach 81%). So where a plan with sums misses its target, selection plans again without
them (`without_sums`) and keeps the lower (`analysis.select.make_plan`).
Changing the order of the additions changes the rounding, within the verification tolerance
as any matrix product split differently; the result is never approximated.
"""

from __future__ import annotations

import contextlib
import contextvars

import torch

from analysis.ir import (
    Graph,
    Node,
    TensorMeta,
    common_calls,
    out_meta,
    tensor_inputs,
)
from analysis.inplace import storage_ends_by
from analysis.plan import Region

aten = torch.ops.aten


#: whether the search may run products as sums over the chunks; selection plans without them
#: too (`analysis.select.make_plan`)
SUMS = contextvars.ContextVar("sums", default=True)


@contextlib.contextmanager
def without_sums():
    """Search for loops with no sums over the chunks while the block runs."""
    token = SUMS.set(False)
    try:
        yield
    finally:
        SUMS.reset(token)


def contraction(node: Node, graph: Graph) -> tuple[int, int, int] | None:
    """For a `linear` whose product a loop may sum over its input's features: (the input's
    slot, its contracted dim, the weight's slot); the weight's input features are its dim 1.
    None for any other op."""
    if node.target is not aten.linear.default:
        return None
    sources = tensor_inputs(node, graph)
    if len(sources) < 2 or sources[0] == sources[1]:
        return None
    shapes = [graph[name].meta for name in sources]
    if not all(isinstance(meta, TensorMeta) for meta in shapes) or shapes[1].rank != 2:
        return None
    if shapes[0].rank < 1:
        return None
    return 0, shapes[0].rank - 1, 1


def folded_add(graph: Graph, name: str, inside: set[str]) -> tuple[str, str] | None:
    """The addition a sum made by `name` starts from (NOTE [Sums over the chunks]): (the add,
    the value added) when the add, inside the stretch, is `name`'s only reader and adds a
    value of its shape and dtype; else None."""
    users = graph.users(name)
    if len(users) != 1 or users[0] not in inside or name in graph.output_names():
        return None
    add = graph[users[0]]
    if add.target is not aten.add.Tensor or add.kwarg("alpha", 1) != 1 or len(add.args) != 2:
        return None
    sources = tensor_inputs(add, graph)
    if len(sources) != 2 or sources.count(name) != 1:
        return None
    other = sources[1 - sources.index(name)]
    mine, theirs, made = out_meta(graph[name]), graph[other].meta, out_meta(add)
    if not isinstance(theirs, TensorMeta) or mine is None or made is None:
        return None
    if theirs.shape != mine.shape or made.shape != mine.shape:
        return None
    if len({theirs.dtype, mine.dtype, made.dtype}) != 1:
        return None
    return add.name, other


def sum_in_place(graph: Graph, region: Region, value: str, overwrites: bool) -> bool | None:
    """Whether a sum may start in `value`'s own storage (NOTE [Sums over the chunks]), where
    loops write in place (`overwrites`): None when not; else whether only while no hook could
    keep `value` (NOTE [Outputs in place])."""
    end = graph.position(region.span[-1])
    loop = region.loop_dims  # hoisted readers run before the sum starts
    if not overwrites or not storage_ends_by(graph, value, end):
        return None
    if any(user in loop for user in graph.users(value)):
        return None
    node = graph[value]
    common = common_calls(graph[name].calls for name in region.span)
    while common and common[-1] in graph.inline_calls:  # the loop is in its caller's forward
        common = common[:-1]
    if node.calls[: len(common)] != common:
        return None
    return node.calls != common


__all__ = ["SUMS", "contraction", "folded_add", "sum_in_place", "without_sums"]
