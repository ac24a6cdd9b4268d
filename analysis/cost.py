"""The cost model: estimated time of a plan, from per-op work and a calibrated machine.

NOTE [Cost model]
An op takes max(flops / matmul rate, bytes moved / bandwidth) plus a fixed dispatch cost, where
the bandwidth depends on the op's working set (the bytes it reads and writes): in cache it is
many times higher than from memory. The constants come from `scripts/calibrate.py`, measured on
the machine and committed as `analysis/calibration.json`. A chunk loop repeats its body once per
chunk: the body's chunked values shrink with the chunk, but values read whole (a key matrix,
say) are read again every time, and every iteration pays the dispatch cost of every op. So
small chunks pay overhead and re-reads, large ones fall out of cache; selection picks the
cheapest chunk size that meets the memory target.

NOTE [Fresh pages]
A tensor of 32 MiB or more is its own mapping from the operating system (glibc serves
allocations that large with mmap, and returns them when freed), so every forward pays a page
fault for each of its pages when the op first writes them: measured here, 0.34 ms per MiB,
more than the op's own traffic (dividing a 64 MiB tensor by a number takes 30 ms into a new
tensor, 8 ms into one already written). An op making a value that large pays it, as does a
loop's output buffer, once; a loop's chunks are small, and reuse freed storage. Without it the
model held an unchunked VAE decode to half its measured time, and every loop through it
looked several percent slower than it measures.
"""

from __future__ import annotations

import bisect
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from analysis.causal import causal_rows
from analysis.dimflow import out_meta, schema_arg, tensor_inputs
from analysis.ir import Graph, Node, evaluate, value_bytes
from analysis.memory import made_fraction
from analysis.ops import (
    ALL_BUT_LAST,
    CONTRACTION,
    CONV_TRANSPOSES,
    SECOND_TO_LAST,
    TRANSCENDENTAL,
    dim_rule,
    info,
    is_convolution,
)
from analysis.plan import Region
from analysis.program import CHUNK, COPY, CausalRows, LoopRegion, LoopStep, SumStep

CALIBRATION = Path(__file__).resolve().parent / "calibration.json"

aten = torch.ops.aten


@dataclass(frozen=True)
class Machine:
    """Measured speeds of the machine the plan is for."""

    #: float32 matmul rate
    flops_per_s: float
    #: (working-set bytes, bytes per second) for an elementwise op, by increasing size
    bandwidth: tuple[tuple[int, float], ...]
    #: fixed cost of dispatching one op from Python
    op_overhead_s: float
    #: the same for a softmax: exponentials make it slower and more sensitive to the cache
    transcendental: tuple[tuple[int, float], ...] = ()
    #: a matrix product of m rows runs at m / (m + this) of the full rate: small chunks feed
    #: the kernel's tiles poorly
    gemm_half_rows: float = 0.0
    #: seconds per byte the first writes to a fresh allocation of at least `fresh_bytes` cost
    #: (NOTE [Fresh pages])
    fault_s_per_byte: float = 0.0
    fresh_bytes: int = 32 << 20

    def fresh(self, nbytes: float) -> float:
        """The time a new tensor of `nbytes` costs in page faults (NOTE [Fresh pages])."""
        return nbytes * self.fault_s_per_byte if nbytes >= self.fresh_bytes else 0.0

    def bytes_per_s(self, working_set: int, transcendental: bool = False) -> float:
        """Return the bandwidth at a working set, interpolated between measured points."""
        table = self.transcendental if transcendental and self.transcendental else self.bandwidth
        sizes = [size for size, _ in table]
        index = bisect.bisect_left(sizes, working_set)
        if index == 0:
            return table[0][1]
        if index >= len(sizes):
            return table[-1][1]
        (s0, b0), (s1, b1) = table[index - 1], table[index]
        t = (math.log(working_set) - math.log(s0)) / (math.log(s1) - math.log(s0))
        return b0 + t * (b1 - b0)


def load_machine(path: Path = CALIBRATION) -> Machine:
    """Return the committed calibration (or conservative defaults when there is none)."""
    if not path.exists():
        return Machine(5e10, ((1 << 20, 5e10), (1 << 26, 1e10)), 5e-6)
    data = json.loads(path.read_text())
    return Machine(
        data["matmul_flops_per_s"],
        tuple((int(s), float(b)) for s, b in data["bandwidth"]),
        data["op_overhead_s"],
        tuple((int(s), float(b)) for s, b in data.get("transcendental_bandwidth", ())),
        data.get("gemm_half_rows", 0.0),
        data.get("page_fault_s_per_byte", 0.0),
        int(data.get("fresh_allocation_bytes", 32 << 20)),
    )


def node_flops(node: Node, graph: Graph) -> float:
    """Return the op's arithmetic: 2 x outputs x contracted length for contractions, else the
    output's element count."""
    meta = out_meta(node)
    if meta is None or node.aliases is not None:
        return 0.0
    out = meta.numel(graph.hints)
    if info(node.target).cost != CONTRACTION:
        return float(out)
    inputs = tensor_inputs(node, graph)
    if is_convolution(node) and node.target is not aten.convolution.default:
        weight = out_meta(graph[inputs[1]])
        per = weight.numel(graph.hints) / max(evaluate(weight.shape[0], graph.hints), 1)
        if node.target.overloadpacket in CONV_TRANSPOSES:
            return 2.0 * _numel(graph, inputs[0]) * per  # each input element meets its taps
        return 2.0 * out * per  # each output element reads its window
    if node.target == aten.scaled_dot_product_attention.default:
        keys = evaluate(out_meta(graph[inputs[1]]).shape[-2], graph.hints)
        return 4.0 * _numel(graph, inputs[0]) * keys
    slot = 1 if node.target in (aten.addmm.default, aten.baddbmm.default) else 0
    rule = dim_rule(node, graph)
    source = out_meta(graph[inputs[slot]])
    if rule is None or source is None:
        return float(out)
    grouped = {dim for group in rule.groups for s, dim in group if s == slot}
    contracted = math.prod(
        evaluate(size, graph.hints) for dim, size in enumerate(source.shape) if dim not in grouped
    )
    return 2.0 * out * contracted


#: how much slower ATen's own CPU convolution runs than oneDNN's (measured here: 7.4x to 12x
#: on 3x3x3 convolutions of 64 channels)
NATIVE_CONV_SLOWDOWN = 8.0


def _native_conv(node: Node, graph: Graph, dim: int | None, fraction: float) -> bool:
    """Whether a CPU float32 convolution, its output chunked along `dim` to `fraction`, runs
    on ATen's native kernel rather than oneDNN's. ATen picks native for one small image with a
    kernel at most 3 wide on one of its last two axes and one group (`ConvParams::use_mkldnn`: `N * C * d2 * d3 <= 20480`),
    so a chunk of a few rows of a 3-D convolution, or a short chunk of a 1-D one's frames,
    falls off oneDNN, and runs many times slower."""
    if not is_convolution(node) or node.target is aten.convolution.default:
        return False
    inputs = tensor_inputs(node, graph)
    x, weight = out_meta(graph[inputs[0]]), out_meta(graph[inputs[1]])
    if x is None or weight is None or x.rank < 3 or x.dtype != torch.float32:
        return False
    if schema_arg(node, "groups", 1) != 1:
        return False
    shape = [evaluate(size, graph.hints) for size in x.shape]
    if dim is not None and dim >= 2:
        shape[dim] = max(1, math.ceil(shape[dim] * fraction))
    kernel = [evaluate(size, graph.hints) for size in weight.shape[-2:]]
    if x.rank == 3:  # ATen runs a 1-D convolution as a 2-D one of height 1
        shape.insert(2, 1)
        kernel = [1, kernel[-1]]
    return shape[0] == 1 and any(k <= 3 for k in kernel) and math.prod(shape[:4]) <= 20480


def _numel(graph: Graph, name: str) -> int:
    meta = out_meta(graph[name])
    return meta.numel(graph.hints) if meta is not None else 0


def gemm_rows(node: Node, graph: Graph, dim: int | None = None, fraction: float = 1.0) -> float:
    """Return the rows of one matrix product the op runs, when its output is chunked along
    `dim` to `fraction` of its length (0 for ops that are not matrix products)."""
    meta = out_meta(node)
    if meta is None or meta.rank < 2:
        return 0.0
    shape = [evaluate(size, graph.hints) for size in meta.shape]
    form = info(node.target).gemm_rows
    if form == ALL_BUT_LAST:
        rows = math.prod(shape[:-1])
        return rows * (fraction if dim is not None and dim < meta.rank - 1 else 1.0)
    if form == SECOND_TO_LAST:
        return shape[-2] * (fraction if dim == meta.rank - 2 else 1.0)
    return 0.0


def node_time(
    node: Node,
    graph: Graph,
    machine: Machine,
    fraction: float = 1.0,
    whole: set[str] = frozenset(),
    dim: int | None = None,
) -> float:
    """Return the op's estimated time when its chunked values (along output `dim`) are
    `fraction` of their size.

    Inputs named in `whole` are read in full regardless of the fraction.
    """
    if node.kind != "op":
        return 0.0
    moved = 0.0
    if node.aliases is None:
        moved += value_bytes(node.meta, graph.hints) * fraction
        for name in tensor_inputs(node, graph):
            nbytes = value_bytes(graph[name].meta, graph.hints)
            moved += nbytes if name in whole else nbytes * fraction
    flops = node_flops(node, graph) * fraction
    if dim is None and causal_rows(node):  # run whole, the fused kernel skips hidden keys
        flops *= 0.5
    working = max(int(moved), 1)
    compute = flops / machine.flops_per_s
    rows = gemm_rows(node, graph, dim, fraction)
    if rows > 0 and machine.gemm_half_rows > 0:
        compute *= 1 + machine.gemm_half_rows / max(rows, 1.0)
    if _native_conv(node, graph, dim, fraction):
        compute *= NATIVE_CONV_SLOWDOWN
    memory = moved / machine.bytes_per_s(working, info(node.target).cost == TRANSCENDENTAL)
    fresh = 0.0
    if node.aliases is None and node.mutates is None:
        fresh = machine.fresh(value_bytes(node.meta, graph.hints) * fraction)
    return max(compute, memory) + fresh + machine.op_overhead_s


def region_time(graph: Graph, lowered: LoopRegion, machine: Machine) -> float:
    """Return a region's estimated time: hoisted work once, the body once per chunk."""
    region = lowered.region
    extent = max(evaluate(region.extent, graph.hints), 1)
    size = min(max(region.chunk_size, 1), extent)
    chunks = math.ceil(extent / size)
    fraction = size / extent
    total = sum(node_time(graph[name], graph, machine) for name in region.hoisted)
    for name in region.materialized:
        nbytes = value_bytes(graph[name].meta, graph.hints)
        total += 2 * nbytes / machine.bytes_per_s(1 << 30) + machine.fresh(nbytes)
    for name, _ in region.outputs:  # the output buffers, written once
        total += machine.fresh(value_bytes(graph[name].meta, graph.hints))
    body = sum(_step_time(graph, region, step, machine) for step in lowered.steps)
    for done in lowered.passes:  # NOTE [Statistics passes]: the steps again, and a reduction
        body += sum(_step_time(graph, region, step, machine) for step in done.steps)
        nbytes = value_bytes(graph[done.value].meta, graph.hints) * fraction
        body += nbytes / machine.bytes_per_s(int(nbytes) or 1) + 8 * machine.op_overhead_s
        body += machine.op_overhead_s * (2 + len(region.slices))
    for name, _ in region.outputs:  # the copy into the buffer
        nbytes = value_bytes(graph[name].meta, graph.hints) * fraction
        body += 2 * nbytes / machine.bytes_per_s(int(2 * nbytes) or 1) + machine.op_overhead_s
    body += machine.op_overhead_s * (2 + len(region.slices))  # the loop head and the slicing
    for done in lowered.sums:  # NOTE [Sums over the chunks]
        total += _sum_start_time(graph, done, machine)
        body += _sum_time(graph, done, fraction, machine)
    return total + chunks * body


def _sum_start_time(graph: Graph, total: SumStep, machine: Machine) -> float:
    """A sum's start: the value it adds and the bias, written once into the sum."""
    nbytes = value_bytes(graph[total.value].meta, graph.hints)
    moved = nbytes * (1 + (total.added is not None))
    fresh = 0.0 if total.overwrites else machine.fresh(nbytes)
    return moved / machine.bytes_per_s(int(moved) or 1) + fresh + machine.op_overhead_s


def _sum_time(graph: Graph, total: SumStep, fraction: float, machine: Machine) -> float:
    """One chunk's share of a sum: its product over the chunk's features, the sum read and
    written whole (`addmm_`)."""
    node = graph[total.node]
    flops = node_flops(node, graph) * fraction
    nbytes = value_bytes(graph[total.value].meta, graph.hints)
    moved = 2 * nbytes + fraction * sum(
        value_bytes(graph[name].meta, graph.hints) for name in tensor_inputs(node, graph)[:2]
    )
    memory = moved / machine.bytes_per_s(int(moved) or 1)
    return max(flops / machine.flops_per_s, memory) + machine.op_overhead_s


def _step_time(graph: Graph, region: Region, step: LoopStep, machine: Machine) -> float:
    """Return one loop step's estimated time per chunk: the op on its chunk's rows (with
    halos), the keys it reads, and the strided slices and contiguous copies it makes."""
    extent = max(evaluate(region.extent, graph.hints), 1)
    size = min(max(region.chunk_size, 1), extent)
    fraction = size / extent
    node = graph[step.node]
    whole = {o.value for o in step.operands if o.rows is None and o.source != CHUNK}
    keys = 1.0
    if step.keys is not None:  # on average a chunk reads the keys up to its middle
        keys = min(1.0, (extent + size + 2 * step.keys) / (2 * extent))
    if step.window is not None:  # or only its window's
        keys = min(keys, (size + step.keys - step.window) / extent)
    causal = any(isinstance(value, CausalRows) for value in step.args)
    if causal:  # `_causal_attention` skips the hidden half of its own square of keys too
        keys = 0.5
    made = made_fraction(graph, step, size)  # with halos (NOTE [Halos])
    time = node_time(node, graph, machine, made, whole, step.dim) * keys
    if causal:  # `_causal_attention`: a second kernel call, and its output weighted and added
        nbytes = 3 * value_bytes(node.meta, graph.hints) * fraction
        time += nbytes / machine.bytes_per_s(int(nbytes) or 1) + 6 * machine.op_overhead_s
    for read in step.operands:
        copied = read.source == COPY
        if (
            read.rows is not None
            and read.source != CHUNK
            and not _outer(graph, read.value, read.rows, copied)
        ):
            # a slice along an inner dim is strided: the op copies it first, every chunk
            nbytes = 2 * value_bytes(graph[read.value].meta, graph.hints) * fraction
            time += nbytes / machine.bytes_per_s(int(nbytes) or 1)
    if info(node.target).batched:
        for source in whole - set(region.materialized):  # copied contiguous every chunk
            meta = out_meta(graph[source])
            if meta is not None and not meta.contiguous:
                nbytes = 2 * value_bytes(meta, graph.hints)
                time += nbytes / machine.bytes_per_s(nbytes) + machine.op_overhead_s
    return time


def _outer(graph: Graph, name: str, dim: int, copied: bool = False) -> bool:
    """Return whether slicing `name` (or its contiguous copy) along `dim` leaves it contiguous:
    every dim before it is 1."""
    meta = out_meta(graph[name])
    if meta is None or not (meta.contiguous or copied):
        return False
    return all(evaluate(size, graph.hints) == 1 for size in meta.shape[:dim])


def span_time(graph: Graph, names: tuple[str, ...], machine: Machine) -> float:
    """Return the estimated time of running nodes unchunked."""
    return sum(node_time(graph[name], graph, machine) for name in names)


__all__ = ["Machine", "gemm_rows", "load_machine", "node_time", "region_time", "span_time"]
