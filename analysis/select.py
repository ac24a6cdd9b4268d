"""Selection: choose regions, dims and chunk sizes stage by stage until the target is met.

Each stage looks at the current peak, searches stretches around it (`analysis.search`), sizes
each candidate's chunk by bisection on the estimate (memory only falls as chunks shrink), and
keeps the candidate that meets the target with the fewest iterations; when none can, the one
that lowers the peak most. Stages repeat on the re-estimated program until the target is met or
no candidate lowers the peak.

NOTE [Time limit]
Memory comes first, but not at any price: a loop whose halos or statistics passes recompute
more than it saves (a deep strided chain, a group norm's input made twice) can make a model
several times slower for a few more MiB. The target may carry a time limit, `max_slowdown`:
the cost model's estimate of the planned forward stays within that multiple of the
original's. Each stage only takes candidates, at chunk sizes, whose extra time fits in what
the loops chosen so far left (loops that run faster than the ops they replace, as attention
loops often do, leave more). A plan that misses its target because of the limit says so.

A target within reach is met whatever it costs: the user asked for that memory. A target out
of reach is not chased past 1.05x by default (`OUT_OF_REACH_SLOWDOWN`, `analysis.pipeline`):
the plan is made within that limit first; when the limit turned a loop away, or the plan
stays above the model's floor (NOTE [Whose limit]), it is made again without one, and that
plan is kept if it meets the target (or is made as it was, when it gets no lower). The floor
counts because stages chosen within the limit may go another way than those chosen without it:
timm Swin's first stage takes a faster loop over the queries, the loop over its windows no
longer fits beside it, and the limit turns nothing away, yet costs 2.8 MiB. So the last few MiB of a target that stays missed (a ResNet-50's halos at two
rows a chunk: 65% less at 1.27x, against 53% at 0.90x) cost no time unless the user allows it
(`--max-slowdown 1.5`, or `none`). The estimate is not the last word: it errs towards turning
loops away (convolutions on a few rows run faster per row than it says; HF Swin's window
loops, estimated above 1.05x, measure 0.98x), so `emit` times the module planned without
the limit on the example inputs (`codegen.generate.measured_ratio`, the median of three runs against the
original's, in turn) and keeps it when it measures within the limit. Planned without a limit
for a target it misses, its chunks are the smallest that reach its lowest peak, and each costs
its launches; where it measures above the limit, `emit` times the same loops with chunks two,
then four times larger, and keeps the first within the limit that still holds less than the
plan made within it (torchvision Swin: 3.5 MiB at 1.06x; its chunks doubled stay within 1.05x).
The line that reports the missed target says which: with the peak the plan would reach without
the limit, and the time it measured.

NOTE [Aiming lower than reachable]
Stages size each loop for the target, so under a time limit the first loops chosen spend the
room on chunks small enough for a target that stays out of reach, and the loops a later peak
needs find none left: DistilBERT's feed-forward loops took it at 64 rows a chunk, the heads
loops were turned away, and the plan stopped at 5.0 MiB. The loops are then resized for the
peak they reach (`_relaxed`), too late to bring back what was turned away. So a plan that
misses its target because of the limit is made again aiming between the target and the peak
it reached, bisecting (`AIMS` times): an aim it reaches is lowered, one it misses is raised,
and the lowest peak is kept (DistilBERT: 3.0 MiB, at 256 rows a chunk). The time limit
holds for every aim; only the sizing changes.

NOTE [Equal peaks]
Blocks alike peak alike: the VAE decoder's last two resnet blocks each hold their input, its
norm and its activation, 96 MiB apiece. A loop through one leaves the plan's peak where it
was, at the other, so a stage that asked for a lower peak found no progress and stopped with
neither chunked ("no loop through the peak lowered it"). A stage that gives up a loop to look
again (`_replanned`) now counts progress by the peak and then by how many statements reach it
(`_height`), which the next stage's loop through the other block brings down. The pair
strictly falls at each stage, so stages cannot cycle.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from typing import Any, Callable

from analysis.cost import Machine, load_machine, region_time, span_time
from analysis.dimflow import out_meta
from analysis.loops import without_overwrites
from analysis.sums import without_sums
from analysis.lower import lower_region
from analysis.ir import Graph, Node, Size, TensorMeta, evaluate, value_bytes
from analysis.memory import (
    Profile,
    call_members,
    crossed,
    estimate_graph,
    estimate_plan,
    held_by_callers,
    local_region_peak,
    region_peak,
)
from analysis.fastpath import padding_check_of, unpadded
from analysis.plan import ChunkPlan, Region
from analysis.program import LoopRegion
from analysis.search import chunkable_dims, grow, propagate, takes_statistics
from analysis.symbolic import rehinted

#: how far (in graph nodes) a stretch may reach before and after the peak, counting only
#: those whose values are above the peak's `1 / TINY_SHARE` (Swin builds its shifted-window
#: mask, a few KiB, in forty slices and fills between the scores and the mask's add)
WINDOW = 48
TINY_SHARE = 4096
#: how many low-memory boundary positions to try on each side of the peak
BOUNDARIES = 8
#: how many large values live at the peak to try as seeds
SEEDS = 3
#: stages are capped so a pathological graph still plans in bounded time
MAX_STAGES = 256


@dataclass(frozen=True, slots=True)
class Target:
    """What the plan must stay under: a byte budget, or a fraction of the original peak; and
    the most its estimated time may grow (NOTE [Time limit])."""

    #: absolute budget in bytes, if given
    budget_bytes: int | None = None
    #: fraction of the original estimated peak, used when no budget is given
    ratio: float = 0.2
    #: the most the planned forward's estimated time may be, as a multiple of the original's;
    #: None: no limit
    max_slowdown: float | None = None
    #: the generated module's default `memory_budget` is "auto": on CUDA, the device's free
    #: memory at each call; on CPU (and for planning), the `ratio`
    auto: bool = False

    def bytes_for(self, original_peak: int) -> int:
        if self.budget_bytes is not None:
            return self.budget_bytes
        return int(original_peak * self.ratio)


#: the time limit of a plan whose target is out of reach, unless the user gives one
#: (NOTE [Time limit])
OUT_OF_REACH_SLOWDOWN = 1.05

#: Called after each stage with (stage, current peak, budget), for progress displays.
Progress = Callable[[int, int, int], None]


def make_plan(graph: Graph, target: Target, progress: Progress | None = None) -> ChunkPlan:
    """Plan chunk loops for a graph so its estimated peak stays under the target, within its
    time limit (NOTE [Time limit])."""
    profile = estimate_graph(graph)
    original_peak = estimate_graph(graph.captured).peak if graph.before else profile.peak
    budget = target.bytes_for(original_peak)
    limit = Limit.of(graph, target.max_slowdown)
    regions, binding = _chosen(graph, profile, budget, limit, progress)
    peak = estimate_plan(graph, regions).peak
    if peak > budget and any(region.sums for region in regions):
        # NOTE [Sums over the chunks]: a loop ending in a sum cannot grow past it, and one
        # chosen greedily may stop a plan whose loops over rows would have gone further
        with without_sums():
            tried, tried_binding = _chosen(graph, profile, budget, limit, None)
        if estimate_plan(graph, tried).peak < peak:
            regions = tried
        binding = binding or tried_binding
    limit.binding = binding
    return finish_plan(graph, regions, original_peak, budget, limit)


def _chosen(
    graph: Graph, profile: Profile, budget: int, limit: Limit, progress: Progress | None
) -> tuple[tuple[Region, ...], bool]:
    """The loops chosen as if with buffers of their own, then written in place; where that
    misses the budget, those chosen writing in place if lower (NOTE [Outputs in place]); and
    whether the limit turned a loop away on either path."""
    with without_overwrites():  # loops chosen as if with buffers
        regions, binding = _aimed(graph, profile, budget, limit, progress)
    peak = estimate_plan(graph, regions).peak  # lower in place: the same loops hold less
    if peak > budget:
        tried, tried_binding = _aimed(graph, profile, budget, limit, None)
        if estimate_plan(graph, tried).peak < peak:
            regions = tried
        binding = binding or tried_binding  # the limit turned a loop away on either path
    return regions, binding


def _aimed(
    graph: Graph, profile: Profile, budget: int, limit: Limit, progress: Progress | None
) -> tuple[tuple[Region, ...], bool]:
    """The stages' loops, and whether the limit turned one away; when it did and the target is
    missed, the lowest of the plans aimed between the target and the peak reached (NOTE [Aiming
    lower than reachable])."""
    regions, binding = _stages(graph, profile, budget, limit, progress)
    peak = estimate_plan(graph, regions).peak
    # NOTE [Aiming lower than reachable]: a target out of reach under a time limit
    low, high = budget, peak
    for _ in range(AIMS if binding and peak > budget else 0):
        aim = (low + high) // 2
        tried, tried_binding = _stages(graph, profile, aim, limit, None)
        tried_peak = estimate_plan(graph, tried).peak
        if tried_peak < peak:
            regions, binding, peak = tried, tried_binding, tried_peak
        if tried_peak <= aim:
            high = tried_peak
        else:
            low = aim
    return regions, binding


#: how many lower aims a plan missing its target under a time limit tries (NOTE [Aiming lower
#: than reachable])
AIMS = 3


def _stages(
    graph: Graph, profile: Profile, budget: int, limit: Limit, progress: Progress | None
) -> tuple[tuple[Region, ...], bool]:
    """Loops through each peak in turn until the peak meets `budget` or no loop lowers it,
    resized for speed under the peak they reach; and whether the time limit turned one away
    at any stage (the pipeline then plans without the limit, to see what it cost)."""
    regions: tuple[Region, ...] = ()
    limit.binding = False
    for stage in range(MAX_STAGES):
        if progress is not None:
            progress(stage, profile.peak, budget)
        if profile.peak <= budget:
            break
        label = profile.labels[profile.peak_index]
        if label.startswith("region "):  # a loop sized when the limit left less room
            found = _shrunk(graph, regions, profile, int(label.split()[1]), budget, limit)
        else:
            found = _lowered(graph, regions, profile, label, budget, limit)
            if found is None:
                found = _replanned(graph, regions, profile, label, budget, limit)
        if found is None:
            break
        regions, profile = found
    regions = _pruned(graph, regions, profile.peak)
    regions = _relaxed(graph, _merged(graph, regions, max(budget, profile.peak)), budget, limit)
    return regions, limit.binding


@dataclass
class Limit:
    """A plan's time limit as extra seconds the cost model allows its loops, and whether it
    turned away a loop that would have lowered the peak (NOTE [Time limit])."""

    #: the most the loops may add to the original's estimated time; None: no limit
    seconds: float | None
    #: the limit as a multiple of the original's time
    slowdown: float | None = None
    #: whether a candidate lowering the peak further was turned away for its time
    binding: bool = False

    @staticmethod
    def of(graph: Graph, slowdown: float | None) -> Limit:
        if slowdown is None or slowdown == math.inf:
            return Limit(None)
        names = tuple(node.name for node in graph.nodes)
        return Limit((slowdown - 1) * span_time(graph, names, load_machine()), slowdown)

    def room(self, graph: Graph, regions: tuple[Region, ...]) -> float:
        """The extra time left to a new loop beside `regions`."""
        if self.seconds is None:
            return math.inf
        return self.seconds - sum(extra_time(graph, region) for region in regions)


def extra_time(graph: Graph, region: Region) -> float:
    """A loop's estimated time less that of the ops it runs, unchunked."""
    machine = load_machine()
    return region_time(graph, lower_region(graph, region), machine) - span_time(
        graph, region.span, machine
    )


def unpadded_sizes(graph: Graph, plan: ChunkPlan) -> ChunkPlan:
    """Return the plan with each loop through a padding-checked attention also sized for the
    path the check takes when nothing is padded (NOTE [Padding checked at run time]): there the
    attention runs with `is_causal`, holds no mask, and takes larger chunks within the same
    bound, the plan's peak or its budget."""
    checked = [
        index
        for index, region in enumerate(plan.regions)
        if padding_check_of(graph, (name for name, _ in region.loop))
    ]
    if not checked:
        return plan
    variant = unpadded(graph)
    bound = max(plan.budget_bytes, plan.planned_peak_bytes)
    machine = load_machine()
    regions = list(plan.regions)
    for index in checked:
        others = tuple(r for i, r in enumerate(regions) if i != index)
        sized, peak = _size_chunks(
            variant, estimate_plan(variant, others), regions[index], bound, machine
        )
        if peak <= bound:
            regions[index] = replace(regions[index], fast_chunk_size=sized.chunk_size)
    return replace(plan, regions=tuple(regions))


def _merged(graph: Graph, regions: tuple[Region, ...], bound: int) -> tuple[Region, ...]:
    """Return the regions with neighbouring loops run as one where that is faster and stays
    under `bound`.

    Stages choose one loop per peak, so one stretch often ends up as two loops with a few
    whole ops between them: the queries' attention, then the feed-forward after the output
    projection. One loop over both saves a buffer and its copies, and keeps the ops between
    chunked; it is kept when the estimate says it is faster (a loop written across a module
    boundary pays `CROSSING`, as in selection) and the plan's peak stays within `bound`."""
    machine = load_machine()
    names = [node.name for node in graph.nodes]
    merged = True
    while merged:
        merged = False
        for index in range(len(regions) - 1):
            first, second = regions[index], regions[index + 1]
            after = regions[index + 2].span[0] if index + 2 < len(regions) else None
            found = _joined(graph, names, first, second, after)
            if found is None:
                continue
            others = regions[:index] + regions[index + 2 :]
            base = estimate_plan(graph, others)
            sized, peak = _size_chunks(graph, base, found, bound, machine)
            if peak > bound:
                continue
            start, end = graph.position(first.span[-1]) + 1, graph.position(second.span[0])
            apart = (
                region_time(graph, lower_region(graph, first), machine)
                + region_time(graph, lower_region(graph, second), machine)
                + span_time(graph, tuple(names[start:end]), machine)
            )
            together = region_time(graph, lower_region(graph, sized), machine)
            if crosses_module(graph, sized.span) and not (
                crosses_module(graph, first.span) or crosses_module(graph, second.span)
            ):
                together += CROSSING * span_time(graph, sized.span, machine)
            candidate = _insert(others, sized, graph)
            if together < apart and estimate_plan(graph, candidate).peak <= bound:
                regions, merged = candidate, True
                break
    return regions


#: how far apart two loops may be to be merged into one: the ops between them that make a
#: tensor of their own (views, in-place writes and scalars, a mask's plumbing, do not count)
MERGE_GAP = 24


def _gap(graph: Graph, names: list[str], after: str, before: str) -> int:
    """The ops strictly between two nodes that make a tensor of more than one element."""
    count = 0
    for name in names[graph.position(after) + 1 : graph.position(before)]:
        node = graph[name]
        if node.kind != "op" or node.aliases is not None or node.mutates is not None:
            continue
        meta = out_meta(node)
        if meta is not None and meta.numel(graph.hints) > 1:
            count += 1
    return count


def _joined(
    graph: Graph, names: list[str], first: Region, second: Region, after: str | None = None
) -> Region | None:
    """One region over both loops' stretches and the ops between, or None; reaching on to the
    ops that read its results, where they are near (the residual add after a feed-forward),
    when that leaves it fewer results to write whole, but never into the next loop (`after`,
    its first node)."""
    stop = graph.position(after) if after is not None else len(names)
    start, end = graph.position(first.span[0]), graph.position(second.span[-1])
    if _gap(graph, names, first.span[-1], second.span[0]) > MERGE_GAP:
        return None
    best: Region | None = None
    while True:
        span = tuple(names[start : end + 1])
        found = None
        for seed, dim in (first.loop[-1], second.loop[0]):
            found = propagate(graph, span, seed, dim)
            if isinstance(found, Region):
                break
        if not isinstance(found, Region):
            return best
        if best is not None and len(found.outputs) >= len(best.outputs):
            return best
        best = found
        readers = [graph.position(u) for name, _ in found.outputs for u in graph.users(name)]
        reach = max((p for p in readers if p > end), default=None)
        if (
            reach is None
            or reach >= stop
            or reach - end > MERGE_GAP
            or any(graph[name].kind != "op" for name in names[end + 1 : reach + 1])
        ):
            return best
        end = reach


def _shrunk(
    graph: Graph,
    regions: tuple[Region, ...],
    profile: Profile,
    index: int,
    budget: int,
    limit: Limit,
) -> tuple[tuple[Region, ...], Profile] | None:
    """The regions with the loop running the peak (`index`) in smaller chunks, as small as
    the budget asks and the limit's room now allows, and their profile; None when that does
    not lower the peak (the loop is as small as it helps, or the limit keeps it as it is)."""
    others = regions[:index] + regions[index + 1 :]
    base = estimate_plan(graph, others)
    machine = load_machine()
    room = limit.room(graph, others)
    if room == math.inf:
        sized, _ = _size_chunks(graph, base, regions[index], budget, machine)
    else:
        sized, _, left_out = _size_chunks_within(graph, base, regions[index], budget, machine, room)
        unit = max(profile.peak // 100, 1)
        if left_out is not None and left_out // unit < profile.peak // unit:
            limit.binding = True
    if sized is None or sized.chunk_size >= regions[index].chunk_size:
        return None
    candidate = others[:index] + (sized,) + others[index:]
    new_profile = estimate_plan(graph, candidate)
    return (candidate, new_profile) if new_profile.peak < profile.peak else None


def _lowered(
    graph: Graph,
    regions: tuple[Region, ...],
    profile: Profile,
    label: str,
    budget: int,
    limit: Limit,
) -> tuple[tuple[Region, ...], Profile] | None:
    """The regions with the best new loop through the peak at `label`, and their profile; None
    when no loop lowers the footprint where the peak was."""
    best = _best_candidate(graph, regions, profile, label, budget, limit)
    if best is None:
        return None
    candidate = _insert(regions, best, graph)
    new_profile = estimate_plan(graph, candidate)
    index = candidate.index(best)
    if new_profile.peak > profile.peak or region_peak(new_profile, index) >= profile.peak:
        return None
    return candidate, new_profile


def _replanned(
    graph: Graph,
    regions: tuple[Region, ...],
    profile: Profile,
    label: str,
    budget: int,
    limit: Limit,
) -> tuple[tuple[Region, ...], Profile] | None:
    """When no new loop gets past the peak at `label`, give up a loop an earlier stage chose
    near it, nearest first, and look again: a loop over the queries' projection alone, chosen
    for an earlier peak, leaves no stretch through the attention after it. Kept only when the
    peak falls."""
    at = graph.position(label)
    near = [
        r
        for r in regions
        if min(abs(graph.position(r.span[0]) - at), abs(graph.position(r.span[-1]) - at)) <= WINDOW
    ]
    for dropped in sorted(near, key=lambda r: abs(graph.position(r.span[-1]) - at)):
        fewer = tuple(r for r in regions if r is not dropped)
        found = _lowered(graph, fewer, estimate_plan(graph, fewer), label, budget, limit)
        if found is not None and _height(found[1], profile.peak) < _height(profile, profile.peak):
            return found
    return None


def _height(profile: Profile, peak: int) -> tuple[int, int]:
    """A profile's peak, at 1% of `peak`, and how many statements reach it. Two blocks alike
    peak alike: a loop through one leaves the plan's peak where it was, at the other, yet it
    is progress (NOTE [Equal peaks])."""
    unit = max(peak // 100, 1)
    top = profile.peak // unit
    return top, sum(1 for bytes_ in profile.footprint if bytes_ // unit == top)


def _relaxed(
    graph: Graph, regions: tuple[Region, ...], budget: int, limit: Limit | None = None
) -> tuple[Region, ...]:
    """Return the regions resized for speed under the plan's peak, when that is above the
    budget: a loop sized for a budget the plan misses elsewhere would run small chunks for
    nothing."""
    peak = estimate_plan(graph, regions).peak
    if peak <= budget:
        return regions
    resized = _each_sized(graph, regions, peak)
    if estimate_plan(graph, resized).peak > peak:
        return regions
    if limit is not None and limit.room(graph, resized) < min(0.0, limit.room(graph, regions)):
        return regions  # never slower than the limit allowed
    return resized


def _each_sized(graph: Graph, regions: tuple[Region, ...], budget: int) -> tuple[Region, ...]:
    """Return the regions with each chunk sized under `budget`, the others in place."""
    machine = load_machine()
    sized = list(regions)
    for index, region in enumerate(regions):
        others = tuple(r for i, r in enumerate(sized) if i != index)
        sized[index], _ = _size_chunks(graph, estimate_plan(graph, others), region, budget, machine)
    return tuple(sized)


def _pruned(graph: Graph, regions: tuple[Region, ...], peak: int) -> tuple[Region, ...]:
    """Drop the regions the final peak does not need: a loop that stopped helping once later
    stages moved the peak elsewhere only costs time."""
    for region in reversed(regions):
        fewer = tuple(r for r in regions if r is not region)
        if estimate_plan(graph, fewer).peak <= peak:
            regions = fewer
    return regions


#: how far beyond the example size a plan looks, when the dynamic dim's Dim sets no bound
LONGEST_FACTOR = 8


def plan_for_range(graph: Graph, target: Target, progress: Progress | None = None) -> ChunkPlan:
    """Plan for every size the dynamic dim may take, not only the example's.

    A stretch that fits the target at the example size may not fit at longer ones (the
    feed-forward at 4x the tokens). So the regions are chosen at the longest sizes (each Dim's
    upper bound, at most `LONGEST_FACTOR` times the example) and then sized at the example;
    at run time each loop resizes its chunks for the actual length (NOTE [Run-time chunk
    sizes]). When that plan does worse at the example than planning there directly, the
    example's own plan is kept.
    """
    here = make_plan(graph, target, progress)
    longest = {
        s.symbol: min(s.upper or s.hint * LONGEST_FACTOR, s.hint * LONGEST_FACTOR)
        for s in graph.symbols
    }
    if all(longest[s.symbol] <= s.hint for s in graph.symbols):
        return here
    far = make_plan(rehinted(graph, longest), target)
    # A loop over a fixed dim (a feed-forward's features) cannot resize with the input, so it
    # keeps the chunk the longest input needs.
    caps = {r.span: r.chunk_size for r in far.regions if not _symbolic(r.extent)}

    def capped(regions: tuple[Region, ...]) -> tuple[Region, ...]:
        return tuple(
            r.with_chunk_size(min(r.chunk_size, caps[r.span])) if r.span in caps else r
            for r in regions
        )

    if {r.span for r in far.regions} == {r.span for r in here.regions}:
        if capped(here.regions) == here.regions:
            return here
        limit = Limit(None, here.max_slowdown, here.time_limited)
        regions = capped(here.regions)
        return finish_plan(graph, regions, here.original_peak_bytes, here.budget_bytes, limit)
    limit = Limit.of(graph, target.max_slowdown)
    regions = _each_sized(graph, far.regions, here.budget_bytes)
    regions = capped(_relaxed(graph, regions, here.budget_bytes, limit))
    limit.binding = far.time_limited
    ranged = finish_plan(graph, regions, here.original_peak_bytes, here.budget_bytes, limit)
    if ranged.planned_peak_bytes > max(here.planned_peak_bytes, here.budget_bytes):
        return here
    if limit.seconds is not None and limit.room(graph, regions) < 0 <= limit.room(
        graph, here.regions
    ):
        return here  # sized at the example, its loops run slower than the limit allows
    return ranged


def inline_held(graph: Graph, plan: ChunkPlan, target: Target) -> tuple[Graph, ChunkPlan]:
    """When the plan misses the target, try writing inline the module calls running the peak
    whose callers hold their arguments (NOTE [Arguments held by the caller]), innermost first,
    every call of that kind at once (`layers.1.self_attn` and its siblings `layers.*.self_attn`,
    which run alike); keep the graph and plan when the planned peak falls, and repeat."""
    while not plan.met:
        profile = estimate_plan(graph, plan.regions)
        label = profile.labels[profile.peak_index]
        if label.startswith("region "):
            label = plan.regions[int(label.split()[1])].loop[0][0]
        if label not in graph:
            break
        held = {call for calls in held_by_callers(graph).values() for call, _ in calls}
        better = None
        for call in [c for c in graph[label].calls if c in held][::-1]:
            kind = re.sub(r"\d+", "*", call)
            alike = {c for c in held if re.sub(r"\d+", "*", c) == kind}
            trial = replace(
                graph, inline_calls=graph.inline_calls | alike, memo={}, before=graph.captured
            )
            planned = plan_for_range(trial, target)
            if plan.time_limited and not planned.met:  # the pipeline plans without the limit
                planned = replace(planned, time_limited=True)
            if planned.planned_peak_bytes < plan.planned_peak_bytes:
                better = (trial, planned)
                break
        if better is None:
            break
        graph, plan = better
    return graph, plan


def _symbolic(size: Size) -> bool:
    return bool(getattr(size, "free_symbols", None))


def finish_plan(
    graph: Graph,
    regions: tuple[Region, ...],
    original_peak: int,
    budget: int,
    limit: Limit | None = None,
) -> ChunkPlan:
    """Return the plan value for a set of regions, with its estimates."""
    profile = estimate_plan(graph, regions)
    peaks = tuple(region_peak(profile, index) for index in range(len(regions)))
    names = tuple(node.name for node in graph.nodes)
    original = span_time(graph, names, load_machine())
    ratio = 1 + sum(extra_time(graph, r) for r in regions) / original if original > 0 else 1.0
    limited = limit is not None and limit.binding and profile.peak > budget
    return ChunkPlan(
        regions,
        original_peak,
        profile.peak,
        budget,
        peaks,
        time_ratio=ratio,
        max_slowdown=limit.slowdown if limit is not None else None,
        time_limited=limited,
    )


def rescaled(graph: Graph, plan: ChunkPlan, factor: float) -> ChunkPlan | None:
    """Return the plan with every chunk size scaled by `factor` (kept to powers of two within
    each extent), or None when that no longer meets the budget the plan met."""
    regions = []
    for region in plan.regions:
        extent = evaluate(region.extent, graph.hints)
        size = max(1, min(int(region.chunk_size * factor), extent))
        size = 1 << (size.bit_length() - 1)
        regions.append(region.with_chunk_size(size))
    limit = Limit(None, plan.max_slowdown, plan.time_limited)
    scaled = finish_plan(graph, tuple(regions), plan.original_peak_bytes, plan.budget_bytes, limit)
    if plan.met and not scaled.met:
        return None
    return scaled


def _insert(regions: tuple[Region, ...], region: Region, graph: Graph) -> tuple[Region, ...]:
    return tuple(sorted((*regions, region), key=lambda r: graph.position(r.span[0])))


def _best_candidate(
    graph: Graph,
    regions: tuple[Region, ...],
    profile: Profile,
    peak_node: str,
    budget: int,
    limit: Limit | None = None,
) -> Region | None:
    """Return the candidate that meets the budget fastest; failing that, the lowest peak.

    Peaks are compared at 1% of the current peak, so near-ties fall to the faster region. The
    stretches within the innermost module call running the peak go first: only when none of
    them meets the budget do stretches across module boundaries compete (NOTE [Module
    scopes]), at a cost for the module they write inline. Candidates, and chunk sizes, whose
    extra time the limit has no room for are left out (NOTE [Time limit]).
    """
    machine = load_machine()
    unit = max(profile.peak // 100, 1)
    room = limit.room(graph, regions) if limit is not None else math.inf
    best: tuple[tuple[float, ...], Region] | None = None
    turned_away: int | None = None  # the lowest peak left out for its time
    for inner in (True, False):
        if not inner and best is not None and best[0][0] == 0:
            break  # a loop inside the module meets the budget
        for candidate in _candidates(graph, regions, profile, peak_node, inner):
            for region in (candidate, *_with_copies(graph, candidate)):
                if room == math.inf:
                    sized, peak = _size_chunks(graph, profile, region, budget, machine)
                else:
                    found = _size_chunks_within(graph, profile, region, budget, machine, room)
                    sized, peak, left_out = found
                    if left_out is not None:
                        turned_away = (
                            left_out if turned_away is None else min(turned_away, left_out)
                        )
                    if sized is None:
                        continue
                extra = region_time(graph, lower_region(graph, sized), machine) - span_time(
                    graph, sized.span, machine
                )
                # it costs a module written inline, or a layer summed from its weight's slices
                # (NOTE [Sums over the chunks]): their hooks and swaps are lost
                if crosses_module(graph, sized.span) or sized.sums:
                    extra += CROSSING * span_time(graph, sized.span, machine)
                if peak <= budget:
                    key: tuple[float, ...] = (0, round(extra, 5), peak // unit, len(sized.loop))
                else:
                    key = (1, peak // unit, round(extra, 5), len(sized.loop))
                if best is None or key < best[0]:
                    best = (key, sized)
    if limit is not None and turned_away is not None:
        missed = best is not None and best[0][0] == 1
        if best is None or (missed and turned_away // unit < best[0][1]):
            limit.binding = True
    return None if best is None else best[1]


def _with_copies(graph: Graph, region: Region) -> list[Region]:
    """Return the region with its non-contiguous sliced views also copied contiguous once.

    A view sliced in the loop keeps its whole base alive through the loop (q, a view of the
    qkv projection, keeps all of qkv). A compact copy costs one pass over the view and lets
    the base go before the loop; the memory estimate decides whether that lowers the peak.
    """
    extra = tuple(
        name
        for name, _ in region.slices
        if name not in region.materialized
        and graph[name].aliases is not None
        and isinstance(graph[name].meta, TensorMeta)
        and not graph[name].tensor.contiguous
    )
    return [replace(region, materialized=region.materialized + extra)] if extra else []


def _size_chunks(
    graph: Graph, profile: Profile, region: Region, budget: int, machine: Machine
) -> tuple[Region, int]:
    """Return the region at its fastest power-of-two chunk that meets the budget, and its peak.

    Memory only grows with the chunk, so bisection finds the largest chunk that fits; every
    smaller power of two fits too, and the cost model picks the fastest of them. When no chunk
    fits, the budget becomes the lowest peak plus 5% of the current one.
    """
    lowered = lower_region(graph, region)
    return _fastest(graph, profile, lowered, _chunk_sizes(graph, region), budget, machine)


def _size_chunks_within(
    graph: Graph, profile: Profile, region: Region, budget: int, machine: Machine, room: float
) -> tuple[Region | None, int, int | None]:
    """`_size_chunks` over the chunks whose extra time fits in the `room` a time limit leaves
    (NOTE [Time limit]): the region and its peak (None when no chunk fits), and the peak the
    smallest chunk left out would have had (None when none was)."""
    sizes = _chunk_sizes(graph, region)
    lowered = lower_region(graph, region)
    base = span_time(graph, region.span, machine)
    fits = [
        size
        for size in sizes
        if region_time(graph, lowered.with_chunk_size(size), machine) - base <= room
    ]
    left_out = None
    if fits[:1] != sizes[:1]:
        left_out = local_region_peak(graph, profile, lowered.with_chunk_size(sizes[0]))
    if not fits:
        return None, 0, left_out
    sized, peak = _fastest(graph, profile, lowered, fits, budget, machine)
    return sized, peak, left_out


def _chunk_sizes(graph: Graph, region: Region) -> list[int]:
    """The powers of two below the loop's length (1 for a loop of one row)."""
    extent = evaluate(region.extent, graph.hints)
    return [1 << k for k in range(extent.bit_length()) if (1 << k) < extent] or [1]


def _fastest(
    graph: Graph,
    profile: Profile,
    lowered: LoopRegion,
    sizes: list[int],
    budget: int,
    machine: Machine,
) -> tuple[Region, int]:
    """The fastest of `sizes` (increasing) whose peak meets the budget (`_size_chunks`)."""

    def peak(size: int) -> int:
        return local_region_peak(graph, profile, lowered.with_chunk_size(size))

    low, high = 0, len(sizes) - 1
    floor = peak(sizes[low])
    if floor > budget:
        # Out of reach: settle for 5% above the lowest peak. The smallest chunks buy little
        # memory for many more iterations.
        budget = floor + max(profile.peak // 20, 1)
    while low < high:  # the largest size whose peak fits
        mid = (low + high + 1) // 2
        if peak(sizes[mid]) <= budget:
            low = mid
        else:
            high = mid - 1
    fastest = min(
        sizes[: low + 1],
        key=lambda size: (region_time(graph, lowered.with_chunk_size(size), machine), -size),
    )
    return lowered.region.with_chunk_size(fastest), peak(fastest)


def _candidates(
    graph: Graph, regions: tuple[Region, ...], profile: Profile, peak_node: str, inner: bool
) -> list[Region]:
    """Stretches around the peak, within the window; or (`inner`) within the innermost module
    call running the peak, where a loop keeps the module a call."""
    names = [node.name for node in graph.nodes]
    position = names.index(peak_node)
    covered = {name for region in regions for name in region.span}
    tiny = profile.peak // TINY_SHARE

    def counts(name: str) -> bool:  # a size, a scalar or a small mask's plumbing does not
        meta = out_meta(graph[name])
        return meta is not None and value_bytes(meta, graph.hints) > tiny

    first, reach = position, 0
    while first > 0 and reach < WINDOW and _free(graph, names[first - 1], covered):
        first -= 1
        reach += counts(names[first])
    last, reach = position, 0
    while last + 1 < len(names) and reach < WINDOW and names[last + 1] not in covered:
        last += 1
        reach += counts(names[last])
    windows = [(first, last)]
    if inner:
        calls = _calls(graph, graph[peak_node])
        if not calls:
            return []
        lo, hi = _stretch(graph, calls[-1])
        windows = [(max(first, lo), min(last, hi))]
    footprint = dict(zip(profile.labels, profile.footprint))
    live = dict(zip(profile.labels, profile.live_after or profile.footprint))
    found: dict[tuple[Any, ...], Region] = {}
    for start, stop in dict.fromkeys(windows):
        ends = sorted(range(position, stop + 1), key=lambda i: (footprint.get(names[i], 0), i))
        ends = sorted({stop, *ends[:BOUNDARIES]})
        seeds = _seeds(graph, names, start, position, peak_node)
        # group norms may recompute their input for their statistics (NOTE [Statistics passes])
        # (from the widest stretch only: its conflicts move its ends inwards anyway)
        statistics = any(takes_statistics(graph, n) for n in names[start : stop + 1])
        for end in ends:
            for seed in seeds:
                for dim in chunkable_dims(graph, seed):
                    for recompute in (False, True) if statistics and end == stop else (False,):
                        for region in grow(
                            graph, names, start, end, seed, dim, recompute=recompute
                        ):
                            if peak_node in region.loop_dims:
                                key = (region.loop, region.recomputed, region.sums)
                                found.setdefault(key, region)
    for region in [region for region in found.values() if region.recomputed]:
        for later in _started_lower(graph, names, region, peak_node, live):
            found.setdefault((later.loop, later.recomputed, later.sums), later)
    trimmed = [_trimmed(region) for region in found.values()]
    return [*found.values(), *(region for region in trimmed if region is not None)]


def _started_lower(
    graph: Graph, names: list[str], region: Region, peak_node: str, live: dict[str, int]
) -> list[Region]:
    """The stretch regrown from where the fewest bytes are live between its start and the
    peak, the latest such place: its statistics passes remake every value they run, so the
    values made before that place are better held than remade (NOTE [Statistics passes])."""
    first, position = graph.position(region.span[0]), graph.position(peak_node)
    if first >= position:
        return []
    at = min(range(first - 1, position), key=lambda i: (live.get(names[i], 0), -i))
    if at < first:
        return []
    last = graph.position(region.span[-1])
    dim = region.loop_dims[peak_node]
    return [
        later
        for later in grow(graph, names, at + 1, last, peak_node, dim, recompute=True)
        if peak_node in later.loop_dims
    ]


def _trimmed(region: Region) -> Region | None:
    """The region without the hoisted ops before its first per-chunk op, or None when it has
    none: they run whole before the loop either way, and left outside it they may form a loop
    of their own (the keys and values an attention reads whole, made before its queries'
    loop, NOTE [Keys before queries])."""
    first = region.span.index(region.loop[0][0])
    if first == 0:
        return None
    span = region.span[first:]
    kept = set(span)
    return replace(region, span=span, hoisted=tuple(n for n in region.hoisted if n in kept))


#: the share of a stretch's time a loop crossing a module boundary must save to be preferred
#: to one inside a module: the module it crosses is written inline, losing its hooks; so must
#: a loop summing a layer from its weight's slices (NOTE [Sums over the chunks])
CROSSING = 0.05


def crosses_module(graph: Graph, span: tuple[str, ...]) -> bool:
    """Whether a stretch runs part of a module call, or a whole one inside it (a layer's one
    op aside): then its loop cannot live in one module's forward (NOTE [Module scopes])."""
    members = call_members(graph)
    return any(len(members[call]) > 1 for call in crossed(graph, span))


def _calls(graph: Graph, node: Node) -> list[str]:
    """The module calls a node runs in, leaving out those of one op (a layer's)."""
    members = call_members(graph)
    return [c for c in node.calls if len(members[c]) > 1]


def _stretch(graph: Graph, call: str) -> tuple[int, int]:
    """A module call's first and last op's positions."""
    names = call_members(graph)[call]
    return graph.position(names[0]), graph.position(names[-1])


def _free(graph: Graph, name: str, covered: set[str]) -> bool:
    return name not in covered and graph[name].kind == "op"


def _seeds(graph: Graph, names: list[str], first: int, position: int, peak: str) -> list[str]:
    """Return the peak node and the largest results computed shortly before it."""
    hints = graph.hints
    nearby = [
        n for n in names[first : position + 1] if out_meta(graph[n]) is not None and n != peak
    ]
    nearby.sort(key=lambda n: -value_bytes(graph[n].meta, hints))
    return [peak, *nearby[:SEEDS]]


__all__ = [
    "Progress",
    "Target",
    "inline_held",
    "make_plan",
    "plan_for_range",
    "rescaled",
    "unpadded_sizes",
]
