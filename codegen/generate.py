"""Plan and emit a model file: the pipeline's result printed as a module, not yet verified."""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

from analysis.pipeline import Planned, plan_model
from analysis.select import Target, rescaled
from codegen.body import format_bytes
from codegen.emit import Emitted, emit_module
from codegen.tune import tune as tune_plan
from codegen.verify import import_source, instantiate


class Status:
    """One self-overwriting status line on stderr, shown only when stderr is a terminal."""

    def __init__(self) -> None:
        self.enabled = sys.stderr.isatty()
        self._width = 0

    def show(self, text: str) -> None:
        if self.enabled:
            sys.stderr.write("\r" + text.ljust(self._width))
            sys.stderr.flush()
            self._width = len(text)

    def planning(self, stage: int, peak: int, budget: int) -> None:
        self.show(
            f"planning: stage {stage + 1}, peak {format_bytes(peak)}, target {format_bytes(budget)}"
        )

    def done(self) -> None:
        if self.enabled and self._width:
            sys.stderr.write("\r" + " " * self._width + "\r")
            sys.stderr.flush()
            self._width = 0


def generate(
    model: str | Path, target: Target, flag: str, status: Status | None = None, tune: bool = False
) -> tuple[Planned, Emitted]:
    """Plan and emit a model file; the returned source has not been verified."""
    status = status or Status()
    status.show("capturing the model with torch.export")
    planned = plan_model(model, target, status.planning)
    name = Path(model).name
    described = (
        f"{format_bytes(target.budget_bytes)} budget"
        if target.budget_bytes is not None
        else f"{target.ratio:.0%} of the original estimated peak "
        f"({format_bytes(planned.plan.budget_bytes)})"
    )
    if target.auto:
        described += '; on CUDA, the device\'s free memory at each call (`memory_budget="auto"`)'

    def emit(variant: Planned) -> Emitted:
        return emit_module(
            variant.graph,
            variant.plan,
            variant.loaded.module,
            command=f"python -m codegen emit {name} {flag}",
            target=described,
            program=variant.program,
            budget="auto" if target.auto else target.budget_bytes,
        )

    if planned.unlimited is not None and TIME_UNLIMITED:  # NOTE [Time limit]: not the last word
        status.show("timing the plan made without the default time limit")
        planned = _timed_unlimited(planned, emit)
    if tune:
        planned, emitted = tune_plan(
            planned, emit, report=lambda line: status.show(f"tuning: {line}")
        )
    else:
        emitted = emit(planned)
    status.done()
    return planned, emitted


#: whether `generate` times a plan made without the default limit (NOTE [Time limit]).
#: `scripts/regenerate.py` turns it off: the committed modules follow the cost model alone, so
#: they do not depend on how loaded the machine that made them was
TIME_UNLIMITED = True

#: chunk-size factors tried, in turn, on a plan made without the default limit that measured
#: above it (NOTE [Time limit])
LARGER_CHUNKS = (2.0, 4.0)


def _timed_unlimited(planned: Planned, emit: Callable[[Planned], Emitted]) -> Planned:
    """The plan made without the default time limit where it measures within the limit; else
    the same loops with chunks two or four times larger, where one of those measures within it
    and still holds less than the plan made within the limit; else that plan (NOTE [Time
    limit]). The line says what the limit cost: the lowest peak, and the time it measured."""
    free = planned.unlimited
    assert free is not None
    limit = planned.plan.max_slowdown
    lowest = free.plan.planned_peak_bytes
    ratio = measured_ratio(free.loaded.module, emit(free).source, free.loaded.inputs)
    if ratio <= limit:
        return free.relabelled(measured_ratio=ratio)
    for factor in LARGER_CHUNKS:
        plan = rescaled(free.graph, free.plan, factor)
        if plan is None or plan.planned_peak_bytes >= planned.plan.planned_peak_bytes:
            break
        variant = free.with_plan(plan)
        if measured_ratio(free.loaded.module, emit(variant).source, free.loaded.inputs) <= limit:
            return variant.relabelled(
                max_slowdown=limit,
                time_limited=True,
                by_default=True,
                unlimited_peak_bytes=lowest,
                measured_ratio=ratio,
            )
    return planned.relabelled(measured_ratio=ratio)


#: forwards of each module timed by `measured_ratio`, interleaved
TIMED_RUNS = 3


def measured_ratio(original: torch.nn.Module, source: str, inputs: tuple[Any, ...]) -> float:
    """The generated module's time over the original's on the example inputs: the median of
    `TIMED_RUNS` ratios, the two run in turn after one warm-up each."""
    module, path = import_source(source)
    try:
        chunked = instantiate(module, original)
        ratios = []
        with torch.no_grad():
            original(*inputs)
            chunked(*inputs)
            for _ in range(TIMED_RUNS):
                start = time.perf_counter()
                original(*inputs)
                middle = time.perf_counter()
                chunked(*inputs)
                ratios.append((time.perf_counter() - middle) / max(middle - start, 1e-9))
    finally:
        path.unlink(missing_ok=True)
    return statistics.median(ratios)


__all__ = ["Status", "generate", "measured_ratio"]
