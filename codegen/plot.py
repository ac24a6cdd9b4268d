"""`plan --plot FILE.png`: the estimated activation memory over the forward pass.

The x axis is the graph's ops in execution order. The original's curve is its footprint after each
node. The planned curve follows it outside the chunk loops; over a loop's stretch it is flat at
the loop's peak, since every statement of the stretch then runs once per chunk. Each loop's
stretch is shaded and numbered as in the plan and the generated header.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from analysis.errors import UserError
from analysis.ir import Graph
from analysis.memory import estimate_graph, estimate_plan, region_peak
from analysis.plan import ChunkPlan


def timelines(graph: Graph, plan: ChunkPlan) -> tuple[list[int], list[int]]:
    """Return the original and planned footprints, one value per op node of the graph."""
    original = estimate_graph(graph)
    planned = estimate_plan(graph, plan.regions)
    after = dict(zip(planned.labels, planned.footprint))
    loop_peak = {}
    for index, region in enumerate(plan.regions):
        peak = region_peak(planned, index)
        loop_peak.update({name: peak for name in region.span})
    before = dict(zip(original.labels, original.footprint))
    original_line, planned_line = [], []
    for node in graph.ops():
        original_line.append(before[node.name])
        if node.name in loop_peak:
            planned_line.append(loop_peak[node.name])
        else:
            planned_line.append(after.get(node.name, planned_line[-1] if planned_line else 0))
    return original_line, planned_line


def plot_plan(graph: Graph, plan: ChunkPlan, path: Path, title: str) -> None:
    """Draw the memory timeline of `plan` into a PNG at `path`, written atomically."""
    try:
        import matplotlib
    except ImportError:
        raise UserError("plan --plot needs matplotlib: pip install matplotlib") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    original, planned = timelines(graph, plan)
    ops = [node.name for node in graph.ops()]
    mib = 2**20
    xs = range(len(original))
    fig, ax = plt.subplots(figsize=(9, 3.6))
    ax.plot(xs, [b / mib for b in original], color="tab:red", lw=1.2, label="original")
    ax.plot(xs, [b / mib for b in planned], color="tab:blue", lw=1.2, label="planned")
    ax.axhline(plan.budget_bytes / mib, ls="--", color="gray", lw=1, label="target")
    for index, region in enumerate(plan.regions):
        first, last = ops.index(region.span[0]), ops.index(region.span[-1])
        ax.axvspan(first - 0.5, last + 0.5, color="tab:blue", alpha=0.12, lw=0)
        ax.annotate(
            str(index + 1),
            (first, 1.0),
            xycoords=("data", "axes fraction"),
            va="top",
            fontsize=7,
            color="tab:blue",
        )
    ax.set_xlim(-0.5, len(original) - 0.5)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("graph op, in execution order (shaded: chunk loops, numbered as in the plan)")
    ax.set_ylabel("estimated activation MiB")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".png")
    os.close(fd)
    try:
        fig.savefig(temp, dpi=110)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    finally:
        plt.close(fig)


__all__ = ["plot_plan", "timelines"]
