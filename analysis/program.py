"""The loop program: the plan lowered once into the statements the generated forward runs.

NOTE [Loop program]
Selection decides which stretches run as loops; lowering (`analysis.lower`) decides, once, how
every statement of a loop reads its operands (the chunk the loop made, a slice of a value from
before the loop, or the value whole), which statements overwrite their operand in place, which
keys a chunk skips, and how size arguments follow the chunk. The memory estimate, the cost model
and the emitter read those decisions from here; none of them decides again. The full program
(`Program`) adds what only the emitter needs: every value's name, where each name is freed,
the run-time budget and chunk-size formulas. Values are frozen; arguments hold structured
markers (`Operand`, `ChunkLength`, `ChunkStart`), never source text.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field, replace
from fractions import Fraction
from typing import Any, Callable, Union

import sympy

from analysis.ir import Size, Source, TensorMeta
from analysis.plan import Region

#: where a loop statement's operand comes from
CHUNK, OUTER, COPY = "chunk", "outer", "copy"


def split_scale(scale: Any) -> tuple[int, Any]:
    """A value's rows per row of the loop as (a whole factor, a unit): `(2, 1)` for a value
    before a stride-2 conv, `(1, 8*w)` for tokens that are image rows of `8*w` each (NOTE
    [Rows of tokens])."""
    if isinstance(scale, (int, Fraction)):
        if scale != int(scale):
            raise ValueError(f"a value at {scale} rows per row of the loop")
        return int(scale), 1
    value = sympy.sympify(scale)
    if value.is_Integer:
        return int(value), 1
    if value.is_Rational:
        raise ValueError(f"a value at {value} rows per row of the loop")
    return 1, value


@functools.lru_cache(maxsize=4096)
def divided(a: Any, b: Any) -> Any:
    """`a / b`, simplified: sizes in tokens over tokens per row (NOTE [Rows of tokens])."""
    return sympy.cancel(sympy.sympify(a) / sympy.sympify(b))


def ratio(a: Any, b: Any) -> Fraction | None:
    """`a / b` as a fraction, or None when it depends on the sizes."""
    value = divided(a, b)
    return Fraction(int(value.p), int(value.q)) if value.is_Rational else None


def in_units(rows: int, unit: Any) -> int:
    """Whole units that cover `rows` rows: a symbolic unit is at least one row, so `rows`
    units always do (more than needed, cropped like any halo)."""
    if unit == 1 or not rows:
        return rows
    return -(-rows // unit) if isinstance(unit, int) else rows


def widened(
    before: int, after: int, scale: Any, halo: tuple[int, int, Any]
) -> tuple[int, int, Any]:
    """The rows an op making rows [scale * start - before, scale * stop + after) of its output
    reads of an input through its window `halo` (before, after, stride): as (before, after,
    scale) of the input, in the input's units (NOTE [Halos])."""
    wide_before, wide_after, stride = halo
    if isinstance(scale, int) and isinstance(stride, (int, Fraction)):  # no unit: as numbers
        total = scale * Fraction(stride)
        if total.denominator != 1:
            raise ValueError(f"a span at scale {scale} read with stride {stride}")
        return (
            math.ceil(stride * before) + wide_before,
            math.ceil(stride * after) + wide_after,
            int(total),
        )
    c, unit = split_scale(scale)
    total = sympy.sympify(scale) * sympy.sympify(stride)
    new_c, new_unit = split_scale(total)
    step = ratio(sympy.sympify(stride) * unit, new_unit)
    if step is None:
        raise ValueError(f"a span at scale {scale} read with stride {stride}")
    return (
        math.ceil(step * before) + in_units(wide_before, new_unit),
        math.ceil(step * after) + in_units(wide_after, new_unit),
        new_c if new_unit == 1 else total,
    )


@dataclass(frozen=True, slots=True)
class Span:
    """Rows of a loop value along the loop's dim: `scale * start - before` to `scale * stop +
    after`, clipped to the value's length, and to its end on the last chunk (NOTE [Halos]);
    all of it times `unit`, for a value whose rows are tokens (NOTE [Rows of tokens])."""

    #: rows before the chunk's first (at the value's scale, in its units)
    before: int = 0
    #: rows after its last
    after: int = 0
    #: the value's rows per row of the loop (a value before a stride-2 conv has 2)
    scale: int = 1
    #: the value's length along the dim, where the scale or the unit is above 1 (its end on
    #: the last chunk)
    size: Any = None
    #: the value's rows per unit: tokens per image row (`8*w`), for a value whose rows a view
    #: makes into image rows; then the scale is 1, and the value's length `unit` times the
    #: loop's
    unit: Any = 1
    #: rows on from `scale * start`, counted round the value's length (NOTE [Cyclic shifts])
    shift: int = 0

    def __post_init__(self) -> None:
        if self.shift and (self.before or self.after or self.unit != 1):
            raise ValueError(f"a shifted span with a halo or a unit: {self}")
        if self.before < 0 or self.after < 0 or self.scale < 1:
            raise ValueError(f"a span reaches outside the chunk's rows, not inside: {self}")
        if (self.scale > 1 or self.unit != 1) != (self.size is not None):
            raise ValueError(f"a span at scale {self.scale} needs the value's length: {self}")
        if self.unit != 1 and self.scale != 1:
            raise ValueError(f"a span of units at a scale: {self}")

    @property
    def total_scale(self) -> Any:
        """The value's rows per row of the loop."""
        return self.scale if self.unit == 1 else self.unit

    def read(self, halo: tuple[int, int, Any], size: Callable[[], Any], moved: int = 0) -> Span:
        """Return the rows an op making these rows reads of an input, through its window
        `(before, after, stride)`, moving rows on by `moved` (a roll's; NOTE [Cyclic shifts]);
        `size()` is the input's length."""
        before, after, scale = widened(self.before, self.after, self.total_scale, halo)
        span = span_at(before, after, scale, size)
        if not (self.shift or moved):
            return span
        shift = self.shift * Fraction(halo[2]) - moved
        if shift.denominator != 1:
            raise ValueError(f"a shift of {self.shift} rows read with stride {halo[2]}")
        return replace(span, shift=int(shift))

    def rows(self, chunk: int, size: int, extent: int | None = None) -> int:
        """Return the most rows (units) the span covers with chunks of `chunk` rows, of `size`
        rows (units). Given the loop's `extent`, a loop of two chunks counts each one's halo on
        its inner side only: the first chunk starts at the value's edge, the last ends at
        it."""
        most = min(self.scale * chunk + self.before + self.after, size)
        if extent is None or not chunk < extent <= 2 * chunk:
            return most
        first = min(self.scale * chunk + self.after, size)
        last = min(size - self.scale * chunk + self.before, size)
        return max(first, last)

    def units(self, size: Any) -> Any:
        """The value's length `size` in its units."""
        return size if self.unit == 1 else divided(size, self.unit)

    @property
    def own(self) -> Span:
        """The chunk's own rows at this span's scale and unit."""
        return replace(self, before=0, after=0)


def span_at(before: int, after: int, scale: Any, size: Callable[[], Any]) -> Span:
    """The span of a value at `scale` rows per row of the loop (a whole factor, or a unit of
    tokens per image row), of length `size()` (asked only at a scale or unit)."""
    c, unit = split_scale(scale)
    return Span(before, after, c, size() if c > 1 or unit != 1 else None, unit)


#: the chunk's own rows
CHUNK_ROWS = Span()


@dataclass(frozen=True, slots=True)
class Operand:
    """One tensor operand of a loop statement, as each chunk reads it."""

    #: the graph value read
    value: str
    #: its slot among the op's tensor inputs (NOTE [Dimension flow])
    slot: int
    #: CHUNK (made by this loop: the current chunk), OUTER (made before the loop) or COPY (its
    #: contiguous copy, made before the loop)
    source: str
    #: the dim read as the chunk's rows (`start:stop`); None when read whole
    rows: int | None = None
    #: the dim cut to the keys the chunk can see (NOTE [Causal key truncation])
    keys: int | None = None
    #: the rows read, along `rows` (or, for a chunk, `crop`) (NOTE [Halos])
    span: Span = CHUNK_ROWS
    #: for a chunk made over more rows than read: its dim, and the rows it was made over
    crop: tuple[int, Span] | None = None

    def __post_init__(self) -> None:
        if self.source not in (CHUNK, OUTER, COPY):
            raise ValueError(f"operand {self.value}: unknown source {self.source!r}")
        if self.source == CHUNK and self.rows is not None:
            raise ValueError(f"operand {self.value}: a chunk is never sliced again")
        if self.crop is not None and (self.source != CHUNK or self.crop[1] == self.span):
            raise ValueError(f"operand {self.value}: only a chunk made over other rows is cropped")


@dataclass(frozen=True, slots=True)
class CausalRows:
    """A query chunk's causal attention over the keys up to its last query: the step runs as
    the template's `_causal_attention(q, k, v, start)`, and this argument is its `start`. It
    stands in for `is_causal=True`, which would align the chunk's first query with the first
    key."""


@dataclass(frozen=True, slots=True)
class ChunkLength:
    """A size argument of the chunked dim: the chunk's length, `stop - start`."""


@dataclass(frozen=True, slots=True)
class ChunkStart:
    """An offset that moves with the chunk's first row: `base + sign * start` (tril's
    diagonal: row r of a chunk is row start + r of the whole)."""

    #: the offset the whole op had
    base: int
    #: +1 or -1
    sign: int


@dataclass(frozen=True, slots=True)
class LoopStep:
    """One statement of a loop body, run once per chunk."""

    #: the graph node it computes
    node: str
    #: the dim of its result that is chunked
    dim: int
    #: the op it runs: the node's, or its in-place form
    target: Any
    #: arguments, with Operand for tensor inputs and ChunkLength/ChunkStart for chunk sizes
    args: tuple[Any, ...]
    #: keyword arguments, in order, with the same markers
    kwargs: tuple[tuple[str, Any], ...]
    #: the tensor operands, by slot
    operands: tuple[Operand, ...]
    #: the slot of the operand it overwrites in place (NOTE [In-place in loops]), if any
    inplace: int | None = None
    #: the step sees only the keys up to `stop + keys` (NOTE [Causal key truncation]), if cut
    keys: int | None = None
    #: and only those from `start + window` on (a sliding window, `window` <= 0), if cut there
    window: int | None = None
    #: the path of the `torch.nn` layer that runs the step, called as a module
    layer: str | None = None
    #: the rows of its result that later steps read (NOTE [Halos])
    span: Span = CHUNK_ROWS
    #: the rows the op computes, reading its inputs' halos: cropped to `span` when wider
    computed: Span = CHUNK_ROWS

    def operand(self, slot: int) -> Operand | None:
        return next((o for o in self.operands if o.slot == slot), None)


@dataclass(frozen=True, slots=True)
class SumStep:
    """A product over the chunked dim, added chunk by chunk into its sum (NOTE [Sums over the
    chunks]): `_add_linear(total, chunk, weight[:, rows])` after the step making `chunk`."""

    #: the product (a linear), and the graph value its sum is after the loop (its add's)
    node: str
    value: str
    #: the chunk it reads, and its weight's slice along the input features
    chunk: Operand
    weight: Operand
    #: the bias, and the value the sum starts from (a residual), added before the loop
    bias: str | None = None
    added: str | None = None
    #: whether the sum takes `added`'s storage, which nothing reads after (NOTE [Outputs in
    #: place]), and whether only while no hook could keep it
    overwrites: bool = False
    unless_hooked: bool = False

    def __post_init__(self) -> None:
        if self.chunk.source != CHUNK or self.weight.source != OUTER or self.weight.rows != 1:
            raise ValueError(f"sum {self.node}: a chunk times its slice of the weight's columns")
        if self.overwrites and self.added is None:
            raise ValueError(f"sum {self.node}: only a value it starts from can take the sum")
        if self.unless_hooked and not self.overwrites:
            raise ValueError(f"sum {self.node}: a hook guards only a sum taking a value's place")
        if (self.added is None) != (self.value == self.node):
            raise ValueError(f"sum {self.node}: its value is its add's exactly when it has one")


@dataclass(frozen=True, slots=True)
class StatisticsPass:
    """A first pass of the loop that makes a group norm's input chunk by chunk and reduces its
    statistics, before the main loop normalizes with them (NOTE [Statistics passes])."""

    #: the group norm, and the loop value it normalizes
    norm: str
    value: str
    #: the main loop's steps that make the value, in order (the value's last)
    steps: tuple[LoopStep, ...]
    #: the rows the pass reduces: the chunk's own, at the value's scale
    rows: Span = CHUNK_ROWS


@dataclass(frozen=True)
class LoopRegion:
    """A region with its loop lowered: what the estimate, the cost model and the emitter read."""

    #: the planned region
    region: Region
    #: the loop body, one step per loop node, in order
    steps: tuple[LoopStep, ...]
    #: the statistics passes run before the loop, in order (NOTE [Statistics passes])
    passes: tuple[StatisticsPass, ...] = ()
    #: outputs written into the storage of a value the loop reads for the last time, row by
    #: row, instead of a buffer of their own: (output, value, only while nothing is hooked)
    #: (NOTE [Outputs in place])
    reuses: tuple[tuple[str, str, bool], ...] = ()
    #: the sums over the chunks, in order (NOTE [Sums over the chunks])
    sums: tuple[SumStep, ...] = ()

    def sums_after(self, node: str) -> tuple[SumStep, ...]:
        """The sums that add a chunk into their total right after the step making `node`."""
        return tuple(total for total in self.sums if total.chunk.value == node)

    def with_chunk_size(self, chunk_size: int) -> LoopRegion:
        return replace(self, region=self.region.with_chunk_size(chunk_size))


# ------------------------------------------------------------------ the full program
@dataclass(frozen=True, slots=True)
class Attr:
    """A parameter or buffer of the module, by its qualified name."""

    fqn: str


@dataclass(frozen=True, slots=True)
class InputSize:
    """A dynamic dim read from an input: `(input.shape[axis] - offset) // scale`; with no axis,
    from a size passed as a number (NOTE [Sizes passed as numbers])."""

    input: str
    axis: int | None
    offset: int = 0
    scale: int = 1


@dataclass(frozen=True, slots=True)
class Budget:
    """The loops' byte budget (NOTE [Run-time chunk sizes]): the constructor's, else `share`
    of the original's estimated peak at this size, never below `example` nor `floor`."""

    share: float
    original_peak: sympy.Expr
    example: int
    floor: str | None = None
    #: whether child modules' loops read it too (through the shared holder)
    shared: bool = False


@dataclass(frozen=True, slots=True)
class Floor:
    """The most any loop holds at one row per chunk, plus 5%; with `planned`, at its planned
    chunk (a plan that misses its target keeps the chunks it chose)."""

    terms: tuple[sympy.Expr, ...]
    planned: bool = False


@dataclass(frozen=True, slots=True)
class Call:
    """An op applied to its arguments; references are graph names, resolved via `names`."""

    node: str
    target: Any
    args: tuple[Any, ...]
    kwargs: tuple[tuple[str, Any], ...]
    #: the result's layout, for the annotation
    meta: Any = None
    #: the path of the `torch.nn` layer that runs the op, called as a module
    layer: str | None = None


@dataclass(frozen=True, slots=True)
class SizeValue:
    """A size the model computes from its dims, written from the sizes this forward bound
    (a module computes its own instead of taking it as an argument)."""

    expr: sympy.Expr


@dataclass(frozen=True, slots=True)
class ModuleCall:
    """The call of a child module's generated forward (NOTE [Module scopes])."""

    #: the child's call ("blocks.0")
    call: str
    #: its path from the calling module ("blocks.0"; "attn" from within "blocks.0")
    path: str
    #: the graph values passed, in the child's parameter order
    args: tuple[str, ...]
    #: the graph values it returns, in order
    outputs: tuple[str, ...]
    #: the names the outputs are bound to
    targets: tuple[str, ...]
    #: when the module is an element of a ModuleList or Sequential: that container's length
    siblings: int | None = None


@dataclass(frozen=True, slots=True)
class TensorConstant:
    """A small tensor constant of the traced forward, written out."""

    values: Any
    meta: TensorMeta


@dataclass(frozen=True, slots=True)
class Contiguous:
    """A contiguous copy of a value, made once before a loop."""

    value: str
    #: whether the value is also sliced in the loop (so its base can be freed)
    sliced: bool


@dataclass(frozen=True, slots=True)
class Empty:
    """A loop output buffer, allocated whole before the loop."""

    meta: TensorMeta
    #: a value whose dtype the buffer takes (so a half-precision input gives a half buffer)
    dtype_of: str | None
    #: a value whose device the buffer takes; None: the inputs' device
    device_of: str | None


@dataclass(frozen=True, slots=True)
class Overwrite:
    """A loop output written into the storage of a value the loop reads for the last time, its
    own rows in each chunk (NOTE [Outputs in place]): no buffer of its own; `unless_hooked`:
    only while no forward hook could keep the value (`_hooked(self)`), else a buffer like it."""

    value: str
    unless_hooked: bool = False
    #: the output's shape, where it differs from the value's: the buffer is the value viewed
    #: in it (the same bytes per row of the loop), else None
    shape: tuple[Size, ...] | None = None


@dataclass(frozen=True, slots=True)
class Rows:
    """Rows per chunk at run time: `fixed + per_row * rows` within the budget."""

    fixed: sympy.Expr
    per_row: sympy.Expr
    planned: int
    extent: Any
    #: the same on the no-padding path, and the check that picks it (NOTE [Padding checked at
    #: run time]); None: one size for both
    fast: "Rows | None" = None
    check: str | None = None
    #: whether a CPU runs at most `planned` rows (cache-friendly); not for loops with halos,
    #: whose every chunk recomputes its halo rows (NOTE [Halos])
    capped: bool = True


@dataclass(frozen=True, slots=True)
class GroupStats:
    """A group norm's statistics over its whole input, taken before the loop that normalizes
    it chunk by chunk (NOTE [Statistics before the loop]): the template's `_group_stats`."""

    #: the graph value normalized, and the dim the reduction walks in chunks of `rows`
    value: str
    groups: int
    eps: float
    dim: int
    rows: Any
    #: the value's rows per row of the loop (NOTE [Halos])
    scale: int = 1


@dataclass(frozen=True, slots=True)
class NewStats:
    """Empty group statistics that a statistics pass fills (NOTE [Statistics passes]): the
    template's `_GroupStats(groups, eps)`."""

    groups: int
    eps: float


@dataclass(frozen=True, slots=True)
class AddStats:
    """A statistics pass adding its chunk's rows of the value (`stats.add(chunk)`)."""

    #: the name of the statistics, and the graph value whose chunk is added
    stats: str
    value: str
    dim: int
    #: the rows the chunk was made over, and the rows added
    made: Span
    rows: Span


@dataclass(frozen=True, slots=True)
class Stop:
    """The chunk's end: `min(start + rows, extent)`."""

    rows: Any
    extent: Any


@dataclass(frozen=True, slots=True)
class Bound:
    """One end of the rows a halo widens the chunk to (NOTE [Halos]): `max(scale * start -
    rows, 0)` before it, `min(scale * stop + rows, size)` after it (the whole `size` on the last
    chunk)."""

    #: True for the first row, False for the end
    before: bool
    rows: int
    extent: Any
    #: the value's rows per row of the loop, and its length where that is above 1
    scale: int = 1
    size: Any = None


@dataclass(frozen=True, slots=True)
class SumStart:
    """A sum's start, before its loop (NOTE [Sums over the chunks]): the value its add adds
    plus the bias (in that value's own storage when `overwrites`), else the bias alone, or
    zeros."""

    total: SumStep
    meta: TensorMeta
    #: a value whose dtype and device a sum with no value to start from takes
    like: str | None = None


@dataclass(frozen=True, slots=True)
class AddChunk:
    """A chunk's share of a sum, added into it (NOTE [Sums over the chunks])."""

    total: SumStep


@dataclass(frozen=True, slots=True)
class WriteChunk:
    """Copy a chunk into its rows of the loop's output buffer."""

    buffer: str
    dim: int
    chunk: str
    #: the rows the chunk was made over (NOTE [Halos])
    span: Span = CHUNK_ROWS


@dataclass(frozen=True, slots=True)
class UpdateBuffer:
    """The forward's write into a module buffer."""

    fqn: str
    value: str


@dataclass(frozen=True, slots=True)
class Return:
    """The model's outputs, in its output structure."""

    spec: Any
    values: tuple[Any, ...]


Expr = Union[
    InputSize, Budget, Floor, Call, TensorConstant, Contiguous, Empty, Overwrite, Rows, GroupStats, NewStats,
    AddStats, Stop,
    Bound, WriteChunk, SumStart, AddChunk,
    UpdateBuffer, Return, LoopStep, ModuleCall, SizeValue,
]  # fmt: skip


@dataclass(frozen=True)
class Statement:
    """One statement of the forward."""

    #: the name it binds, if any
    var: str | None
    #: what it computes
    expr: Expr
    #: the names it reads
    reads: frozenset[str] = frozenset()
    #: the model line it comes from
    source: Source | None = None
    #: the names freed right after it (their last use)
    frees: tuple[str, ...] = ()
    #: the region whose set-up it is (hoisted values, contiguous copies, output buffers, the
    #: chunk size), if any
    region: int | None = None


@dataclass(frozen=True)
class Block:
    """A chunk loop; the statements before it that belong to its region carry its index."""

    #: index of the region in the plan
    index: int
    #: the lowered region
    lowered: LoopRegion
    #: the loop's length, a size
    extent: Any
    #: rows per chunk: a name bound in `setup`, or the planned size
    rows: Any
    #: the body: `stop`, then one statement per step, and the writes into the buffers
    body: tuple[Statement, ...]
    #: the names the loop head reads
    reads: frozenset[str] = frozenset()
    #: the names freed right after the loop
    frees: tuple[str, ...] = ()
    #: graph value -> the name of its chunk, for values made in the loop
    chunks: dict[str, str] = field(default_factory=dict)
    #: graph value -> the name of its contiguous copy
    copies: dict[str, str] = field(default_factory=dict)
    #: loop node -> the name of its input's statistics (NOTE [Statistics before the loop])
    stats: dict[str, str] = field(default_factory=dict)
    #: (before, rows, scale) -> the name bound to that end of a span's rows (NOTE [Halos])
    bounds: dict[tuple[bool, int, int], str] = field(default_factory=dict)
    #: for a statistics pass: the group norm whose statistics it takes (NOTE [Statistics
    #: passes]); None for the region's loop
    statistics: str | None = None


@dataclass(frozen=True)
class Program:
    """The generated forward, ready to print."""

    #: the forward's parameters
    params: tuple[str, ...]
    #: statements and blocks, in order
    body: tuple[Statement | Block, ...]
    #: graph value -> its name in the forward (an Attr for parameters and buffers)
    names: dict[str, Any]
    #: dynamic-dim symbol -> its name in the forward
    symbols: dict[sympy.Symbol, str]
    #: the name whose `.device` new tensors go on ("" when no input is a tensor)
    device_of: str
    #: the name of the budget, when loops size their chunks at run time
    budget: str | None = None
    #: whether the outputs are built with the model's own output class
    output_class: bool = False
    #: the run-time chunk-size formulas the loops were lowered with, if any
    formulas: Any = None
    #: the model's standard `torch.nn` layers by path, built as themselves (`analysis.layers`)
    layers: dict[str, Any] = field(default_factory=dict)
    #: the module call this is the forward of ("" for the root) and its module's path
    call: str = ""
    path: str = ""
    #: on the root: the forward of every module call kept as a call, by call (NOTE [Module
    #: scopes])
    scopes: dict[str, "Program"] = field(default_factory=dict)
    #: on the root: module calls written inline in their parent, with the reason
    inlined: tuple[Any, ...] = ()

    @property
    def blocks(self) -> tuple[Block, ...]:
        """The chunk loops of this forward and, on the root, of every module's, by region
        (statistics passes aside)."""
        own = [item for item in self.body if isinstance(item, Block) and not item.statistics]
        own += [block for program in self.scopes.values() for block in program.blocks]
        return tuple(sorted(own, key=lambda block: block.index))


__all__ = [
    "AddChunk",
    "AddStats",
    "CHUNK",
    "CHUNK_ROWS",
    "COPY",
    "OUTER",
    "Attr",
    "Block",
    "Bound",
    "Budget",
    "Call",
    "CausalRows",
    "ChunkLength",
    "ChunkStart",
    "Contiguous",
    "Empty",
    "Overwrite",
    "Floor",
    "GroupStats",
    "InputSize",
    "LoopRegion",
    "LoopStep",
    "ModuleCall",
    "NewStats",
    "Operand",
    "Program",
    "Return",
    "Rows",
    "SizeValue",
    "Span",
    "Statement",
    "StatisticsPass",
    "SumStart",
    "SumStep",
    "Stop",
    "TensorConstant",
    "UpdateBuffer",
    "WriteChunk",
]
