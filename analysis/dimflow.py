"""Dimension flow: for each op, which output dim moves with which input dims.

NOTE [Dimension flow]
A rule lists, for every output dim, the (input slot, input dim) pairs that index the same
positions: slicing the output along that dim needs exactly those input dims sliced the same way,
and no other input sliced at all. An input dim that appears in no group is mixed by the op (a
reduction, a softmax axis, a matmul's contracted dim, a gather, a position-dependent mask): a
chunk loop can never cut through it. Broadcast dims (size 1 against a larger output) are in no
group either: that input is used whole. An op with no rule mixes every dim. That is never an
error: it only means no loop passes through that op. Slots number the op's tensor inputs in
argument order, as `tensor_inputs` lists them.

NOTE [Halos]
A convolution or pool with stride 1 whose output is as long as its input (`padding = dilation *
(kernel - 1) / 2`) moves its spatial dims with the input's, but output rows [a, b) read input
rows [a - p, b + p): a halo of p rows on each side (`DimRule.halo`). With stride s > 1 they read
rows [s*a - p, (b - 1)*s - p + d*(k - 1) + 1): the loop runs over the coarsest value's rows,
and a value s times finer is made over s times as many (its `scale`). A loop through such ops
computes each input over the wider rows, runs the op on them with its own padding (still
`self.conv(x)`), and keeps the rows whose window lay inside the slice or on the tensor's real
edge: exact for every padding, `ceil_mode` and `count_include_pad`, since the rows that read
made-up padding are the ones cropped. The slice starts at a multiple of the stride, so the
op's outputs fall where the whole run puts them. Upsampling runs the other way (stride 1/f):
a nearest or linear upsampling, or a transposed convolution whose output is exactly f times
its input, run on input rows [r, r') makes output rows [f*r, f*r'), of which the ones next to
the cuts, missing taps from outside the slice, are cropped. `analysis.search` gives each loop
value the rows it must make, `analysis.lower` the crops.

NOTE [Rows of tokens]
Vision transformers keep an image as tokens, `(batch, height * width, channels)`, and view them
as rows and columns where a convolution or a window needs them (SegFormer's depthwise conv,
Swin's windows): `x.transpose(1, 2).view(b, c, height, width)`, then `.flatten(2)` back. A view
that splits a dim moves the output's outermost part with it: output rows [a, b) are input
tokens [a * width, b * width), a stride of `width` (a size of the input, or a whole number);
a view that merges dims moves the output with the input's outermost, each token `1 / width`
of a row. A loop over image rows then runs through both: a chunk of rows is a whole number of
rows of tokens, `start * width : stop * width`, and a convolution's halo rows are halo tokens,
`width` to a row. Where `width` is a size of the input, a value's rows per row of the loop is
not a number but that size (its `unit`, `analysis.program.Span`): the search takes scales as
sizes, and keeps a loop only where every scale is a whole polynomial in the dynamic dims and
a value's length is its unit times the loop's. The same rule moves a head's features with the
head (`q.view(b, n, heads, dim)`), so a loop over heads may make each head's projections
itself, from the rows of the weight that make them.

NOTE [Cyclic shifts]
Swin rolls its image by half a window before the shifted windows' attention, and back after
it: `torch.roll(x, shifts=(-4, -4), dims=(1, 2))`. Along a rolled dim, output row r is input
row r - k, round the dim's length (`DimRule.shift`). A loop over that dim runs straight through:
each value's chunk is its rows `scale * start + shift` to `scale * stop + shift`, counted round
its length, where `shift` is how far the rolls on the way moved it (`Region.shifts`; values
before the first roll and after the roll back are 4 rows on from the windows between them).
A roll inside the loop then runs only along its other dims (or by 0, a copy, where it rolled the
chunked dim alone). A value read from outside the loop at shifted rows is read as a view, or,
for the chunk whose rows wrap past the end, a copy of the two pieces (`_wrapped` in the
generated module); an output at shifted rows is written in one or two pieces
(`_write_wrapped`). The estimate counts the copy, as the wrapping chunk makes it. A shift must
be a whole number of rows of every value it reaches (a view into windows of 8 rows takes shifts
of multiples of 8), each shifted value exactly its scale times the loop's length, and a loop
with shifts takes no halos, offsets, masked or causal query rows, sums over the chunks or
statistics passes: those place rows by their first, which a shift moves. Where a loop through
the rolls cannot run, the search moves the stretch's ends past them (`search._past_rolls`), as
past any op that mixes the dim; where it can, the stretches past them are offered beside it,
since reading the rolled value whole may hold less than wrapping each chunk's rows.

NOTE [Statistics before the loop]
A group norm's output row is its input row, less its group's mean, over its group's standard
deviation: the statistics span every row. A loop may still run it row by row when the input is
whole before the loop: the statistics are taken first, by a chunked reduction over the whole
input (`_group_stats` in the generated module: per-chunk counts, means and squared deviations
in float32, combined as Chan et al. do), then each chunk is normalized with them (`_group_norm`,
the affine form ATen's kernel computes). The rule marks such an input `whole`; the search then
never makes it inside the loop. Contract 3 lists the exception: the norm is written out, not
called as `self.norm(chunk)`.

NOTE [Statistics passes]
When the loop itself makes the norm's input (a resnet block's second norm reads its first
conv), holding that input whole may cost more than making it twice. The search may then chunk
the input too (`propagate(recompute=True)`), and the region lists the norm in `recomputed`.
Its loop runs a first pass before the main one: each chunk makes the norm's input over the
chunk's rows, by the same statements as the main loop up to it, and adds those rows to the
statistics (`_GroupStats.add`, the same Chan combination); the main loop then normalizes with
them. A norm whose input another recomputed norm's output feeds gets its pass after that
one's, which it reads, and that pass makes the earlier norm's input again: a resnet block
whose loop starts at the upsampling before it makes the upsampled image three times (both
passes and the main loop), which is what lets the decoder hold neither that image nor its
block's inner value whole. A value is made by at most `PASSES_PER_VALUE` (2) passes; a
stretch needing more ends before the norm whose pass would make it once more, or starts after
the first that made it, so the passes cost at most twice the loop more, never a cost growing
with the square of its length. Since every pass remakes what the loop runs before its norm,
the search also regrows such a stretch from the place between its start and the peak where
the fewest bytes are live (`select._started_lower`): the values before it are held, not
remade. Each chunk's statistics are its mean and then its squared deviations from it, through
one float32 copy of the chunk (`torch.var_mean` runs ten times slower on CPU); the estimate
counts that copy, in the passes and in `_group_stats`. The estimate counts each pass's chunk
values, the cost model its recomputation; selection keeps the pass only where it is worth its
time (it meets the target faster, or lowers the peak more, than holding the input).
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import sympy
import torch

from analysis.ir import Graph, Node, Ref, Size, TensorMeta, evaluate, out_meta, tensor_inputs

aten = torch.ops.aten

#: A position inside a node's args: (argument index, element index within a list argument).
ArgPath = tuple[int, int]


@dataclass(frozen=True, slots=True)
class DimRule:
    """How an op's output dims correspond to its tensor inputs' dims."""

    #: per output dim: the (slot, input dim) pairs that move with it
    groups: tuple[tuple[tuple[int, int], ...], ...]
    #: per output dim: size arguments to replace by the chunk length when that dim is chunked
    resize: tuple[tuple[ArgPath, ...], ...] = ()
    #: per output dim: (argument index, sign, default) of an offset that moves with the chunk's
    #: start (tril's diagonal: row r of a chunk is row start + r of the whole)
    offset: tuple[tuple[tuple[int, int, int], ...], ...] = ()
    #: per output dim: (slot, rows before, rows after, stride) of an input read wider than the
    #: output's rows, or `stride` input rows to each output row, a fraction for upsampling
    #: (NOTE [Halos])
    halo: tuple[tuple[tuple[int, int, int, Any], ...], ...] = ()
    #: per output dim: input slots whose statistics span that dim: read by chunk, but made
    #: whole before any loop along it through the op (NOTE [Statistics before the loop])
    whole: tuple[tuple[int, ...], ...] = ()
    #: per output dim: (argument index, value) to pass instead when the op runs on a chunk
    #: along that dim (a resampling to a given size, by its whole factor: NOTE [Halos])
    swap: tuple[tuple[tuple[int, Any], ...], ...] = ()
    #: per output dim: how far the op moves its input's rows along it, cyclically (a roll by
    #: k: output row r is input row r - k, round the dim's length; NOTE [Cyclic shifts])
    shift: tuple[int, ...] = ()

    def shift_of(self, out_dim: int) -> int:
        return self.shift[out_dim] if self.shift else 0

    def swapped(self, out_dim: int) -> tuple[tuple[int, Any], ...]:
        return self.swap[out_dim] if self.swap else ()

    def group_of(self, slot: int, dim: int) -> int | None:
        """Return the output dim that input `slot`'s dim `dim` moves with, or None if mixed."""
        for out_dim, group in enumerate(self.groups):
            if (slot, dim) in group:
                return out_dim
        return None

    def input_dim(self, out_dim: int, slot: int) -> int | None:
        """Return the dim of input `slot` that moves with `out_dim`, or None if used whole."""
        for s, d in self.groups[out_dim]:
            if s == slot:
                return d
        return None

    def resized(self, out_dim: int) -> tuple[ArgPath, ...]:
        return self.resize[out_dim] if self.resize else ()

    def offsets(self, out_dim: int) -> tuple[tuple[int, int, int], ...]:
        return self.offset[out_dim] if self.offset else ()

    def halo_of(self, out_dim: int, slot: int) -> tuple[int, int, Any]:
        """Return how input `slot` is read for output rows [a, b): rows [floor(stride * a) -
        before, ceil(stride * b) + after)."""
        for s, before, after, stride in self.halo[out_dim] if self.halo else ():
            if s == slot:
                return before, after, stride
        return 0, 0, 1

    def whole_of(self, out_dim: int) -> tuple[int, ...]:
        """Return the input slots a loop along `out_dim` needs whole before it."""
        return self.whole[out_dim] if self.whole else ()

    def produces(self, out_dim: int) -> bool:
        """Return whether the op can compute one chunk of that output dim by itself: its
        inputs move with it, or it makes the dim from a size or an offset argument."""
        return out_dim < len(self.groups) and bool(
            self.groups[out_dim] or self.resized(out_dim) or self.offsets(out_dim)
        )


def same_size(a: Size, b: Size, graph: Graph) -> bool:
    """Return whether two sizes are equal for every value of the dynamic dims.

    Symbolic sizes are compared at the example sizes and at a second, unrelated point, so
    `(s**2)//s` and `s` agree while `2*s` and `s + 2` (equal only at s=2) do not.
    """
    if isinstance(a, int) and isinstance(b, int):
        return a == b
    if a == b:
        return True
    other = {symbol: 3 * hint + 7 for symbol, hint in graph.hints.items()}
    return evaluate(a, graph.hints) == evaluate(b, graph.hints) and evaluate(a, other) == evaluate(
        b, other
    )


def _shapes(node: Node, graph: Graph) -> list[tuple[Size, ...]]:
    shapes = []
    for name in tensor_inputs(node, graph):
        meta = graph[name].meta
        shapes.append(meta.shape if isinstance(meta, TensorMeta) else meta[0].shape)
    return shapes


def _broadcast(node: Node, graph: Graph, slots: list[int] | None = None) -> DimRule:
    """Elementwise with broadcasting: dims align from the right; size-1 dims are used whole."""
    out = out_meta(node).shape
    shapes = _shapes(node, graph)
    groups = []
    for j, size in enumerate(out):
        group = []
        for slot, shape in enumerate(shapes):
            if slots is not None and slot not in slots:
                continue
            k = j - (len(out) - len(shape))
            if k >= 0 and same_size(shape[k], size, graph):
                group.append((slot, k))
        groups.append(tuple(group))
    return DimRule(tuple(groups))


def _identity_except(node: Node, graph: Graph, mixed: set[int]) -> DimRule:
    """Output dim j moves with input 0's dim j, except the mixed dims."""
    rank = out_meta(node).rank
    return DimRule(tuple(() if j in mixed else ((0, j),) for j in range(rank)))


def _norm_dim(dim: int, rank: int) -> int:
    return dim + rank if dim < 0 else dim


def schema_arg(node: Node, name: str, default: Any = None) -> Any:
    """Return the argument the op's schema calls `name`, passed by position or by keyword."""
    names = [a.name for a in node.target._schema.arguments]
    if name in names and names.index(name) < len(node.args):
        return node.args[names.index(name)]
    return node.kwarg(name, default)


def roll_rule(node: Node, graph: Graph) -> DimRule | None:
    """Every dim moves; a rolled dim moves its rows by the roll's shift, cyclically (NOTE
    [Cyclic shifts]). A roll with no dims (of the flattened tensor) mixes every dim; a shift
    that is a size of the input is not followed, and its dim mixes. Run on a chunk along a
    rolled dim, the roll keeps its other dims (or rolls that one by 0)."""
    dims, shifts = schema_arg(node, "dims", []), schema_arg(node, "shifts")
    dims = [dims] if isinstance(dims, int) else list(dims or [])
    shifts = [shifts] if isinstance(shifts, int) else list(shifts or [])
    if not dims or len(dims) != len(shifts):
        return None
    rank = out_meta(node).rank
    dims = [_norm_dim(d, rank) for d in dims]
    groups: list[tuple[tuple[int, int], ...]] = [((0, j),) for j in range(rank)]
    shift, swap = [0] * rank, [()] * rank
    for index, (dim, moved) in enumerate(zip(dims, shifts)):
        if not isinstance(moved, int) or dims.count(dim) > 1:
            groups[dim] = ()
            continue
        shift[dim] = moved
        rest = [i for i in range(len(dims)) if i != index]
        kept = ([shifts[i] for i in rest], [dims[i] for i in rest]) if rest else ([0], [dim])
        swap[dim] = ((1, kept[0]), (2, kept[1]))
    return DimRule(tuple(groups), swap=tuple(swap), shift=tuple(shift))


def elementwise_rule(node: Node, graph: Graph) -> DimRule:
    return _broadcast(node, graph)


def like_rule(node: Node, graph: Graph) -> DimRule:
    """A new tensor shaped like its input: every dim moves with the input's."""
    return _broadcast(node, graph)


def dropout_rule(node: Node, graph: Graph) -> DimRule | None:
    train = node.args[2] if len(node.args) > 2 else node.kwarg("train", False)
    return _broadcast(node, graph) if train is False else None


def linear_rule(node: Node, graph: Graph) -> DimRule | None:
    shapes = _shapes(node, graph)
    out = out_meta(node).shape
    if len(shapes[1]) != 2 or (
        len(shapes) > 2 and (len(shapes[2]) != 1 or not same_size(shapes[2][0], out[-1], graph))
    ):
        return None  # a vector weight drops the features; a broadcast bias is read whole
    rank = out_meta(node).rank
    groups: list[tuple[tuple[int, int], ...]] = [((0, j),) for j in range(rank - 1)]
    last = [(1, 0)] + ([(2, 0)] if len(tensor_inputs(node, graph)) > 2 else [])
    return DimRule((*groups, tuple(last)))


def mm_rule(node: Node, graph: Graph) -> DimRule:
    return DimRule((((0, 0),), ((1, 1),)))


def bmm_rule(node: Node, graph: Graph) -> DimRule:
    return DimRule((((0, 0), (1, 0)), ((0, 1),), ((1, 2),)))


def addmm_rule(node: Node, graph: Graph) -> DimRule:
    bias = _shapes(node, graph)[0]
    out = out_meta(node).shape
    rows = [(1, 0)] + ([(0, 0)] if len(bias) == 2 and same_size(bias[0], out[0], graph) else [])
    cols = [(2, 1)] + ([(0, len(bias) - 1)] if bias and same_size(bias[-1], out[1], graph) else [])
    return DimRule((tuple(rows), tuple(cols)))


def matmul_rule(node: Node, graph: Graph) -> DimRule | None:
    a, b = _shapes(node, graph)
    out = out_meta(node).shape
    if len(a) < 2 or len(b) < 2:
        return None
    groups = []
    for j in range(len(out) - 2):
        group = []
        for slot, shape in ((0, a), (1, b)):
            k = j - (len(out) - len(shape))
            if k >= 0 and same_size(shape[k], out[j], graph):
                group.append((slot, k))
        groups.append(tuple(group))
    groups.append(((0, len(a) - 2),))
    groups.append(((1, len(b) - 1),))
    return DimRule(tuple(groups))


def softmax_rule(node: Node, graph: Graph) -> DimRule:
    rank = out_meta(node).rank
    return _identity_except(node, graph, {_norm_dim(node.args[1], rank)})


def layer_norm_rule(node: Node, graph: Graph) -> DimRule:
    rank = out_meta(node).rank
    normalized = len(node.args[1])
    return _identity_except(node, graph, set(range(rank - normalized, rank)))


def triangle_rule(node: Node, graph: Graph) -> DimRule:
    """Position-dependent on the last two dims, but a slice of rows is the same triangle with
    its diagonal moved by the slice's start (up for rows, down for columns)."""
    rank = out_meta(node).rank
    offset: list[tuple[tuple[int, int, int], ...]] = [() for _ in range(rank)]
    offset[rank - 2] = ((1, 1, 0),)
    offset[rank - 1] = ((1, -1, 0),)
    groups = tuple(((0, j),) for j in range(rank))
    return DimRule(groups, offset=tuple(offset))


def factory_rule(node: Node, graph: Graph) -> DimRule:
    """A filled tensor has no inputs: a chunk of it is the same fill at the chunk's length."""
    rank = out_meta(node).rank
    return DimRule(tuple(() for _ in range(rank)), tuple(((0, j),) for j in range(rank)))


def view_rule(node: Node, graph: Graph) -> DimRule:
    """A dim the reshape keeps moves with itself. A dim it splits (tokens into image rows and
    columns) moves with its outermost part, `inner` rows of the input to each output row; a
    run of dims it merges moves with the outermost, each output row `1 / inner` of an input
    row (NOTE [Rows of tokens])."""
    (source,) = _shapes(node, graph)
    target = out_meta(node).shape
    groups: list[tuple[tuple[int, int], ...]] = [() for _ in target]
    resize: list[tuple[ArgPath, ...]] = [() for _ in target]
    halos: list[tuple[tuple[int, int, int, Any], ...]] = [() for _ in target]
    for ins, outs in _factor(source, target, graph):
        big_in = [k for k in ins if evaluate(source[k], graph.hints) != 1]
        big_out = [j for j in outs if evaluate(target[j], graph.hints) != 1]
        if not big_in or not big_out or (len(big_in) > 1 and len(big_out) > 1):
            continue
        j = big_out[0]
        groups[j] = ((0, big_in[0]),)
        resize[j] = ((1, j),)
        if len(big_out) > 1:  # split: output row r is input rows [r * inner, (r + 1) * inner)
            halos[j] = ((0, 0, 0, _product(target[k] for k in big_out[1:])),)
        elif len(big_in) > 1:  # merged: output rows [r * inner, (r + 1) * inner) are row r
            inner = _product(source[k] for k in big_in[1:])
            halos[j] = ((0, 0, 0, Fraction(1, inner) if isinstance(inner, int) else 1 / inner),)
    if node.target.overloadpacket is aten.flatten:  # its arguments name dims, not sizes
        return DimRule(tuple(groups), halo=tuple(halos))
    if node.target.overloadpacket is aten.unflatten:  # `sizes` gives the split dim's parts
        first = _norm_dim(schema_arg(node, "dim"), len(source))
        count = len(schema_arg(node, "sizes"))
        resize = [
            ((2, j - first),) if groups[j] and first <= j < first + count else ()
            for j in range(len(target))
        ]
    return DimRule(tuple(groups), tuple(resize), halo=tuple(halos))


def _product(sizes: Any) -> Size:
    total: Any = 1
    for size in sizes:
        total = total * size
    return total if isinstance(total, int) else sympy.expand(total)


def _factor(
    source: tuple[Size, ...], target: tuple[Size, ...], graph: Graph
) -> list[tuple[list[int], list[int]]]:
    """Split a reshape into groups of input and output dims with equal products."""
    sizes_in = [evaluate(s, graph.hints) for s in source]
    sizes_out = [evaluate(s, graph.hints) for s in target]
    groups = []
    i = j = 0
    while i < len(sizes_in) or j < len(sizes_out):
        ins, outs, p_in, p_out = [], [], 1, 1
        while True:
            if p_in <= p_out and i < len(sizes_in) and (not ins or p_in != p_out):
                p_in *= sizes_in[i]
                ins.append(i)
                i += 1
            elif j < len(sizes_out) and (not outs or p_in != p_out):
                p_out *= sizes_out[j]
                outs.append(j)
                j += 1
            else:
                break
        groups.append((ins, outs))
    return groups


def transpose_rule(node: Node, graph: Graph) -> DimRule:
    rank = out_meta(node).rank
    a, b = (_norm_dim(d, rank) for d in node.args[1:3])
    order = list(range(rank))
    order[a], order[b] = order[b], order[a]
    return DimRule(tuple(((0, k),) for k in order))


def t_rule(node: Node, graph: Graph) -> DimRule:
    rank = out_meta(node).rank
    return DimRule(tuple(((0, k),) for k in reversed(range(rank))))


def permute_rule(node: Node, graph: Graph) -> DimRule:
    rank = out_meta(node).rank
    return DimRule(tuple(((0, _norm_dim(k, rank)),) for k in node.args[1]))


def unsqueeze_rule(node: Node, graph: Graph) -> DimRule:
    rank = out_meta(node).rank
    new = _norm_dim(node.args[1], rank)
    return DimRule(tuple(() if j == new else ((0, j if j < new else j - 1),) for j in range(rank)))


def squeeze_rule(node: Node, graph: Graph) -> DimRule | None:
    # squeeze drops a listed dim whenever it has size 1 at run time, so a listed dim that is kept
    # must not be cut (a chunk of length 1 would vanish); with no list that is every dim
    (source,) = _shapes(node, graph)
    if len(node.args) < 2:
        return None
    dims = node.args[1]
    dims = {_norm_dim(d, len(source)) for d in ([dims] if isinstance(dims, int) else dims)}
    ones = {k for k in dims if evaluate(source[k], graph.hints) == 1}
    kept = [k for k in range(len(source)) if k not in ones]
    return DimRule(tuple(() if k in dims else ((0, k),) for k in kept))


def expand_rule(node: Node, graph: Graph) -> DimRule:
    (source,) = _shapes(node, graph)
    out = out_meta(node).shape
    groups, resize = [], []
    for j, size in enumerate(out):
        k = j - (len(out) - len(source))
        moves = k >= 0 and same_size(source[k], size, graph)
        groups.append(((0, k),) if moves else ())
        resize.append(((1, j),) if moves else ())
    return DimRule(tuple(groups), tuple(resize))


def split_rule(node: Node, graph: Graph) -> DimRule:
    (source,) = _shapes(node, graph)
    dim = node.args[2] if len(node.args) > 2 else node.kwarg("dim", 0)
    if node.target.overloadpacket is aten.unbind:
        dim = node.args[1] if len(node.args) > 1 else node.kwarg("dim", 0)
        gone = _norm_dim(dim, len(source))
        return DimRule(tuple(((0, k),) for k in range(len(source)) if k != gone))
    return _identity_except(node, graph, {_norm_dim(dim, len(source))})


def getitem_rule(node: Node, graph: Graph) -> DimRule | None:
    if not isinstance(graph[node.args[0].name].meta, tuple):
        return None
    return DimRule(tuple(((0, j),) for j in range(out_meta(node).rank)))


def slice_rule(node: Node, graph: Graph) -> DimRule:
    (source,) = _shapes(node, graph)
    args = list(node.args) + [None] * (5 - len(node.args))
    dim = _norm_dim(args[1] or 0, len(source))
    start, end, step = args[2] or 0, args[3], args[4] or 1
    full = (
        start == 0
        and step == 1
        and (end is None or (isinstance(end, int) and end >= evaluate(source[dim], graph.hints)))
    )
    return _identity_except(node, graph, set() if full else {dim})


def select_rule(node: Node, graph: Graph) -> DimRule:
    (source,) = _shapes(node, graph)
    gone = _norm_dim(node.args[1], len(source))
    return DimRule(tuple(((0, k),) for k in range(len(source)) if k != gone))


def embedding_rule(node: Node, graph: Graph) -> DimRule:
    rank = out_meta(node).rank
    return DimRule((*(((1, j),) for j in range(rank - 1)), ((0, 1),)))


def index_rule(node: Node, graph: Graph) -> DimRule | None:
    """`x[i0, i1, ...]` with index tensors (a gather, like embedding): the leading output dims are
    the indices' broadcast shape and move with the indices that are not broadcast there; x is
    read whole along the indexed dims, and its remaining dims follow."""
    indices = node.args[1]
    if any(not isinstance(index, Ref) for index in indices):
        return None  # `None` entries (x[:, i]) put the gathered dims elsewhere: not modelled
    source, *shapes = _shapes(node, graph)
    out = out_meta(node).shape
    lead = len(out) - (len(source) - len(indices))
    groups = []
    for j in range(lead):
        group = []
        for slot, shape in enumerate(shapes, start=1):
            axis = j - (lead - len(shape))
            if axis >= 0 and same_size(shape[axis], out[j], graph):
                group.append((slot, axis))
        groups.append(tuple(group))
    groups.extend(((0, len(indices) + k),) for k in range(len(out) - lead))
    return DimRule(tuple(groups))


def reduce_rule(node: Node, graph: Graph) -> DimRule | None:
    (source,) = _shapes(node, graph)
    dims = schema_arg(node, "dim")
    if dims is None or dims == []:
        return None  # a full reduction mixes everything
    dims = [dims] if isinstance(dims, int) else dims
    reduced = {_norm_dim(d, len(source)) for d in dims}
    keep = schema_arg(node, "keepdim", False)  # var.dim and std.dim put `unbiased` before it
    if keep:
        return DimRule(tuple(() if k in reduced else ((0, k),) for k in range(len(source))))
    return DimRule(tuple(((0, k),) for k in range(len(source)) if k not in reduced))


def baddbmm_rule(node: Node, graph: Graph) -> DimRule:
    bias, left, right = _shapes(node, graph)
    out = out_meta(node).shape

    def with_bias(j: int, pairs: list[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
        k = j - (len(out) - len(bias))
        if k >= 0 and same_size(bias[k], out[j], graph):
            pairs.append((0, k))
        return tuple(pairs)

    return DimRule((with_bias(0, [(1, 0), (2, 0)]), with_bias(1, [(1, 1)]), with_bias(2, [(2, 2)])))


def einsum_rule(node: Node, graph: Graph) -> DimRule | None:
    """Letters kept in the output move together; summed letters are mixed."""
    equation = node.args[0].replace(" ", "")
    if "->" not in equation:
        return None  # implicit output: letters in alphabetical order, rare in models
    lhs, output = equation.split("->")
    operands = lhs.split(",")
    shapes = _shapes(node, graph)
    if len(operands) != len(shapes):
        return None
    if any(len(set(o.replace("...", ""))) < len(o.replace("...", "")) for o in operands):
        return None  # a letter twice in one operand takes a diagonal: both dims cut at once
    out_shape = out_meta(node).shape
    ellipsis = max(
        (len(s) - len(o.replace("...", "")) for o, s in zip(operands, shapes)), default=0
    )

    def expand(letters: str, rank: int) -> list[str]:
        head, dots, tail = letters.partition("...")
        count = rank - len(head) - len(tail) if dots else 0
        return [*head, *(f"...{i + ellipsis - count}" for i in range(count)), *tail]

    out_letters = expand(output, len(out_shape))
    groups = []
    for j, letter in enumerate(out_letters):
        group = []
        for slot, (letters, shape) in enumerate(zip(operands, shapes)):
            for k, own in enumerate(expand(letters, len(shape))):
                if own == letter and same_size(shape[k], out_shape[j], graph):
                    group.append((slot, k))
        groups.append(tuple(group))
    return DimRule(tuple(groups))


def group_norm_rule(node: Node, graph: Graph) -> DimRule | None:
    """Statistics span a group's channels and every spatial position: the batch is free, and
    the spatial dims move once the statistics are taken from the whole input before the loop
    (NOTE [Statistics before the loop])."""
    if node.target.overloadpacket is aten.native_group_norm:
        return None  # its batch size is an argument (N), and a resize only reaches list items
    rank = out_meta(node).rank
    whole = tuple(() if axis < 2 else (0,) for axis in range(rank))
    return DimRule(_identity_except(node, graph, {1}).groups, whole=whole)


def conv_rule(node: Node, graph: Graph) -> DimRule | None:
    """Batch is free, output channels follow the weight's rows; a spatial dim moves with the
    input's, reading a halo (NOTE [Halos]), when the stride is 1 and the output is as long as
    the input, or when the stride is larger (each output row then reads `stride` input rows)."""
    shapes = _shapes(node, graph)
    x, weight = shapes[0], shapes[1]
    has_bias = len(shapes) > 2
    groups_arg = schema_arg(node, "groups", 1)
    if node.target.overloadpacket is aten.convolution and schema_arg(node, "transposed", False):
        return None
    if len(x) < len(weight):
        return None  # an unbatched input: its first dim is the channels
    stride = schema_arg(node, "stride", [1])
    padding = schema_arg(node, "padding", [0])
    dilation = schema_arg(node, "dilation", [1])
    kernel = [evaluate(size, graph.hints) for size in weight[2:]]
    channels = ((1, 0), (2, 0)) if has_bias else ((1, 0),)
    return _windowed(
        node, graph, kernel, stride, padding, dilation, channels if groups_arg == 1 else ()
    )


def conv_transpose_rule(node: Node, graph: Graph) -> DimRule | None:
    """A transposed convolution (stride s, padding p, dilation d, kernel k): batch is free,
    output channels follow the weight's second dim. Input row i reaches output rows
    i*s - p + j*d for taps j < k, so output rows [a, b) read input rows
    [a//s - floor((d(k-1) - p)/s), ceil(b/s) + floor((p - 1)/s) + 1): a window of stride 1/s
    (NOTE [Halos]). A spatial dim moves when the output is exactly s times the input
    (d(k-1) + output_padding + 1 - 2p == s: the usual 4-wide, stride-2, padding-1 upsampler).
    The op run on a slice from input row r puts its outputs from row s*r, as the whole run
    does; the rows next to the slice's cuts miss taps from outside it, and are cropped."""
    shapes = _shapes(node, graph)
    x, weight = shapes[0], shapes[1]
    if len(x) < len(weight):
        return None  # an unbatched input: its first dim is the channels
    out = out_meta(node).shape
    rank = len(out)
    stride = schema_arg(node, "stride", [1])
    padding = schema_arg(node, "padding", [0])
    extra = schema_arg(node, "output_padding", [0])
    dilation = schema_arg(node, "dilation", [1])
    single = schema_arg(node, "groups", 1) == 1
    channels = ((1, 1), (2, 0)) if len(shapes) > 2 else ((1, 1),)
    groups: list[tuple[tuple[int, int], ...]] = [((0, 0),), channels if single else ()]
    halos: list[tuple[tuple[int, int, int, Any], ...]] = [(), ()]
    first = rank - (len(weight) - 2)
    for axis in range(first, rank):
        i = axis - first
        reach = (_pick(dilation, i) or 1) * (evaluate(weight[axis], graph.hints) - 1)
        step, pad, more = _pick(stride, i), _pick(padding, i), _pick(extra, i) or 0
        moves = (
            isinstance(step, int)
            and isinstance(pad, int)
            and reach + more + 1 - 2 * pad == step
            and same_size(out[axis], step * x[axis], graph)
        )
        groups.append(((0, axis),) if moves else ())
        halos.append(
            ((0, max(0, (reach - pad) // step), (pad - 1) // step + 1, Fraction(1, step)),)
            if moves
            else ()
        )
    return DimRule(tuple(groups), halo=tuple(halos))


def pool_rule(node: Node, graph: Graph) -> DimRule | None:
    """A max or average pool: batch and channels move; each spatial dim moves with the
    input's, through a window as a convolution's (NOTE [Halos])."""
    (x,) = _shapes(node, graph)
    kernel = list(schema_arg(node, "kernel_size"))
    if len(x) < len(kernel) + 2:
        return None  # an unbatched input
    stride = list(schema_arg(node, "stride", []) or kernel)
    padding = schema_arg(node, "padding", [0])
    dilation = schema_arg(node, "dilation", [1])
    return _windowed(node, graph, kernel, stride, padding, dilation, ((0, 1),))


def _windowed(
    node: Node,
    graph: Graph,
    kernel: list[int],
    stride: Any,
    padding: Any,
    dilation: Any,
    channels: tuple[tuple[int, int], ...],
) -> DimRule:
    """The rule of an op sliding a window over its spatial dims (the last len(kernel)):
    output rows [a, b) read input rows [s*a - p, (b - 1)*s - p + d*(k - 1) + 1). The first is
    taken down to a multiple of the stride, so that the op run on the slice puts its outputs
    where the whole run does (NOTE [Halos]). A stride-1 dim moves only when the output is as
    long as the input."""
    x = _shapes(node, graph)[0]
    out = out_meta(node).shape
    rank = len(out)
    groups: list[tuple[tuple[int, int], ...]] = [((0, 0),), channels]
    halos: list[tuple[tuple[int, int, int, int], ...]] = [(), ()]
    first = rank - len(kernel)
    for axis in range(first, rank):
        i = axis - first
        reach = (_pick(dilation, i) or 1) * (kernel[i] - 1)
        step = _pick(stride, i)
        pad = _pick(padding, i) if not isinstance(padding, str) else _named_padding(padding, reach)
        if not isinstance(step, int) or step < 1 or pad is None:
            moves = False
        elif step == 1:
            moves = 2 * pad == reach and same_size(x[axis], out[axis], graph)
        else:
            moves = True
        groups.append(((0, axis),) if moves else ())
        if moves and (pad or reach or step > 1):
            before = step * -(-pad // step)
            halos.append(((0, before, max(0, reach - pad + 1 - step), step),))
        else:
            halos.append(())
    return DimRule(tuple(groups), halo=tuple(halos))


def _named_padding(padding: str, reach: int) -> int | None:
    """Rows of padding on each side for `padding="valid"` or `"same"` (None when uneven)."""
    if padding == "valid":
        return 0
    return reach // 2 if padding == "same" and reach % 2 == 0 else None


def batch_norm_rule(node: Node, graph: Graph) -> DimRule | None:
    """In inference a batch norm scales each channel by its running statistics: every
    position moves with the input's; the channels are left whole (the statistics and the
    affine weights would have to be sliced with them)."""
    if schema_arg(node, "training", True) is not False:
        return None
    return _identity_except(node, graph, {1})


def _pick(values: Any, index: int) -> Any:
    if isinstance(values, int):
        return values
    values = list(values)
    return values[index] if index < len(values) else values[-1] if values else None


def upsample_rule(node: Node, graph: Graph) -> DimRule:
    """Batch and channels move. Nearest upsampling by a whole factor f moves a spatial dim too:
    output rows [a, b) repeat input rows [a // f, ceil(b / f)), a window of stride 1/f (NOTE
    [Halos]). Bilinear upsampling by a whole factor (`align_corners=False`) blends input rows
    `floor((o + 0.5) / f - 0.5)` and the one after, clamped at the edges: output rows [a, b)
    read input rows [a // f - 1, ceil(b / f) + 1), one more on each side. A slice's own
    clamping at its cut edges changes only the rows within f / 2 of them, inside the halo's,
    and those are cropped. Other resizing (to a given size, corners aligned) mixes the
    spatial dims. A resampling to a given size that is a whole factor of the input's in every
    spatial dim (`F.interpolate(x, size=skip.shape[2:])`) indexes its input exactly as the
    resampling by those factors does (the kernel's scale is the input's size over the
    output's, 1/f either way): a chunk runs by the factors, its size left to follow the slice."""
    rank = out_meta(node).rank
    groups = list(_identity_except(node, graph, set(range(2, rank))).groups)
    halos: list[tuple[tuple[int, int, int, Any], ...]] = [() for _ in range(rank)]
    swap: list[tuple[tuple[int, Any], ...]] = [() for _ in range(rank)]
    if node.target in _NEAREST:
        wide = 0
    elif node.target in _LINEAR and not schema_arg(node, "align_corners", True):
        wide = 1
    else:
        return DimRule(tuple(groups))
    (x,) = _shapes(node, graph)
    out = out_meta(node).shape
    factors = schema_arg(node, "scale_factors")
    if schema_arg(node, "output_size") is not None:
        sized = [
            evaluate(o, graph.hints) / max(evaluate(i, graph.hints), 1)
            for o, i in zip(out[2:], x[2:])
        ]
        if not all(float(f).is_integer() and f >= 1 for f in sized):
            return DimRule(tuple(groups))
        factors = [float(f) for f in sized]
        names = [a.name for a in node.target._schema.arguments]
        replaced = ((names.index("output_size"), None), (names.index("scale_factors"), factors))
        swap = [() if axis < 2 else replaced for axis in range(rank)]
    if factors is None:
        return DimRule(tuple(groups))
    for axis in range(2, rank):
        factor = _pick(factors, axis - 2)
        whole = isinstance(factor, (int, float)) and factor >= 1 and float(factor).is_integer()
        if whole and same_size(out[axis], int(factor) * x[axis], graph):
            groups[axis] = ((0, axis),)
            halos[axis] = ((0, wide, wide, Fraction(1, int(factor))),)
    return DimRule(tuple(groups), halo=tuple(halos), swap=tuple(swap))


#: the nearest upsamplings by scale factors
_NEAREST = (
    aten.upsample_nearest1d.vec,
    aten.upsample_nearest2d.vec,
    aten.upsample_nearest3d.vec,
)
#: the linear ones (each output row blends two input rows per dim)
_LINEAR = (
    aten.upsample_linear1d.vec,
    aten.upsample_bilinear2d.vec,
    aten.upsample_trilinear3d.vec,
)


def cat_rule(node: Node, graph: Graph) -> DimRule | None:
    shapes = _shapes(node, graph)
    out = out_meta(node).shape
    dim = _norm_dim(schema_arg(node, "dim", 0), len(out))
    groups = []
    for j in range(len(out)):
        if j == dim:
            groups.append(())
            continue
        group = [(slot, j) for slot, shape in enumerate(shapes) if len(shape) == len(out)]
        groups.append(tuple(group))
    return DimRule(tuple(groups))


def sdpa_rule(node: Node, graph: Graph) -> DimRule | None:
    """Batch and head dims move with q, k, v and the mask; the query length moves with q and
    the mask's rows; keys are mixed, and so are the value's features (the fused kernel would
    redo the whole attention for each chunk). With `is_causal` and as many queries as keys,
    the queries move too: a chunk of them runs with the keys up to its last query and their
    own causal mask (`analysis.causal.causal_rows`, NOTE [Causal key truncation])."""
    shapes = _shapes(node, graph)
    q, k, v = shapes[:3]
    mask = shapes[3] if len(shapes) > 3 else None
    out = out_meta(node).shape
    causal = schema_arg(node, "is_causal", False)
    gqa = schema_arg(node, "enable_gqa", False)
    groups = []
    for j in range(len(out) - 2):
        group = []
        if gqa and j == len(out) - 3:  # query head h reads key head h // (heads / key heads)
            groups.append(())
            continue
        for slot, shape in ((0, q), (1, k), (2, v), (3, mask)):
            if shape is None:
                continue
            axis = j - (len(out) - len(shape))
            if axis >= 0 and same_size(shape[axis], out[j], graph):
                group.append((slot, axis))
        groups.append(tuple(group))
    square = same_size(q[-2], k[-2], graph)
    rows = [(0, len(q) - 2)] if not causal or (mask is None and square) else []
    if mask is not None and not causal and len(mask) >= 2 and same_size(mask[-2], out[-2], graph):
        rows.append((3, len(mask) - 2))
    groups.append(tuple(rows))
    groups.append(())  # the value's features: each chunk would recompute all of the attention
    return DimRule(tuple(groups))


__all__ = ["DimRule", "out_meta", "same_size", "schema_arg", "tensor_inputs"]
