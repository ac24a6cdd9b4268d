"""Memory as formulas in the dynamic dim, so generated code can size its chunks at run time.

NOTE [Run-time chunk sizes]
With a dynamic dim `n` (the sequence length, say), the estimated peak inside a loop with
chunks of `c` rows is `fixed(n) + per_row(n) * c`: the values alive around the loop, plus the per-chunk
values, which grow with the chunk. Both parts are polynomials of degree at most three in `n` (a
row of attention scores has `n` entries; a triangle attention's logits, `n**3`). They are found by
re-running the estimate with `n` set to four lengths and two chunk sizes each, then checked at
a fifth length and other chunk sizes. With two dynamic dims (an image's height and width),
the same fit runs on a 3 x 3 grid of sizes, degree two in each. A region whose estimate does
not follow the form (say, a `//` of `n` in a shape) gets no formula and keeps its planned chunk
size. The original model's peak gets the same treatment, for budgets given as a ratio.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, replace

import sympy

from analysis.ir import Graph, evaluate
from analysis.memory import estimate_graph, estimate_plan, loop_peak
from analysis.plan import ChunkPlan

#: the sizes the formulas are fitted at, as multiples of the example's: with one dynamic dim,
#: four (a cubic), with two, a 3 x 3 grid (degree two in each); more dims get no formulas
FIT_AT = {1: (1, 2, 4, 8), 2: (1, 2, 4)}
#: where the fit is checked, as multiples of the example's (per dim)
CHECK_AT = {1: (16,), 2: (8, 2)}
#: how far a check may miss, as a fraction of the estimate
TOLERANCE = 0.02

Point = tuple[int, ...]


@dataclass(frozen=True)
class Formula:
    """A loop's estimated peak in bytes: `fixed + per_row * rows` in the dynamic dim. (What
    the region does before its loop does not depend on the chunk.)"""

    fixed: sympy.Expr
    per_row: sympy.Expr

    def at(self, values: dict[sympy.Symbol, int], rows: int) -> float:
        return float(self.fixed.xreplace(values) + self.per_row.xreplace(values) * rows)


@dataclass(frozen=True)
class Formulas:
    """The formulas of one plan: the original's peak and each region's, or None for a region
    that keeps its planned chunk size."""

    symbols: tuple[sympy.Symbol, ...]
    original_peak: sympy.Expr
    regions: tuple[Formula | None, ...]
    #: each region's formula on the path a run-time padding check takes when nothing is padded,
    #: with the check it reads; None for a region without one (NOTE [Padding checked at run
    #: time])
    fast: tuple[tuple[Formula, str] | None, ...] = ()
    #: the chunk each loop had in the plan the formulas were fitted for: a plan that misses
    #: its target floors its budget at what its loops hold there (`floor_terms`), also once
    #: `sized_as_run` has resized them
    planned_rows: tuple[int, ...] = ()


def rehinted(graph: Graph, values: dict[sympy.Symbol, int]) -> Graph:
    """Return the graph with its dynamic dims at other example sizes (and fresh memos)."""
    symbols = tuple(
        replace(s, hint=values[s.symbol]) if s.symbol in values else s for s in graph.symbols
    )
    before = rehinted(graph.before, values) if graph.before else None
    return replace(graph, symbols=symbols, memo={}, before=before)


def plan_formulas(graph: Graph, plan: ChunkPlan) -> Formulas | None:
    """Return the plan's memory formulas, or None when the graph has no dynamic dim or more
    than two, or the original's peak does not follow a polynomial in them."""
    count = len(graph.symbols)
    if count not in FIT_AT:
        return None
    symbols = tuple(s.symbol for s in graph.symbols)
    hints = tuple(s.hint for s in graph.symbols)
    points = [
        tuple(h * k for h, k in zip(hints, ks))
        for ks in itertools.product(FIT_AT[count], repeat=count)
    ]
    check = tuple(h * k for h, k in zip(hints, CHECK_AT[count]))
    graphs = {p: rehinted(graph, dict(zip(symbols, p))) for p in (*points, check)}

    original = _fit(symbols, {p: estimate_graph(graphs[p].captured).peak for p in points})
    predicted = float(original.xreplace(dict(zip(symbols, check))))
    if not _close(predicted, estimate_graph(graphs[check].captured).peak):
        return None
    regions = tuple(
        _region_formula(graph, graphs, plan, index, symbols, points, check)
        for index in range(len(plan.regions))
    )
    return Formulas(
        symbols, original, regions, planned_rows=tuple(r.chunk_size for r in plan.regions)
    )


def run_time_rows(budget: int | None, fixed: int, per_row: int, most: int) -> int:
    """The rows per chunk the generated `_rows` picks (the same rule): the most, up to `most`,
    that keep `fixed + per_row * rows` within the budget, or within 5% over one row where even
    that is over it; at least 1, and a power of two, or `most` itself when all of them fit
    (one chunk)."""
    if budget is None:
        return 1 << (most.bit_length() - 1)
    limit = max(budget, (fixed + per_row) * 21 // 20)
    rows = (limit - fixed) // per_row if per_row > 0 else most
    if rows >= most:
        return most
    rows = max(1, rows)
    return 1 << (rows.bit_length() - 1)


def floor_terms(plan: ChunkPlan, formulas: Formulas) -> tuple[sympy.Expr, ...]:
    """What each run-time-sized loop holds at one row per chunk; for a plan that misses its
    target, at its planned chunk. The generated budget is never below the most of these plus
    5%: where that is over the target the peak is there anyway, and every loop may use as
    much. A plan that misses its target so keeps the chunks it chose, rather than cutting
    every loop to a few rows for a peak that stays where it is. The chunks are those the
    formulas were fitted for: were they the resized ones, a loop resized up to the floor
    would raise the floor the module computes, and let the other loops grow past the
    estimate."""
    chosen = formulas.planned_rows or tuple(r.chunk_size for r in plan.regions)
    rows = [1 if plan.met else n for n in chosen]
    return tuple(
        dict.fromkeys(f.fixed + f.per_row * n for f, n in zip(formulas.regions, rows) if f)
    )


def sized_as_run(graph: Graph, plan: ChunkPlan, formulas: Formulas | None) -> ChunkPlan:
    """The plan with each run-time-sized loop at the chunk the generated module picks at the
    example's size on a CPU (NOTE [Run-time chunk sizes]), and its peak estimated again: the
    module's budget is never below the most any loop holds at one row, plus 5%, and its rows
    are a power of two, so a plan that misses its target may run smaller chunks than it chose."""
    if formulas is None or not any(formulas.regions):
        return plan
    at = {s.symbol: s.hint for s in graph.symbols}
    sized = [
        (int(f.fixed.xreplace(at)), int(f.per_row.xreplace(at))) if f else None
        for f in formulas.regions
    ]
    floors = floor_terms(plan, formulas)
    most = max(int(term.xreplace(at)) for term in floors)
    held = len(floors) > 1 or not plan.met
    budget = max(plan.budget_bytes, most * 21 // 20 if held else 0)
    regions = list(plan.regions)
    for index, found in enumerate(sized):
        if found is not None:
            fixed, per_row = found
            region = regions[index]
            most = region.chunk_size if not region.halos else evaluate(region.extent, at)
            rows = run_time_rows(budget, fixed, per_row, most)
            regions[index] = regions[index].with_chunk_size(rows)
    if tuple(regions) == plan.regions:
        return plan
    peak = estimate_plan(graph, tuple(regions)).peak
    return replace(plan, regions=tuple(regions), planned_peak_bytes=peak)


def _region_formula(
    graph: Graph,
    graphs: dict[Point, Graph],
    plan: ChunkPlan,
    index: int,
    symbols: tuple[sympy.Symbol, ...],
    points: list[Point],
    check: Point,
) -> Formula | None:
    region = plan.regions[index]
    if not (sympy.sympify(region.extent).free_symbols & set(symbols)):
        return None  # the loop is over a fixed dim: its planned size holds at every size

    def peak(point: Point, rows: int) -> int:
        sized = list(plan.regions)
        sized[index] = region.with_chunk_size(rows)
        return loop_peak(estimate_plan(graphs[point], tuple(sized)), index)

    fixed, per_row = {}, {}
    for point in points:
        one, two = peak(point, 1), peak(point, 2)
        per_row[point] = two - one
        fixed[point] = one - per_row[point]
    formula = Formula(_fit(symbols, fixed), _fit(symbols, per_row))
    rows = max(1, min(region.chunk_size, evaluate(region.extent, graph.hints)))
    for point, c in ((check, 8), (points[-1], rows), (points[0], 4)):
        if not _close(formula.at(dict(zip(symbols, point)), c), peak(point, c)):
            return None
    return formula


def _fit(symbols: tuple[sympy.Symbol, ...], values: dict[Point, int]) -> sympy.Expr:
    """Return the polynomial through the values at a grid of sizes (degree below the grid's
    points per dim, in each dim), its coefficients rounded up to whole bytes."""
    per_dim = round(len(values) ** (1 / len(symbols)))
    monomials = [
        math.prod(s**e for s, e in zip(symbols, exps))
        for exps in itertools.product(range(per_dim), repeat=len(symbols))
    ]
    points = list(values)
    system = sympy.Matrix([[m.xreplace(dict(zip(symbols, p))) for m in monomials] for p in points])
    coefficients = system.LUsolve(sympy.Matrix([values[p] for p in points]))
    return sympy.expand(sum(sympy.ceiling(c) * m for c, m in zip(coefficients, monomials)))


def _close(predicted: float, actual: int) -> bool:
    return abs(predicted - actual) <= TOLERANCE * max(actual, 1) + 64


__all__ = [
    "Formulas",
    "floor_terms",
    "plan_formulas",
    "rehinted",
    "run_time_rows",
    "sized_as_run",
]
