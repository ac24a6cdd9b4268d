"""Memory as formulas in the dynamic dim, so generated code can size its chunks at run time.

NOTE [Run-time chunk sizes]
With one dynamic dim `n` (the sequence length, say), the estimated peak inside a loop with
chunks of `c` rows is `fixed(n) + per_row(n) * c`: the values alive around the loop, plus the per-chunk
values, which grow with the chunk. Both parts are polynomials of degree at most three in `n` (a
row of attention scores has `n` entries; a triangle attention's logits, `n**3`). They are found by
re-running the estimate with `n` set to four lengths and two chunk sizes each, then checked at
a fifth length and other chunk sizes. A region whose estimate does not follow the form (say,
a `//` of `n` in a shape) gets no formula and keeps its planned chunk size. The original
model's peak gets the same treatment, for budgets given as a ratio.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import sympy

from analysis.ir import Graph, evaluate
from analysis.memory import estimate_graph, estimate_plan, loop_peak
from analysis.plan import ChunkPlan

#: the lengths the formulas are fitted at and checked at, as multiples of the example's
FIT_AT = (1, 2, 4, 8)
CHECK_AT = 16
#: how far a check may miss, as a fraction of the measured estimate
TOLERANCE = 0.02


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

    symbol: sympy.Symbol
    original_peak: sympy.Expr
    regions: tuple[Formula | None, ...]


def rehinted(graph: Graph, values: dict[sympy.Symbol, int]) -> Graph:
    """Return the graph with its dynamic dims at other example sizes (and fresh memos)."""
    symbols = tuple(
        replace(s, hint=values[s.symbol]) if s.symbol in values else s for s in graph.symbols
    )
    return replace(graph, symbols=symbols, memo={})


def plan_formulas(graph: Graph, plan: ChunkPlan) -> Formulas | None:
    """Return the plan's memory formulas, or None unless the graph has exactly one dynamic dim
    and the original's peak follows a polynomial in it."""
    if len(graph.symbols) != 1:
        return None
    symbol, hint = graph.symbols[0].symbol, graph.symbols[0].hint
    lengths = [hint * k for k in FIT_AT]
    graphs = {n: rehinted(graph, {symbol: n}) for n in (*lengths, hint * CHECK_AT)}

    original = _fit(symbol, {n: estimate_graph(graphs[n]).peak for n in lengths})
    check = hint * CHECK_AT
    if not _close(float(original.xreplace({symbol: check})), estimate_graph(graphs[check]).peak):
        return None
    regions = tuple(
        _region_formula(graph, graphs, plan, index, symbol, lengths, check)
        for index in range(len(plan.regions))
    )
    return Formulas(symbol, original, regions)


def _region_formula(
    graph: Graph,
    graphs: dict[int, Graph],
    plan: ChunkPlan,
    index: int,
    symbol: sympy.Symbol,
    lengths: list[int],
    check: int,
) -> Formula | None:
    region = plan.regions[index]
    if region.extent != symbol:
        return None  # the loop is over a fixed dim: its planned size holds at every length

    def peak(n: int, rows: int) -> int:
        sized = list(plan.regions)
        sized[index] = region.with_chunk_size(rows)
        return loop_peak(estimate_plan(graphs[n], tuple(sized)), index)

    fixed, per_row = {}, {}
    for n in lengths:
        one, two = peak(n, 1), peak(n, 2)
        per_row[n] = two - one
        fixed[n] = one - per_row[n]
    formula = Formula(_fit(symbol, fixed), _fit(symbol, per_row))
    rows = max(1, min(region.chunk_size, evaluate(region.extent, graph.hints)))
    for n, c in ((check, 8), (lengths[-1], rows), (lengths[0], 4)):
        if not _close(formula.at({symbol: n}, c), peak(n, c)):
            return None
    return formula


def _fit(symbol: sympy.Symbol, points: dict[int, int]) -> sympy.Expr:
    """Return the polynomial of degree at most three through four (length, bytes) points, its
    coefficients rounded up to whole bytes."""
    poly = sympy.Poly(sympy.interpolate(list(points.items()), symbol), symbol)
    return sympy.expand(
        sum(sympy.ceiling(c) * symbol**k for (k,), c in zip(poly.monoms(), poly.coeffs()))
    )


def _close(predicted: float, actual: int) -> bool:
    return abs(predicted - actual) <= TOLERANCE * max(actual, 1) + 64


__all__ = ["Formula", "Formulas", "plan_formulas", "rehinted"]
