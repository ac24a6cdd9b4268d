"""The pipeline, in order: load the model file, capture it, recompute shared values, plan the
chunk loops, lower the plan into the loop program. Each pass's result is kept, so
`plan --dump` can show the program after every step."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from analysis.capture import capture
from analysis.ir import Graph
from analysis.layers import Layer, standard_layers
from analysis.loader import LoadedModel, load_model_file
from analysis.lower import lower
from analysis.plan import ChunkPlan
from analysis.program import Program
from analysis.remat import rematerialized
from analysis.fastpath import eager_attention, padding_check_of, unpadded
from analysis.shortfall import floor
from analysis.select import (
    OUT_OF_REACH_SLOWDOWN,
    Progress,
    Target,
    inline_held,
    plan_for_range,
    unpadded_sizes,
)
from analysis.symbolic import Formulas, plan_formulas, sized_as_run

#: The passes, in order; `Planned.passes` records each one's result under these names.
PASSES = ("capture", "recompute", "select", "lower")


@dataclass(frozen=True)
class Planned:
    """Everything the pipeline produced for one model file."""

    loaded: LoadedModel
    #: the graph the plan is for: as captured, or with shared values recomputed
    graph: Graph
    plan: ChunkPlan
    #: the plan lowered into the program the generated forward prints
    program: Program
    #: (pass name, its result) in order; "recompute" holds None when no rewrite was kept
    passes: tuple[tuple[str, Any], ...] = ()
    #: where the default time limit for a target out of reach turned loops away: the plan
    #: made without it, which `emit` keeps if it measures within the limit (NOTE [Time limit])
    unlimited: Planned | None = None

    def relabelled(self, **changes: Any) -> Planned:
        """Return the same plan and program with fields of the plan that do not change its
        loops replaced (how its time limit came about)."""
        plan = replace(self.plan, **changes)
        passes = tuple((name, plan if name == "select" else v) for name, v in self.passes)
        return replace(self, plan=plan, passes=passes)

    def with_plan(self, plan: ChunkPlan) -> Planned:
        """Return the same model with another plan of its graph (a tuned variant), lowered."""
        program = lower_plan(self.graph, plan, self.program.layers, self.loaded.module)
        passes = tuple(
            (name, plan if name == "select" else program if name == "lower" else value)
            for name, value in self.passes
        )
        return replace(self, plan=plan, program=program, passes=passes)


def lower_plan(
    graph: Graph,
    plan: ChunkPlan,
    layers: dict[str, Layer],
    module: torch.nn.Module,
    formulas: Formulas | None = None,
) -> Program:
    """Return the loop program of a plan, with its run-time chunk-size formulas (fitted here
    unless given), one forward per module call it keeps (NOTE [Module scopes])."""
    if formulas is None:
        formulas = plan_formulas(graph, plan)
    return lower(graph, plan, _with_unpadded(graph, plan, formulas), layers, module)


def _with_unpadded(graph: Graph, plan: ChunkPlan, formulas: Formulas | None) -> Formulas | None:
    """The formulas with, for each loop sized for the no-padding path as well, that path's
    formula and the check that picks it (NOTE [Padding checked at run time])."""
    if formulas is None or not any(region.fast_chunk_size for region in plan.regions):
        return formulas
    fast_plan = replace(
        plan,
        regions=tuple(r.with_chunk_size(r.fast_chunk_size or r.chunk_size) for r in plan.regions),
    )
    fast = plan_formulas(unpadded(graph), fast_plan)
    if fast is None:
        return formulas
    paths = []
    for region, formula in zip(plan.regions, fast.regions):
        check = padding_check_of(graph, (name for name, _ in region.loop))
        usable = region.fast_chunk_size and formula is not None and check is not None
        paths.append((formula, check) if usable else None)
    return replace(formulas, fast=tuple(paths))


def plan_model(path: str | Path, target: Target, progress: Progress | None = None) -> Planned:
    """Run the analysis pipeline on a model file.

    With no time limit given, a target out of reach is not chased past
    `OUT_OF_REACH_SLOWDOWN` (NOTE [Time limit]): the plan is made within that limit first, and
    again without one when the limit turned loops away or the plan stays above the model's
    floor; that plan is kept if it meets the target."""
    loaded = load_model_file(path)
    graph = eager_attention(capture(loaded))  # NOTE [Attention as eager runs it]
    if target.max_slowdown is not None:
        return _planned(loaded, graph, target, progress)
    limited = _planned(loaded, graph, replace(target, max_slowdown=OUT_OF_REACH_SLOWDOWN), progress)
    if OUT_OF_REACH_SLOWDOWN == math.inf:
        return limited.relabelled(max_slowdown=None)  # planned without a limit already
    if not (limited.plan.time_limited or _above_floor(limited)):
        return limited.relabelled(max_slowdown=None)  # the limit changed nothing: it has none
    free = _planned(loaded, graph, replace(target, max_slowdown=math.inf), progress)
    if free.plan.met:
        return free
    if free.plan.planned_peak_bytes >= limited.plan.planned_peak_bytes:
        return limited.relabelled(max_slowdown=None, time_limited=False)  # it cost nothing
    limited = limited.relabelled(
        time_limited=True, by_default=True, unlimited_peak_bytes=free.plan.planned_peak_bytes
    )
    return replace(limited, unlimited=free)


def _above_floor(planned: Planned) -> bool:
    """Whether a plan missing its target is above the model's floor (NOTE [Whose limit]) by
    more than 1% of its peak: the plan without the time limit may then go lower, though the
    limit turned no loop away (NOTE [Time limit])."""
    plan = planned.plan
    if plan.met:
        return False
    unit = max(plan.planned_peak_bytes // 100, 1)
    return floor(planned.graph).bytes // unit < plan.planned_peak_bytes // unit


def _planned(
    loaded: LoadedModel, graph: Graph, target: Target, progress: Progress | None
) -> Planned:
    """The pipeline after capture, for one target."""
    captured = graph
    plan = plan_for_range(graph, target, progress)
    recomputing = rematerialized(graph)
    kept = None
    if recomputing is not None:  # NOTE [Recomputed values]: kept only when the peak falls
        other = plan_for_range(recomputing, target)
        unit = max(plan.original_peak_bytes // 100, 1)
        if other.planned_peak_bytes // unit < plan.planned_peak_bytes // unit:
            graph, plan, kept = recomputing, other, recomputing
    graph, plan = inline_held(graph, plan, target)
    plan = unpadded_sizes(graph, plan)  # NOTE [Padding checked at run time]
    # The formulas do not depend on the chunks the plan runs, only on its loops: fitted once,
    # they size the loops as the module will (NOTE [Run-time chunk sizes]) and are written out.
    formulas = plan_formulas(graph, plan)
    plan = sized_as_run(graph, plan, formulas)
    program = lower_plan(graph, plan, standard_layers(loaded.module), loaded.module, formulas)
    passes = tuple(zip(PASSES, (captured, kept, plan, program), strict=True))
    return Planned(loaded, graph, plan, program, passes)


__all__ = ["PASSES", "Planned", "plan_model"]
