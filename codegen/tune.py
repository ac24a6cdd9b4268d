"""`emit --tune`: time a few chunk-size variants of the plan on this device, keep the fastest."""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import torch

from analysis.pipeline import Planned
from analysis.select import rescaled
from codegen.emit import Emitted
from codegen.verify import import_source, instantiate

#: chunk-size factors tried against the planned sizes
FACTORS = (0.25, 0.5, 1.0, 2.0, 4.0)


def _seconds(module: torch.nn.Module, inputs: tuple[Any, ...], repeats: int) -> float:
    with torch.no_grad():
        module(*inputs)  # warm up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            module(*inputs)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def tune(
    planned: Planned,
    emit: Callable[[Planned], Emitted],
    repeats: int = 3,
    report: Callable[[str], None] = lambda line: None,
) -> tuple[Planned, Emitted]:
    """Return the fastest variant that still meets the target the plan met, and its source."""
    graph, loaded = planned.graph, planned.loaded
    tried: dict[tuple[int, ...], tuple[float, Planned, Emitted]] = {}
    for factor in FACTORS:
        plan = planned.plan if factor == 1.0 else rescaled(graph, planned.plan, factor)
        if plan is None:
            continue
        sizes = tuple(region.chunk_size for region in plan.regions)
        if sizes in tried:
            continue
        variant = planned if plan is planned.plan else planned.with_plan(plan)
        emitted = emit(variant)
        module, path = import_source(emitted.source)
        seconds = _seconds(instantiate(module, loaded.module), loaded.inputs, repeats)
        path.unlink()
        report(f"chunk sizes x{factor:g}: {seconds * 1e3:.1f} ms")
        tried[sizes] = (seconds, variant, emitted)
    _, variant, emitted = min(tried.values(), key=lambda entry: entry[0])
    return variant, emitted


__all__ = ["tune"]
