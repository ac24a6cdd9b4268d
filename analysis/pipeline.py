"""The pipeline, in order: load the model file, capture it, plan the chunk loops."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from analysis.capture import capture
from analysis.ir import Graph
from analysis.loader import LoadedModel, load_model_file
from analysis.plan import ChunkPlan
from analysis.select import Progress, Target, plan_for_range


@dataclass(frozen=True)
class Planned:
    """Everything the pipeline produced for one model file."""

    loaded: LoadedModel
    graph: Graph
    plan: ChunkPlan


#: The analysis stages, in order; each consumes the previous one's result.
PIPELINE = ("load_model_file", "capture", "plan_for_range")


def plan_model(path: str | Path, target: Target, progress: Progress | None = None) -> Planned:
    """Run the analysis pipeline on a model file."""
    loaded = load_model_file(path)
    graph = capture(loaded)
    return Planned(loaded, graph, plan_for_range(graph, target, progress))
