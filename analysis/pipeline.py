"""The pipeline, in order: load the model file, capture it, plan the chunk loops."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from analysis.capture import capture
from analysis.ir import Graph
from analysis.loader import LoadedModel, load_model_file
from analysis.plan import ChunkPlan
from analysis.remat import rematerialized
from analysis.select import Progress, Target, plan_for_range


@dataclass(frozen=True)
class Planned:
    """Everything the pipeline produced for one model file."""

    loaded: LoadedModel
    graph: Graph
    plan: ChunkPlan


#: The analysis stages, in order; each consumes the previous one's result.
PIPELINE = ("load_model_file", "capture", "rematerialized", "plan_for_range")


def plan_model(path: str | Path, target: Target, progress: Progress | None = None) -> Planned:
    """Run the analysis pipeline on a model file."""
    loaded = load_model_file(path)
    graph = capture(loaded)
    plan = plan_for_range(graph, target, progress)
    recomputing = rematerialized(graph)
    if recomputing is not None:  # NOTE [Recomputed values]: kept only when the peak falls
        other = plan_for_range(recomputing, target)
        unit = max(plan.original_peak_bytes // 100, 1)
        if other.planned_peak_bytes // unit < plan.planned_peak_bytes // unit:
            graph, plan = recomputing, other
    return Planned(loaded, graph, plan)
