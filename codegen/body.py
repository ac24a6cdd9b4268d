"""Print the loop program (NOTE [Loop program]) as the generated forward.

Every statement of the program becomes a `Line` (or a `Loop` with a body), with its comments:
the model line it comes from where that changes, and what each region saves. They are then
turned into libcst nodes. The program already says what each statement reads and where each
name is freed; nothing here decides that again.

NOTE [One chunk]
A loop sized at run time runs as one chunk where every row fits its budget (on a GPU with
memory to spare, or an input short enough). Its output buffers would then be a second copy of
each output, allocated and written once: the original makes none. So a buffer is allocated
(or a value the loop reads for the last time taken to be overwritten, NOTE [Outputs in place])
only when the loop runs more than one chunk (`out = torch.empty(...) if chunk < seq else
None`), and the one chunk's result becomes the output itself. The write into the buffer
follows as at every chunk, and copies nothing there: `copy_` returns at once where its source
is the very elements it would write (the chunk, or the same view of it). The output then has
the layout the original's had, where the buffer's was contiguous: the one chunk is made by the
original's ops over every row, from the same inputs or contiguous copies of them (a view the
code after the loop takes of it, as the original does, stays valid). At one chunk every span
is the whole length, so the chunk is exactly the output's rows. A buffer written at shifted
rows (NOTE [Cyclic shifts]), or by a loop of a fixed length and chunk, is allocated as before.
The planned estimate counts the buffer: at one chunk the module holds less than it says. `emit`
verifies this path as well as the example's chunks (`verify._one_chunk_mismatch`: every loop
sized at run time takes all its rows).
"""

from __future__ import annotations

import ast
import collections
import textwrap
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import libcst as cst
import sympy
import torch

from analysis.ir import Graph, Ref, Size, Source, TensorMeta, evaluate, out_meta, value_bytes
from analysis.plan import ChunkPlan, describe_lines, format_bytes, spatial_words, symbol_name
from analysis.program import (
    CHUNK,
    CHUNK_ROWS,
    COPY,
    AddChunk,
    AddStats,
    Attr,
    CausalRows,
    Block,
    Bound,
    Budget,
    Call,
    ChunkLength,
    ChunkStart,
    Contiguous,
    Empty,
    Overwrite,
    Floor,
    GroupStats,
    InputSize,
    LoopStep,
    ModuleCall,
    NewStats,
    Operand,
    Program,
    Return,
    Rows,
    SizeValue,
    Span,
    Statement,
    Stop,
    SumStart,
    TensorConstant,
    UpdateBuffer,
    WriteChunk,
)
from analysis.lower import exactly_scaled
from analysis.fastpath import NO_PADDING, is_padding_check
from analysis.names import size_code
from analysis.ops import info
from codegen.numbering import Numbering
from codegen.render import literal, render_call


@dataclass
class Line:
    """One printed statement and the comments above it."""

    code: str
    comments: list[str] = field(default_factory=list)
    #: the statement without its shape annotation, when it has one
    plain: str = ""


@dataclass
class Loop:
    """A chunk loop: the `for` head, its body, and the comments above it."""

    head: str
    body: list[Any]
    comments: list[str] = field(default_factory=list)
    #: a chunk loop (not a loop over a container's modules)
    chunk: bool = False


def _plain_size(expr: Any, names: Any) -> str:
    try:
        return size_code(expr, names)
    except TypeError:
        return str(expr)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def short_dtype(dtype: torch.dtype) -> str:
    names = {
        torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16", torch.float64: "f64",
        torch.int64: "i64", torch.int32: "i32", torch.bool: "b8", torch.uint8: "u8",
    }  # fmt: skip
    return names.get(dtype, str(dtype).removeprefix("torch."))


class ForwardPrinter:
    """Print a loop program (NOTE [Loop program]) as the generated forward's statements."""

    def __init__(
        self, graph: Graph, plan: ChunkPlan, program: Program, numbering: Numbering | None = None
    ) -> None:
        self.graph = graph
        self.plan = plan
        self.program = program
        #: how whole numbers are written (NOTE [One class per block])
        self.num = numbering or Numbering()
        self.device = f"{program.device_of}.device" if program.device_of else "None"
        self._cited: tuple[str, int] | None = None
        #: the last contiguous copy printed, while copies follow one another
        self._copied: Line | None = None
        #: the regions whose loops said what their halos are (a statistics pass's loop says it)
        self._halos_said: set[int] = set()
        #: how each kind of statement prints
        self._printers: dict[type, Any] = {
            Call: self._print_call,
            LoopStep: self._print_loopstep,
            InputSize: self._print_inputsize,
            Budget: self._print_budget,
            Floor: self._print_floor,
            TensorConstant: self._print_tensorconstant,
            Contiguous: self._print_contiguous,
            Empty: self._print_empty,
            Overwrite: self._print_overwrite,
            SumStart: self._print_sumstart,
            AddChunk: self._print_addchunk,
            Rows: self._print_rows,
            Stop: self._print_stop,
            GroupStats: self._print_groupstats,
            NewStats: self._print_newstats,
            AddStats: self._print_addstats,
            Bound: self._print_bound,
            WriteChunk: self._print_writechunk,
            UpdateBuffer: self._print_updatebuffer,
            Return: self._print_return,
            ModuleCall: self._print_modulecall,
            SizeValue: self._print_sizevalue,
        }
        #: per region, its first hoisted value after its header, found by `build`: the comment
        #: saying why it is out of the loop (values hoisted before anything else of the region
        #: come before the header, as the code before the loop they are)
        self._first_hoisted: dict[int | None, Statement] = {}

    # ---------------------------------------------------------------- values
    def sym(self, expr: sympy.Expr, annotation: bool = False) -> str:
        """Render a size expression over the dynamic-dim symbols as Python."""
        return size_code(expr, self.program.symbols, lambda v: self.num(v, annotation))

    def shape(self, shape: tuple[Size, ...]) -> str:
        inner = ", ".join(self.num(s) if isinstance(s, int) else self.sym(s) for s in shape)
        return f"({inner}{',' if len(shape) == 1 else ''})"

    def int_or(self, value: Any) -> str:
        """A whole number as the numbering writes it; anything else as an argument."""
        if isinstance(value, str):  # a name bound already
            return value
        return self.num(value) if _is_int(value) else self.arg_plain(value)

    def annotate(self, meta: Any, plain: bool = False) -> str:
        """`f32[1, seq, 256]`; a size this forward has no name for is written in the model's
        dims (`((height - 1) // 4) + 1`)."""
        if isinstance(meta, TensorMeta) and plain:  # for a comment: numbers as themselves
            names = {**{s.symbol: s.name for s in self.graph.symbols}, **self.program.symbols}
            dims = ", ".join(
                str(s) if isinstance(s, int) else _plain_size(s, names) for s in meta.shape
            )
            return f"{short_dtype(meta.dtype)}[{dims}]"
        if isinstance(meta, TensorMeta):
            self.num.begin_note()
            dims = ", ".join(
                self.num(s, True) if isinstance(s, int) else self._dim(s) for s in meta.shape
            )
            return "" if self.num.dropped else f"{short_dtype(meta.dtype)}[{dims}]"
        return ""

    def _dim(self, size: sympy.Expr) -> str:
        names: Any = self.program.symbols
        try:
            size_code(size, names)
        except TypeError:  # no name here: the model's dims
            names = {s.symbol: s.name for s in self.graph.symbols}
        return size_code(size, names, lambda v: self.num(v, True))

    def value(self, name: str) -> str:
        found = self.program.names[name]
        return self.attribute(found.fqn) if isinstance(found, Attr) else found

    def attribute(self, fqn: str) -> str:
        """`self.attn.qkv`: a submodule, parameter or buffer, from the module printed."""
        prefix = f"{self.program.path}." if self.program.path else ""
        assert fqn.startswith(prefix), f"{fqn} is not under {self.program.path}"
        return attribute_path(fqn[len(prefix) :])

    def arg_plain(self, value: Any) -> str:
        if _is_int(value):
            return self.num(value)
        if isinstance(value, Ref):
            return self.value(value.name)
        if isinstance(value, (list, tuple)):
            inner = ", ".join(self.arg_plain(v) for v in value)
            return (
                f"[{inner}]"
                if isinstance(value, list)
                else f"({inner}{',' if len(value) == 1 else ''})"
            )
        return literal(value, self.sym, self.device)

    def arg_chunk(self, value: Any, step: LoopStep, block: Block) -> str:
        """Render an argument of a loop step: operands as their chunk, slice or whole value."""
        if _is_int(value):
            return self.num(value)
        if isinstance(value, Operand):
            return self.operand(value, step, block)
        if isinstance(value, ChunkLength):
            rows = replace(step.computed, unit=1, size=None) if step.computed.unit != 1 else None
            if rows is not None:  # rows of tokens (NOTE [Rows of tokens])
                length = f"{self.end(rows, block)} - {self.first(rows, block)}"
                return self._units(f"({length})", step.computed)
            if exactly_scaled(step.computed, block.extent, self.graph):  # a head's features
                return f"{self.num(step.computed.scale)} * (stop - start)"
            return f"{self.end(step.computed, block)} - {self.first(step.computed, block)}"
        if isinstance(value, CausalRows):  # `_causal_attention`'s first row
            return "start"
        if isinstance(value, ChunkStart):
            if not value.base:
                return "start" if value.sign > 0 else "-start"
            return f"{self.num(value.base)} {'+' if value.sign > 0 else '-'} start"
        if isinstance(value, Ref):
            return self.value(value.name)  # a size: symbolic ints are never chunked
        if isinstance(value, (list, tuple)):
            inner = ", ".join(self.arg_chunk(v, step, block) for v in value)
            return f"[{inner}]" if isinstance(value, list) else f"({inner},)"
        return literal(value, self.sym, self.device)

    def operand(self, read: Operand, step: LoopStep, block: Block) -> str:
        """Render one tensor operand of a loop step: its chunk, a slice, or it whole; a key
        cut also drops the keys a causal mask hides from the chunk."""
        if read.source == CHUNK:
            code = block.chunks[read.value]
        elif read.source == COPY:
            code = block.copies[read.value]
        else:
            code = self.value(read.value)
        cuts = {}
        if read.rows is not None and read.span.shift:  # NOTE [Cyclic shifts]
            first = _moved(self.first(read.span, block), read.span.shift)
            end = _moved(self.end(read.span, block), read.span.shift)
            code = f"_wrapped({code}, {read.rows}, {first}, {end})"
        elif read.rows is not None:
            cuts[read.rows] = f"{self.first(read.span, block)}:{self.end(read.span, block)}"
        if read.crop is not None:
            cuts[read.crop[0]] = self.crop(read.span, read.crop[1], block)
        if read.keys is not None:
            end = f"stop + {self.num(step.keys)}" if step.keys else "stop"
            begin = "" if step.window is None else f"max(start - {self.num(-step.window)}, 0)"
            cuts[read.keys] = f"{begin}:{end}"
        return _index_expr(code, cuts)

    def first(self, span: Span, block: Block) -> str:
        """The first row of a span (NOTE [Halos]), in rows of tokens where it has a unit (NOTE
        [Rows of tokens])."""
        if not span.before and span.scale == 1:
            return self._units("start", span)
        if exactly_scaled(span, block.extent, self.graph):  # a head's features
            return f"{self.num(span.scale)} * start"
        return self._units(block.bounds[(True, span.before, span.scale)], span)

    def end(self, span: Span, block: Block) -> str:
        """The end of a span's rows."""
        if not span.after and span.scale == 1:
            return self._units("stop", span)
        if exactly_scaled(span, block.extent, self.graph):
            return f"{self.num(span.scale)} * stop"
        return self._units(block.bounds[(False, span.after, span.scale)], span)

    def _units(self, row: str, span: Span) -> str:
        return row if span.unit == 1 else f"{row} * {self.int_or(span.unit)}"

    def crop(self, span: Span, made: Span, block: Block) -> str:
        """The slice of a value made over `made`'s rows that holds `span`'s."""
        if span.unit != 1 and span.unit == made.unit:  # (lo_1 - lo_2) * width
            rows = replace(span, unit=1, size=None), replace(made, unit=1, size=None)
            cuts = self.crop(*rows, block).split(":")
            first, end = (f"({cut})" if "-" in cut else cut for cut in cuts)
            return f"{self._units(first, span) if first else ''}:{self._units(end, span)}"
        origin = self.first(made, block)
        first, end = self.first(span, block), self.end(span, block)
        return f"{first} - {origin}:{end} - {origin}" if origin != first else f":{end} - {origin}"

    def _cite(self, source: Source | None) -> list[str]:
        if source is None:
            return []
        key = (source.file, source.line)
        if key == self._cited:
            return []
        self._cited = key
        return [source.cite()]

    # ---------------------------------------------------------------- layout
    def build(self) -> tuple[list[str], list[Any]]:
        """Return the forward's parameter names and its body items."""
        items: list[Any] = []
        opened: set[int] = set()
        body = list(self.program.body)
        while body:
            item = body.pop(0)
            run = _chained_run(item, body)
            if run:  # `for block in self.blocks: x = block(x)`
                items.append(self._module_loop([item, *run]))
                del body[: len(run)]
                continue
            region = item.index if isinstance(item, Block) else item.region
            if _hoisted(item) and region not in opened:  # code before the loop's own
                items.extend(self._item(item))
            elif region is not None and region not in opened:  # the region opens with its header
                opened.add(region)
                self._cited = None
                first = len(items)
                items.extend(self._item(item))
                items[first].comments = self._header(region) + items[first].comments
            else:
                if _hoisted(item):
                    self._first_hoisted.setdefault(region, item)
                items.extend(self._item(item))
            if isinstance(item, Block):
                self._cited = None
        return list(self.program.params), items

    def _module_loop(self, run: list[Statement]) -> Loop:
        """One call of every module of a container, each reading the one before's output."""
        first = run[0].expr
        container = first.path.rpartition(".")[0]
        leaf = container.rpartition(".")[2]
        var = leaf[:-1] if leaf.endswith("s") and len(leaf) > 1 else "module"
        taken = {n for n in self.program.names.values() if isinstance(n, str)}
        taken |= set(self.program.symbols.values()) | set(self.program.params)
        while var in taken or not var.isidentifier():
            var = f"{var}_"
        call = self._print_modulecall(run[0], None)
        code = call.code.replace(f"{attribute_path(first.path)}(", f"{var}(", 1)
        return Loop(f"for {var} in {attribute_path(container)}:", [Line(code)])

    def _item(self, item: Any, block: Block | None = None) -> list[Any]:
        if not (isinstance(item, Statement) and isinstance(item.expr, Contiguous)):
            self._copied = None
        if isinstance(item, Block):
            out: list[Any] = [self._loop(item)]
        else:
            out = [self._statement(item, block)]
        if item.frees:
            out.append(Line(f"del {', '.join(item.frees)}"))
        return out

    def _statement(self, statement: Statement, block: Block | None = None) -> Line:
        printer = self._printers.get(type(statement.expr))
        if printer is None:
            raise TypeError(f"cannot print {type(statement.expr).__name__}")
        return printer(statement, block)

    def _print_call(self, statement: Statement, block: Block | None) -> Line:
        expr = statement.expr
        if NO_PADDING in dict(expr.kwargs):
            code = _padding_checked_call(expr, self.arg_plain, chunked_rows=False)
        else:
            code = self._layer_call(expr, self.arg_plain) or render_call(expr, self.arg_plain)
        note = self.annotate(expr.meta)
        comments = self._cite(statement.source)
        if is_padding_check(self.graph[expr.node]):
            comments = [
                "No padding: the attention masks below are then exactly causal, so each runs",
                "as eager does, `is_causal` with no mask (NOTE [Padding checked at run time]).",
            ]
        if statement is self._first_hoisted.get(statement.region):
            comments = ["Hoisted: the next values do not depend on the chunk.", *comments]
        return _annotated(statement.var, note, code, comments)

    def _print_loopstep(self, statement: Statement, block: Block | None) -> Line:
        expr = statement.expr
        assert block is not None, "a loop step outside its loop"
        arg = lambda value: self.arg_chunk(value, expr, block)  # noqa: E731
        if expr.node in block.stats:  # NOTE [Statistics before the loop]
            code = _group_norm_call(expr, arg, block.stats[expr.node])
        elif any(isinstance(value, CausalRows) for value in expr.args):
            code = _causal_call(expr, arg)
        elif NO_PADDING in dict(expr.kwargs):
            code = _padding_checked_call(expr, arg, chunked_rows=expr.keys is not None)
        else:
            code = self._layer_call(expr, arg) or render_call(expr, arg)
        if expr.computed != expr.span:  # rows that read made-up padding go (NOTE [Halos])
            code = _index_expr(_atom(code), {expr.dim: self.crop(expr.span, expr.computed, block)})
        return Line(f"{statement.var} = {code}", self._cite(statement.source))

    def _print_inputsize(self, statement: Statement, block: Block | None) -> Line:
        expr = statement.expr
        size = expr.input if expr.axis is None else f"{expr.input}.shape[{self.num(expr.axis)}]"
        if expr.offset:
            size = (
                f"({size} - {self.num(expr.offset)})"
                if expr.offset > 0
                else f"({size} + {self.num(-expr.offset)})"
            )
        if expr.scale != 1:
            size = f"{size} // {self.num(expr.scale)}"
        return Line(f"{statement.var} = {size}")

    def _print_floor(self, statement: Statement, block: Block | None) -> Line:
        terms = ", ".join(self.sym(t) for t in statement.expr.terms)
        why = (
            [
                "The most a loop holds at its planned chunk, plus 5%: the plan misses its",
                "target, and the peak is there anyway, so every loop may use as much.",
            ]
            if statement.expr.planned
            else [
                "The most a loop holds at one row per chunk, plus 5%. Where that is over the",
                "budget the peak is there anyway, and the other loops may use as much.",
            ]
        )
        most = f"max({terms})" if len(statement.expr.terms) > 1 else f"({terms})"
        return Line(f"{statement.var} = {most} * 21 // 20", why)

    def _print_tensorconstant(self, statement: Statement, block: Block | None) -> Line:
        meta = statement.expr.meta
        code = (
            f"{statement.var} = torch.tensor({self.arg_plain(statement.expr.values)}, "
            f"dtype={meta.dtype}, device={self.device})"
        )
        if meta.numel(self.graph.hints) == 0:  # [] alone would lose the shape
            code += f".reshape({self.shape(meta.shape)})"
        return Line(code, ["A tensor constant of the traced forward, written out."])

    def _print_contiguous(self, statement: Statement, block: Block | None) -> Line:
        expr = statement.expr
        one, each = _COPY_COMMENTS[expr.sliced]
        line = Line(f"{statement.var} = {self.value(expr.value)}.contiguous()", [one])
        before = self._copied
        if before is not None and before.comments[-1:] in ([one], [each]):
            before.comments[-1] = each  # one comment for copies made together
            line.comments = []
        else:
            self._copied = line
        return line

    def _print_empty(self, statement: Statement, block: Block | None) -> Line:
        expr = statement.expr
        block = self._block(statement.region)
        named = lambda value: block.copies.get(value) or self.value(value)  # noqa: E731
        like = f"{named(expr.dtype_of)}.dtype" if expr.dtype_of else str(expr.meta.dtype)
        device = f"{named(expr.device_of)}.device" if expr.device_of else self.device
        shape = self.shape(expr.meta.shape)
        code = f"torch.empty({shape}, dtype={like}, device={device})"
        if expr.dtype_of and named(expr.dtype_of) == named(expr.device_of):
            code = f"{named(expr.dtype_of)}.new_empty({shape})"  # its dtype, on its device
        return self._allocated(statement.var, code, block)

    def _block(self, region: int) -> Block:
        """The loop block of a region."""
        return next(b for b in self.program.blocks if b.index == region)

    def _allocated(
        self,
        var: str,
        code: str,
        block: Block,
        comments: list[str] | None = None,
        conditional: bool = False,
    ) -> Line:
        """`var = code`, a loop's output buffer; where the loop may run as one chunk, made
        only when it runs more (NOTE [One chunk]): an `if` statement where `code` is a
        conditional expression itself."""
        comments = list(comments or [])
        if not self._one_chunk(var, block):
            return Line(f"{var} = {code}", comments)
        rows, extent = self.int_or(block.rows), self.arg_plain(block.extent)
        if conditional:
            return Line(
                f"if {rows} < {extent}:\n    {var} = {code}\nelse:\n    {var} = None", comments
            )
        return Line(f"{var} = {code} if {rows} < {extent} else None", comments)

    def _one_chunk(self, buffer: str, block: Block) -> bool:
        """Whether the loop's one chunk, where every row fits, is its output `buffer` itself
        (NOTE [One chunk]): the loop's rows or its length are known at run time only, and the
        buffer takes one write, at the chunk's own rows."""
        if _is_int(block.rows) and isinstance(block.extent, (int, sympy.Integer)):
            return False
        writes = [
            s.expr for s in block.body if isinstance(s.expr, WriteChunk) and s.expr.buffer == buffer
        ]
        return len(writes) == 1 and not writes[0].span.shift

    def _print_overwrite(self, statement: Statement, block: Block | None) -> Line:
        expr = statement.expr
        value = self.value(expr.value)  # NOTE [Outputs in place]
        viewed = f"{value}.view{self.shape(expr.shape)}" if expr.shape else value
        block = self._block(statement.region)
        if not expr.unless_hooked:
            if not self._one_chunk(statement.var, block):
                return Line(
                    f"{statement.var} = {viewed}  # overwritten: nothing reads {value} after"
                )
            said = [f"Overwrites {value}, which nothing reads after."]
            return self._allocated(statement.var, viewed, block, said)
        other = f"torch.empty_like({value})" + (
            f".view{self.shape(expr.shape)}" if expr.shape else ""
        )
        said = [f"Overwrites {value}, which nothing reads after, unless a hook may keep it."]
        code = f"{viewed} if not _hooked(self) else {other}"
        return self._allocated(statement.var, code, block, said, conditional=True)

    def _print_sumstart(self, statement: Statement, block: Block | None) -> Line:
        """A sum's start (NOTE [Sums over the chunks]): the value the block adds the product
        to, plus its bias, in that value's own storage where nothing reads it after."""
        expr, var = statement.expr, statement.var
        total = expr.total
        bias = self.value(total.bias) if total.bias is not None else None
        said = f"A sum over the chunks: each adds its share of {self._layer_of(total.node)} into"
        if total.added is None:
            shape = self.shape(expr.meta.shape)
            if bias is not None:
                code = f"{bias}.expand({shape}).contiguous()"
                return Line(f"{var} = {code}", _wrapped(f"{said} {var}, from the bias."))
            like = self.value(expr.like) if expr.like else None
            dtype = f"{like}.dtype" if like else str(expr.meta.dtype)
            device = f"{like}.device" if like else self.device
            code = f"torch.zeros({shape}, dtype={dtype}, device={device})"
            return Line(f"{var} = {code}", _wrapped(f"{said} {var}, from zeros."))
        added = self.value(total.added)
        fresh = f"{added} + {bias}" if bias else f"{added}.clone()"
        kept = f"{added}.add_({bias})" if bias else added
        plus = " plus the bias" if bias else ""
        if not total.overwrites:
            return Line(f"{var} = {fresh}", _wrapped(f"{said} {var}, from {added}{plus}."))
        said = f"{said} {var}, from {added}{plus}, in its place: nothing reads it after"
        if total.unless_hooked:
            code = f"{var} = {kept} if not _hooked(self) else {fresh}"
            return Line(code, _wrapped(f"{said}, unless a hook may keep it."))
        return Line(f"{var} = {kept}", _wrapped(f"{said}."))

    def _layer_of(self, node: str) -> str:
        """A product's layer in the forward's terms (`self.out_proj`), else its value."""
        path = self.graph[node].module_path
        prefix = f"{self.program.path}." if self.program.path else ""
        if path and path.startswith(prefix):
            return attribute_path(path[len(prefix) :])
        return node

    def _print_addchunk(self, statement: Statement, block: Block | None) -> Line:
        total = statement.expr.total
        assert block is not None, "a sum's chunk outside its loop"
        chunk = block.chunks[total.chunk.value]
        weight = self.operand(total.weight, None, block)  # type: ignore[arg-type]
        target = self.value(total.value)
        return Line(f"_add_linear({target}, {chunk}, {weight})", self._cite(statement.source))

    def _print_rows(self, statement: Statement, block: Block | None) -> Line:
        expr = statement.expr
        comments = [
            "Rows per chunk: the most whose bytes (fixed, then per row) fit the budget; on a",
            "CPU at most the planned rows (cache-friendly), on a GPU all that fit.",
        ]
        if not expr.capped:
            comments = [
                "Rows per chunk: the most whose bytes (fixed, then per row) fit the budget; each",
                "chunk recomputes its halo rows, so the fewer chunks the better.",
            ]
        code = f"{statement.var} = {self._rows_call(expr)}"
        if expr.fast is not None:
            check = self.value(expr.check)
            comments.append(
                f"With no padding (`{check}`) the attention holds no mask: more rows fit."
            )
            code = f"{statement.var} = {self._rows_call(expr.fast)} if {check} else {self._rows_call(expr)}"
        return Line(code, comments)

    def _rows_call(self, expr: Any) -> str:
        fixed, per_row = self.sym(expr.fixed), self.sym(expr.per_row)
        extent = self.arg_plain(expr.extent)
        on_cpu = f"{device_of}.is_cpu" if (device_of := self.program.device_of) else "False"
        most = f"{self.num(expr.planned)} if {on_cpu} else {extent}"
        if not expr.capped:
            most = extent
        return f"_rows({self.program.budget}, {fixed}, {per_row}, {most})"

    def _print_groupstats(self, statement: Statement, block: Block | None) -> Line:
        expr = statement.expr
        rows = self.int_or(expr.rows)
        if expr.scale != 1:
            rows = f"{self.int_or(expr.scale)} * {rows}"
        code = (
            f"_group_stats({self.value(expr.value)}, {self.num(expr.groups)}, "
            f"{self.num(expr.eps)}, {self.num(expr.dim)}, {rows})"
        )
        comments = [
            "Statistics of the whole input first: the group norm in the loop below",
            "normalizes each chunk with them (two passes, not `self.norm(chunk)`).",
            *self._cite(statement.source),
        ]
        return Line(f"{statement.var} = {code}", comments)

    def _print_newstats(self, statement: Statement, block: Block | None) -> Line:
        expr = statement.expr
        code = f"{statement.var} = _GroupStats({self.num(expr.groups)}, {self.num(expr.eps)})"
        comments = [
            "Statistics first: the group norm in the loop below normalizes every row of its",
            "input with them, and that loop makes the input. This pass makes each chunk's rows",
            "of it and adds them up, so it is never held whole (two passes, not",
            "`self.norm(chunk)`).",
            *self._cite(statement.source),
        ]
        return Line(code, comments)

    def _print_addstats(self, statement: Statement, block: Block | None) -> Line:
        expr = statement.expr
        assert block is not None, "a statistics pass's sum outside its loop"
        chunk = block.chunks[expr.value]
        if expr.made != expr.rows:
            chunk = _index_expr(chunk, {expr.dim: self.crop(expr.rows, expr.made, block)})
        return Line(f"{expr.stats}.add({chunk})")

    def _print_stop(self, statement: Statement, block: Block | None) -> Line:
        expr = statement.expr
        return Line(f"stop = min(start + {self.int_or(expr.rows)}, {self.arg_plain(expr.extent)})")

    def _print_writechunk(self, statement: Statement, block: Block | None) -> Line:
        expr = statement.expr
        chunk, rows = expr.chunk, "start:stop"
        if expr.span.shift:  # NOTE [Cyclic shifts]
            assert block is not None, "a buffer write outside its loop"
            first = _moved(self.first(expr.span, block), expr.span.shift)
            return Line(f"_write_wrapped({expr.buffer}, {expr.dim}, {first}, {chunk})")
        if expr.span != CHUNK_ROWS:
            assert block is not None, "a buffer write outside its loop"
            own = expr.span.own
            rows = f"{self.first(own, block)}:{self.end(own, block)}"
            if own != expr.span:
                chunk = _index_expr(chunk, {expr.dim: self.crop(own, expr.span, block)})
        write = f"{_index_expr(expr.buffer, {expr.dim: rows})} = {chunk}"
        if block is None or not self._one_chunk(expr.buffer, block):
            return Line(write)
        buffer = expr.buffer  # NOTE [One chunk]
        return Line(
            f"if {buffer} is None:  # one chunk: the output itself (NOTE [One chunk])\n"
            f"    {buffer} = {chunk}\n{write}"
        )

    def _print_bound(self, statement: Statement, block: Block | None) -> Line:
        expr = statement.expr
        assert block is not None, "a halo's bound outside its loop"
        first = next(s for s in block.body if isinstance(s.expr, Bound))
        comments = []
        if statement is first and block.index not in self._halos_said:
            self._halos_said.add(block.index)
            bounds = [s.expr for s in block.body if isinstance(s.expr, Bound)]
            halos = _HALO_COMMENT if any(bound.rows for bound in bounds) else []
            comments = halos + (_SCALE_COMMENT if any(b.scale > 1 for b in bounds) else [])
        extent = self.arg_plain(expr.extent)
        if expr.scale == 1:
            if expr.before:
                return Line(f"{statement.var} = max(start - {self.num(expr.rows)}, 0)", comments)
            return Line(f"{statement.var} = min(stop + {self.num(expr.rows)}, {extent})", comments)
        scale, size = self.num(expr.scale), self.arg_plain(expr.size)
        if expr.before:
            code = (
                f"max({scale} * start - {self.num(expr.rows)}, 0)"
                if expr.rows
                else f"{scale} * start"
            )
        else:
            more = f" + {self.num(expr.rows)}" if expr.rows else ""
            code = f"min({scale} * stop{more}, {size}) if stop < {extent} else {size}"
        return Line(f"{statement.var} = {code}", comments)

    def _print_updatebuffer(self, statement: Statement, block: Block | None) -> Line:
        expr = statement.expr
        code = f"{self.attribute(expr.fqn)}.copy_({self.value(expr.value)})"
        return Line(code, [f"the forward updates buffer {expr.fqn}"])

    def _print_return(self, statement: Statement, block: Block | None) -> Line:
        flat = [self.arg_plain(v) for v in statement.expr.values]
        if statement.expr.spec is None:  # a module's forward: its values, as a tuple if many
            return Line(f"return {', '.join(flat)}" if flat else "return None")
        return Line(f"return {_unflatten(statement.expr.spec, iter(flat))}")

    def _print_sizevalue(self, statement: Statement, block: Block | None) -> Line:
        return Line(f"{statement.var} = {self.sym(statement.expr.expr)}")

    def _print_modulecall(self, statement: Statement, block: Block | None) -> Line:
        expr = statement.expr
        args = ", ".join(self.value(name) for name in expr.args)
        code = f"{attribute_path(expr.path)}({args})"
        if not expr.targets:
            return Line(code)
        if len(expr.targets) == 1:
            note = self.annotate(self.graph[expr.outputs[0]].meta)
            return _annotated(expr.targets[0], note, code)
        return Line(f"{', '.join(expr.targets)} = {code}")

    def _layer_call(self, op: Call | LoopStep, arg: Any) -> str | None:
        """`self.blocks[0].mlp.fc(x)`: the op run as the call of the layer that ran it."""
        if op.layer is None:
            return None
        layer = info(op.target).layer
        assert layer is not None, f"{op.target} is no layer's forward"
        return f"{self.attribute(op.layer)}({arg(op.args[layer[1]])})"

    def _print_budget(self, statement: Statement, block: Block | None) -> Line:
        """`budget = ...`: the constructor's budget, else the plan's share of the original's
        estimated peak at this input's size; never below what the hungriest loop needs."""
        var, budget = statement.var, statement.expr
        original = self.sym(budget.original_peak)
        wanted = (
            f"_budget(self.memory_budget, {self.device}, "
            f"max(int({budget.share:.4g} * ({original})), {budget.example}))"
        )
        if budget.floor is not None:
            wanted = f"max({budget.floor}, {wanted})"
        if budget.shared:  # the submodules' loops read it from the holder they share
            var = f"{var} = self._chunking.budget" if var else "self._chunking.budget"
        comments = [
            "The loops' activation bytes: the constructor's budget, else "
            f"{budget.share:.0%} of the original's",
            "estimated peak at this size, never less than at the example's "
            f"({format_bytes(budget.example)}).",
        ]
        return Line(f"{var} = {wanted}", comments)

    def _loop(self, block: Block) -> Loop:
        self._cited = None
        extent = self.arg_plain(block.extent)
        body: list[Any] = []
        for statement in block.body:
            body.extend(self._item(statement, block))
        head = f"for start in range(0, {extent}, {self.int_or(block.rows)}):"
        return Loop(head, body, self._tokens_comment(block), chunk=True)

    def _tokens_comment(self, block: Block) -> list[str]:
        """What a loop over image rows does with tokens (NOTE [Rows of tokens])."""
        units = []
        for statement in block.body:
            if isinstance(statement.expr, LoopStep):
                spans = [statement.expr.span, *(o.span for o in statement.expr.operands)]
                units += [self.int_or(span.unit) for span in spans if span.unit != 1]
        if not units:
            return []
        each = " or ".join(f"`{unit}`" for unit in dict.fromkeys(units))
        text = (
            f"Tokens are read and made by whole rows of the image, {each} to a row (the "
            f"model views them as rows and columns, or windows): rows `start:stop` are "
            f"tokens `start * {units[0]} : stop * {units[0]}`."
        )
        return textwrap.wrap(text, 88)

    def _header(self, index: int) -> list[str]:
        """The comments that open a region: where it comes from, what it saves, what it skips."""
        graph = self.graph
        block = self._block(index)
        region = block.lowered.region
        where = describe_lines(region, graph)
        dim_name = symbol_name(region.extent, graph)
        over = f"`{dim_name}`" if dim_name else f"a dim of length {self.arg_plain(region.extent)}"
        spatial = spatial_words(region, graph)
        if spatial is not None:
            over = f"{spatial.partition(' (')[0]}, {over}"
        biggest = max(region.loop, key=lambda p: value_bytes(graph[p[0]].meta, graph.hints))
        full = value_bytes(graph[biggest[0]].meta, graph.hints)
        n = max(evaluate(region.extent, graph.hints), 1)
        header = [
            f"Chunk loop ({where}), over {over}.",
            f"{self.annotate(out_meta(graph[biggest[0]]), plain=True)} {format_bytes(full)} -> "
            f"{format_bytes(full * min(region.chunk_size, n) / n)} per chunk of "
            f"{region.chunk_size}.",
        ]
        steps = block.lowered.steps
        methods = [f"`{s.target.__name__.split('.')[0]}`" for s in steps if s.inplace is not None]
        if methods:
            header.append(
                f"In place, on chunks nothing else reads: {', '.join(dict.fromkeys(methods))}."
            )
        if any(step.window is not None for step in steps):
            header.append(
                "Sliding window: each chunk attends only the keys from its first query's window "
                "to its last query (NOTE [Causal key truncation])."
            )
        elif any(step.keys is not None for step in steps):
            header.append(
                "Causal mask: each chunk attends only the keys up to its last query "
                "(NOTE [Causal key truncation])."
            )
        return header


#: the longest statement, indented as a forward's, that keeps its shape annotation
ANNOTATED_WIDTH = 88 - 8


#: a contiguous copy's comment, by whether the copy lets a larger value go: for one copy, and
#: said once for copies made one after another
_COPY_COMMENTS = {
    True: (
        "Copied contiguous once, so the larger value it views can be freed.",
        "Each copied contiguous once, so the larger values they view can be freed.",
    ),
    False: (
        "Copied contiguous once: a matmul in the loop would copy it every chunk.",
        "Each copied contiguous once: a matmul in the loop would copy each every chunk.",
    ),
}


def _annotated(var: str, note: str, code: str, comments: list[str] | None = None) -> Line:
    """`x: "f32[1, seq, 256]" = code`: the shape annotation, unless it would make black wrap
    the statement."""
    annotated, plain = f"{var}: {note!r} = {code}", f"{var} = {code}"
    if note and len(annotated) <= ANNOTATED_WIDTH:
        return Line(annotated, comments or [], plain)
    return Line(plain, comments or [])


def _causal_call(step: LoopStep, arg: Callable[[Any], str]) -> str:
    """A query chunk's causal attention (`CausalRows`): the template's `_causal_attention`
    over the query, key and value chunks and the chunk's first row, with the call's options."""
    rendered = [arg(value) for value in step.args]
    rendered += [f"{key}={arg(value)}" for key, value in step.kwargs]
    return f"_causal_attention({', '.join(rendered)})"


def _group_norm_call(step: LoopStep, arg: Callable[[Any], str], stats: str) -> str:
    """A chunk of a group norm, normalized with the statistics of its whole input (the
    template's `_group_norm`)."""
    x, groups, weight, bias = (list(step.args) + [None] * 4)[:4]
    return f"_group_norm({arg(x)}, {arg(groups)}, {stats}, {arg(weight)}, {arg(bias)})"


def _padding_checked_call(op: Any, arg: Callable[[Any], str], chunked_rows: bool) -> str:
    """An SDPA call whose mask is causal where the run-time check `no_padding` holds (NOTE
    [Padding checked at run time]): the template's `_attention(q, k, v, mask, no_padding)`,
    with the chunk's first row when the loop runs over the queries, and the call's options."""
    kwargs = dict(op.kwargs)
    mask = op.args[3] if len(op.args) > 3 else kwargs.pop("attn_mask")
    kwargs.pop("attn_mask", None)
    check = kwargs.pop(NO_PADDING)
    if not kwargs.get("dropout_p"):
        kwargs.pop("dropout_p", None)
    kwargs.pop("is_causal", None)  # False: the mask says it
    rendered = [arg(value) for value in (*op.args[:3], mask, check)]
    rendered += ["start"] if chunked_rows else []
    rendered += [f"{key}={arg(value)}" for key, value in kwargs.items()]
    return f"_attention({', '.join(rendered)})"


def _hoisted(item: Any) -> bool:
    """Whether a body item is a value of a loop's stretch made outside the loop (it does not
    depend on the chunk)."""
    return isinstance(item, Statement) and item.region is not None and isinstance(item.expr, Call)


def _chained_run(item: Any, rest: list[Any]) -> list[Statement]:
    """The statements after `item` that with it call every module of one container in order,
    each `x = container[i](x, ...)` on the same names and nothing freed between: [] if none."""
    if not (isinstance(item, Statement) and isinstance(item.expr, ModuleCall)):
        return []
    first = item.expr
    container, _, index = first.path.rpartition(".")
    if index != "0" or not first.siblings or first.siblings < 2 or item.frees:
        return []
    if not first.targets or not set(first.targets) <= set(_arg_names(item)):
        return []
    run = []
    for position, following in enumerate(rest[: first.siblings - 1], 1):
        if not (isinstance(following, Statement) and isinstance(following.expr, ModuleCall)):
            return []
        expr = following.expr
        same = (
            expr.path == f"{container}.{position}"
            and expr.targets == first.targets
            and _arg_names(following) == _arg_names(item)
            and not following.frees
        )
        if not same:
            return []
        run.append(following)
    return run if len(run) == first.siblings - 1 else []


def _arg_names(statement: Statement) -> tuple[str, ...]:
    return tuple(sorted(statement.reads))


#: above a loop's halo bounds
_HALO_COMMENT = [
    "Halos: a kernel wider than one row reads rows beyond its output's, so each value is",
    "made over the rows its readers reach (lo_k: k rows before the chunk, hi_k: k after),",
    "and a convolution's rows that read padding inside the image are cropped away.",
]
#: and where some values are finer than the loop's rows
_SCALE_COMMENT = [
    "`_x2`: two rows per row of the loop (a stride-2 op's input, a 2x upsampling's output)."
]


def _wrapped(text: str) -> list[str]:
    """A comment's text in lines that fit beside the code (86 characters)."""
    return textwrap.wrap(text, 86, break_long_words=False, break_on_hyphens=False)


def _atom(code: str) -> str:
    """Return an expression as one that can be indexed: parenthesized unless it is a call,
    name, attribute or subscript."""
    kind = type(ast.parse(code, mode="eval").body)
    return code if kind in (ast.Call, ast.Name, ast.Attribute, ast.Subscript) else f"({code})"


def _moved(row: str, shift: int) -> str:
    """A row moved on by `shift` rows (NOTE [Cyclic shifts])."""
    return f"{row} + {shift}" if shift > 0 else f"{row} - {-shift}"


def _index_expr(var: str, cuts: dict[int, str]) -> str:
    """Return `var` indexed with the given slice text on each dim (non-negative dims)."""
    if not cuts:
        return var
    return f"{var}[{', '.join(cuts.get(d, ':') for d in range(max(cuts) + 1))}]"


def attribute_path(fqn: str) -> str:
    out = "self"
    for part in fqn.split("."):
        out += (
            f"[{part}]"
            if part.isdigit()
            else (f".{part}" if part.isidentifier() else f".get_submodule({part!r})")
        )
    return out


def _unflatten(spec: Any, flat: Any) -> str:
    """Write the model's output structure around the flat outputs."""
    kind = getattr(spec, "type", None)
    if spec.is_leaf():
        return next(flat)
    children = [_unflatten(child, flat) for child in spec.children()]
    if kind is tuple:
        return f"({', '.join(children)}{',' if len(children) == 1 else ''})"
    if kind is list:
        return f"[{', '.join(children)}]"
    if kind is dict:
        keys = spec.context
        return "{" + ", ".join(f"{k!r}: {c}" for k, c in zip(keys, children)) + "}"
    if kind is collections.namedtuple:  # pytree keeps a namedtuple's class as the context
        kind = spec.context
    if isinstance(kind, type):
        # The model's own output class (a ModelOutput, a dataclass, a namedtuple), imported
        # from where the original defines it when the forward returns (see `_output_class`).
        cls = f"_output_class({kind.__module__!r}, {kind.__qualname__!r})"
        if issubclass(kind, tuple) and hasattr(kind, "_fields"):
            return f"{cls}({', '.join(children)})"
        keys = spec.context
        if isinstance(keys, (list, tuple)) and all(
            isinstance(k, str) and k.isidentifier() for k in keys
        ):
            return f"{cls}({', '.join(f'{k}={c}' for k, c in zip(keys, children))})"
    raise TypeError(f"cannot write output structure {kind}")


# ------------------------------------------------------------------- libcst
def to_cst(items: list[Any]) -> list[cst.BaseStatement]:
    """Turn laid-out items into libcst statements, comments attached as leading lines."""
    out: list[cst.BaseStatement] = []
    for item in items:
        comments = [cst.EmptyLine(comment=cst.Comment(f"# {c}")) for c in item.comments]
        if isinstance(item, Loop):
            body = to_cst(item.body)
            loop = cst.parse_statement(f"{item.head}\n    pass\n")
            assert isinstance(loop, cst.For)
            out.append(loop.with_changes(body=cst.IndentedBlock(body=body), leading_lines=comments))
        else:  # a line may hold more than one statement (NOTE [One chunk])
            first, *rest = cst.parse_module(item.code + "\n").body
            out += [first.with_changes(leading_lines=comments), *rest]
    return out


__all__ = ["ForwardPrinter", "attribute_path", "format_bytes", "to_cst"]
