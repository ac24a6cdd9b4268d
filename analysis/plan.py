"""The chunk plan: an immutable value saying which stretches of the graph run as chunk loops."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import sympy

from analysis.ir import Graph, Size, evaluate
from analysis.ops import is_convolution


@dataclass(frozen=True)
class Region:
    """One chunk loop: a contiguous stretch of the graph run slice by slice along one dim.

    Every node of `span` is either in `loop` (computed once per chunk, its result chunked along
    the given dim) or in `hoisted` (does not depend on the chunk: run once, before the loop).
    """

    #: all graph nodes of the stretch, in execution order
    span: tuple[str, ...]
    #: nodes computed per chunk, in order, with the dim of their result that is chunked
    loop: tuple[tuple[str, int], ...]
    #: nodes of the stretch that do not depend on the chunk, run once before the loop
    hoisted: tuple[str, ...]
    #: values from outside the loop read as slices, with the sliced dim
    slices: tuple[tuple[str, int], ...]
    #: loop values read after the loop: preallocated full-size buffers filled chunk by chunk
    outputs: tuple[tuple[str, int], ...]
    #: length of the chunked dim
    extent: Size
    #: rows per chunk (the last chunk may be shorter)
    chunk_size: int = 0
    #: non-contiguous values read whole by matmuls in the loop: copied contiguous once, before
    #: it, instead of once per chunk inside each matmul
    materialized: tuple[str, ...] = ()
    #: rows per chunk when the run-time padding check finds no padding (NOTE [Padding checked
    #: at run time]); 0: `chunk_size` either way
    fast_chunk_size: int = 0
    #: loop values, and values sliced from outside, made or read over other rows than the
    #: chunk's: (name, rows before, rows after, rows per row of the loop) (NOTE [Halos])
    halos: tuple[tuple[str, int, int, int], ...] = ()
    #: group norms in the loop whose input the loop makes: a first pass of the loop recomputes
    #: the input to take their statistics (NOTE [Statistics passes])
    recomputed: tuple[str, ...] = ()
    #: products over the chunked dim run as sums over the chunks, each with the addition its
    #: sum starts from, if any (NOTE [Sums over the chunks]): read after the loop, whole
    sums: tuple[tuple[str, str | None], ...] = ()
    #: loop values, and values sliced from outside, whose chunk is their rows moved on by a
    #: number of rows, counted round their length: (name, rows) (NOTE [Cyclic shifts])
    shifts: tuple[tuple[str, int], ...] = ()

    def __post_init__(self) -> None:
        loop = {name for name, _ in self.loop}
        summed = self.summed
        parts = (loop, set(self.hoisted), summed)
        if sum(map(len, parts)) != len(set(self.span)) or set().union(*parts) != set(self.span):
            raise ValueError("region: loop, hoisted and summed nodes must partition the span")
        if not {name for name, _ in self.outputs} <= loop:
            raise ValueError("region: outputs must be loop nodes")
        if not set(self.recomputed) <= loop:
            raise ValueError("region: recomputed statistics must be of loop nodes")

    @property
    def loop_dims(self) -> dict[str, int]:
        return dict(self.loop)

    @property
    def summed(self) -> set[str]:
        """The nodes the sums over the chunks stand for: the products and their adds."""
        return {name for pair in self.sums for name in pair if name is not None}

    @property
    def sum_values(self) -> dict[str, str]:
        """Each sum's value after the loop (its add's, else its product's), by product."""
        return {product: add or product for product, add in self.sums}

    def halo(self, name: str) -> tuple[int, int, int]:
        """Return how a value is made or read: rows [scale * start - before, scale * stop +
        after) as (before, after, scale)."""
        return next(((b, a, s) for n, b, a, s in self.halos if n == name), (0, 0, 1))

    def shift(self, name: str) -> int:
        """Return how many rows on a value's chunk is from its scaled loop rows (NOTE [Cyclic
        shifts])."""
        return next((rows for n, rows in self.shifts if n == name), 0)

    def n_chunks(self, graph: Graph) -> int:
        return math.ceil(evaluate(self.extent, graph.hints) / max(self.chunk_size, 1))

    def with_chunk_size(self, chunk_size: int) -> Region:
        return replace(self, chunk_size=chunk_size)


@dataclass(frozen=True)
class ChunkPlan:
    """The regions chosen for a graph and the estimates behind the choice."""

    #: chunk loops, in execution order, not overlapping
    regions: tuple[Region, ...]
    #: estimated activation peak without chunking
    original_peak_bytes: int
    #: estimated activation peak with the regions
    planned_peak_bytes: int
    #: the target the plan aims for
    budget_bytes: int
    #: estimated peak while each region runs, parallel to regions
    region_peaks: tuple[int, ...] = ()
    #: the planned forward's estimated time over the original's (the cost model's)
    time_ratio: float = 1.0
    #: the time limit the plan kept to (NOTE [Time limit]), and whether it kept the plan from
    #: a lower peak
    max_slowdown: float | None = None
    time_limited: bool = False
    #: whether the limit is the default one for a target out of reach (NOTE [Time limit]),
    #: and the peak planned without it
    by_default: bool = False
    unlimited_peak_bytes: int | None = None
    #: what `emit` measured of the plan made without the default limit: kept within the
    #: limit, turned away above it (NOTE [Time limit]); None: not measured
    measured_ratio: float | None = None

    @property
    def met(self) -> bool:
        return self.planned_peak_bytes <= self.budget_bytes

    def to_json(self, graph: Graph) -> dict[str, Any]:
        """Return the `plan --json` object of Contract 2."""
        return {
            "model": graph.model_file,
            "original_peak_bytes": self.original_peak_bytes,
            "planned_peak_bytes": self.planned_peak_bytes,
            "budget_bytes": self.budget_bytes,
            "target_met": self.met,
            "estimated_time_ratio": round(self.time_ratio, 3),
            "max_slowdown": self.max_slowdown,
            "max_slowdown_by_default": self.by_default,
            "regions": [
                region_json(region, peak, graph)
                for region, peak in zip(self.regions, self.region_peaks, strict=True)
            ],
        }


def format_bytes(n: float) -> str:
    """Return a byte count in the largest binary unit that keeps it at or above 1."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def region_dim(region: Region, graph: Graph) -> tuple[str, int]:
    """Return the (input name, axis) a region chunks: its first sliced input, a summed
    product's weight last (NOTE [Sums over the chunks]: it is sliced along its input features,
    not the dim the loop walks)."""
    if region.slices:
        summed = {ref for product, _ in region.sums for ref in graph[product].refs()}
        return next((s for s in region.slices if s[0] not in summed), region.slices[0])
    name, dim = region.loop[0]
    return name, dim


#: what each axis of a layer's weight holds, by the layer's class name
_WEIGHT_AXES = {
    "Linear": ("output features", "input features"),
    "Conv1d": ("output channels", "input channels"),
    "Conv2d": ("output channels", "input channels"),
    "Conv3d": ("output channels", "input channels"),
    "Embedding": ("tokens", "features"),
}


def dim_words(region: Region, graph: Graph) -> str:
    """What a region's loop walks, in the model's terms: a layer's weight axis as the layer
    and its role ("fc1's output features"), else the value and axis it slices
    ("input_ids axis 1")."""
    name, axis = region_dim(region, graph)
    node = graph[name]
    spatial = spatial_words(region, graph)
    if spatial is not None:
        return f"{spatial}, {value_words(name, graph)} axis {axis}"
    if node.kind in ("param", "buffer") and isinstance(node.target, str):
        path, _, leaf = node.target.rpartition(".")
        kind = graph.module_types.get(path, "").rsplit(".", 1)[-1]
        roles = _WEIGHT_AXES.get(kind)
        layer = _layer_called(path)
        if roles is not None and leaf == "weight" and axis < len(roles):
            return f"{layer}'s {roles[axis]}"
        if roles is not None and leaf == "bias":
            return f"{layer}'s {roles[0]}"
        return f"{node.target} axis {axis}"
    return f"{value_words(name, graph)} axis {axis}"


def value_words(name: str, graph: Graph) -> str:
    """A value as the model's code calls it: the name its line assigns, with the module whose
    forward holds the line ("blocks.0.attn's q"); the result of a layer that makes it alone
    ("encoder.dropout's output") or a module returns; else its name in the graph."""
    if "value words" not in graph.memo:
        from analysis.names import assignments  # names -> fastpath -> causal -> plan

        types = graph.module_types
        layers = {
            path
            for path, kind in types.items()
            if kind.startswith("torch.nn.modules.")
            and not any(other.startswith(path + ".") for other in types)
        }
        ops: dict[str, list[str]] = {}
        for node in graph.ops():
            ops.setdefault(node.module_path, []).append(node.name)
        found = {
            n: f"{caller}'s {target}" if caller else target
            for n, (caller, target) in assignments(graph, layers).items()
        }
        for path in layers:
            if len(ops.get(path, ())) == 1:
                found.setdefault(ops[path][0], f"{path}'s output")
        for node in graph.ops():  # what a module returns (`return x + y`)
            if node.name in found or not node.calls:
                continue
            call = node.calls[-1]
            if all(call not in graph[user].calls for user in graph.users(node.name)):
                found[node.name] = f"{call.partition('@')[0]}'s output"
        graph.memo["value words"] = found
    return graph.memo["value words"].get(name, name)


def _layer_called(path: str) -> str:
    """A layer as its model calls it: the last part of its path, with the container's name
    before a `Sequential` index ("mlp.0", not "0")."""
    parts = path.split(".")
    last = len(parts) - 1
    while last > 0 and parts[last].isdigit():
        last -= 1
    return ".".join(parts[last:]) or path


#: what a convolution's spatial axes hold, by its input's rank (batch and channels first)
_SPATIAL_AXES = {
    3: ("frames (length)",),
    4: ("image rows (height)", "image columns (width)"),
    5: ("frames (time)", "image rows (height)", "image columns (width)"),
}


def spatial_words(region: Region, graph: Graph) -> str | None:
    """What a loop through convolutions walks: the spatial axis of the first one's input
    ("image rows (height)"), or None for a loop through none."""
    for name, dim in region.loop:
        node = graph[name]
        if not is_convolution(node):
            continue
        rank = len(node.meta.shape) if hasattr(node.meta, "shape") else 0
        words = _SPATIAL_AXES.get(rank, ())
        if 2 <= dim < 2 + len(words):
            return words[dim - 2]
    return None


def symbol_name(size: Size, graph: Graph) -> str | None:
    """Return a dynamic size in the dims' names ("seq", "height*width"), or None for a fixed
    size or one that involves a dim no input names."""
    if isinstance(size, int) or not size.free_symbols:
        return None
    if not size.free_symbols <= {s.symbol for s in graph.symbols}:
        return None
    return in_dim_names(size, graph)


def in_dim_names(expr: sympy.Expr, graph: Graph) -> str:
    """Return an expression of the dynamic dims written with their names ("64*seq")."""
    return str(expr.xreplace({s.symbol: sympy.Symbol(s.name) for s in graph.symbols}))


def region_lines(region: Region, graph: Graph) -> list[int]:
    """Return the model lines the loop body comes from, sorted."""
    return sorted({graph[n].source.line for n, _ in region.loop if graph[n].source})


def describe_lines(region: Region, graph: Graph) -> str:
    """Return where a loop's body comes from, as "file.py:35-39" or "a.py:62-66, 180; b.py:12"."""
    by_file: dict[str, set[int]] = {}
    for name, _ in region.loop:
        source = graph[name].source
        if source is not None:
            by_file.setdefault(source.file.rsplit("/", 1)[-1], set()).add(source.line)
    if not by_file:
        return "no source lines"
    parts = []
    for file, lines in by_file.items():
        spans: list[list[int]] = []
        for line in sorted(lines):
            if spans and line - spans[-1][1] <= 3:
                spans[-1][1] = line
            else:
                spans.append([line, line])
        parts.append(file + ":" + ", ".join(f"{a}-{b}" if a != b else f"{a}" for a, b in spans))
    return "; ".join(parts)


def region_json(region: Region, peak: int, graph: Graph) -> dict[str, Any]:
    name, axis = region_dim(region, graph)
    return {
        "dim": {
            "input": name,
            "axis": axis,
            "size": evaluate(region.extent, graph.hints),
            "symbol": symbol_name(region.extent, graph),
            "words": dim_words(region, graph),
        },
        "chunk_size": region.chunk_size,
        "n_chunks": region.n_chunks(graph),
        "nodes": [n for n, _ in region.loop],
        "hoisted": list(region.hoisted),
        "outputs": [n for n, _ in region.outputs] + list(region.sum_values.values()),
        "sums": [{"product": p, "value": v} for p, v in region.sum_values.items()],
        "source_lines": region_lines(region, graph),
        "where": describe_lines(region, graph),
        "estimated_peak_bytes": peak,
        # NOTE [Statistics passes]: the group norms whose input a first pass recomputes
        "statistics_passes": [
            {"node": name, "module": graph[name].module_path, "line": _line_of(graph, name)}
            for name in region.recomputed
        ],
    }


def _line_of(graph: Graph, name: str) -> str | None:
    source = graph[name].source
    return None if source is None else f"{source.file.rsplit('/', 1)[-1]}:{source.line}"


__all__ = [
    "ChunkPlan",
    "Region",
    "describe_lines",
    "dim_words",
    "format_bytes",
    "in_dim_names",
    "region_dim",
    "spatial_words",
    "symbol_name",
]
