"""Why a plan misses its target, in one line, and whose limit it is.

NOTE [Whose limit]
A plan that misses its target says why, so the user can tell a model that cannot go lower from
a tool that could not take it there:
- **the model's floor**: what every plan holds at once is above the target. The outputs are
  allocated by the forward and alive at its end, so they alone bound every plan from below
  ("its outputs alone are 8.0 MiB").
- **the tool's limit**: the peak is at an op no loop cut through (one that mixes every dim,
  named with its model line), or inside a loop already at its smallest useful chunk.
"""

from __future__ import annotations

from analysis.ir import Graph, TensorMeta, refs_in, value_bytes
from analysis.memory import SETUP, estimate_plan, region_label
from analysis.ops import dim_rule
from analysis.plan import ChunkPlan, describe_lines, format_bytes


def output_bytes(graph: Graph) -> int:
    """The bytes of the forward's outputs: a floor under every plan's peak."""
    names = {name for value in graph.outputs for name in refs_in(value)}
    return sum(
        value_bytes(graph[name].meta, graph.hints)
        for name in names
        if graph[name].kind == "op" and isinstance(graph[name].meta, TensorMeta)
    )


def shortfall(graph: Graph, plan: ChunkPlan) -> str | None:
    """One line on why the plan misses its target and whose limit that is (NOTE [Whose
    limit]); None when it meets it."""
    if plan.met:
        return None
    outputs = output_bytes(graph)
    if outputs >= plan.budget_bytes:
        return f"the model's floor: its outputs alone are {format_bytes(outputs)}"
    profile = estimate_plan(graph, plan.regions)
    label = profile.labels[profile.peak_index]
    for index, region in enumerate(plan.regions):
        if label in (region_label(index), region_label(index) + SETUP):
            return (
                f"the tool's limit: the peak is in the loop over {describe_lines(region, graph)}, "
                "at its smallest useful chunk"
            )
    name = label if label in graph else None
    if name is None:  # a module call returning: the peak is the values its caller holds
        return f"the tool's limit: the peak is where {label.removesuffix(' returns')} returns"
    node = graph[name]
    where = node.source.cite() if node.source is not None else node.name
    if dim_rule(node, graph) is None:
        return f"the tool's limit: the peak is at {where}, an op no loop can cut through"
    return f"the tool's limit: no loop through the peak at {where} lowered it"


__all__ = ["output_bytes", "shortfall"]
