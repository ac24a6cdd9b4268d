"""Longest input under a fixed activation budget, original against chunked; planning time by depth.

Used by `scripts/bench.py --sweep`. Each family is rebuilt at a ladder of lengths (sequence
length, image side, residue count, latent side). The original's peak is the planner's estimate
(which tracks measurement within a few percent), measured where the run is cheap; the chunked
module is planned for the budget at each length, estimated, and measured where cheap. Every
number says which it is.
"""

from __future__ import annotations

import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from analysis.capture import capture
from analysis.loader import load_model_file
from codegen.measure import measure_peak
from analysis.memory import estimate_graph
from analysis.select import Target, make_plan
from codegen.cli import main
from codegen.generate import generate
from codegen.verify import import_source, instantiate

ROOT = Path(__file__).resolve().parent.parent

TEMPLATE = """
    import importlib.util
    import torch

    _spec = importlib.util.spec_from_file_location("family", {path!r})
    family = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(family)
    {setup}

    def make_model():
        torch.manual_seed(0)
        return {model}

    def make_inputs():
        g = torch.Generator().manual_seed(0)
        return {inputs}
"""

#: family -> (setup line, model expression, inputs expression with {n}, example length, unit)
#: and, in TOKENS, how many attention tokens a length gives (ViT: patches; UNet: top-level
#: latent positions), for comparing with sequence-length figures
FAMILIES: dict[str, tuple[str, str, str, int, str]] = {
    "gpt": (
        "family.MAX_LEN = 1 << 17",
        "family.GPT()",
        "(torch.randint(0, family.VOCAB, (1, {n}), generator=g),)",
        2048,
        "tokens",
    ),
    "vit": ("", "family.ViT(image={n})", "(torch.randn(1, 3, {n}, {n}, generator=g),)", 640, "px"),
    "evoformer": (
        "",
        "family.Evoformer()",
        "(torch.randn(family.N_SEQ, {n}, family.C_M, generator=g),"
        " torch.randn({n}, {n}, family.C_Z, generator=g))",
        224,
        "residues",
    ),
    "unet": (
        "",
        "family.UNet()",
        "(torch.randn(1, 4, {n}, {n}, generator=g), torch.tensor([500.0]),"
        " torch.randn(1, 77, family.CONTEXT_WIDTH, generator=g))",
        64,
        "latent px",
    ),
}

TOKENS = {"vit": lambda n: (n // 16) ** 2, "unet": lambda n: n * n}

#: lengths up to this multiple of the example are run and measured; beyond, estimated only
MEASURE_UP_TO = 1.0
#: the ladder stops at this multiple of the example length
LADDER_MAX = 16.0
#: lengths must be multiples of this, per family (patches and down-sampling need it)
STEP = {"gpt": 64, "vit": 32, "evoformer": 16, "unet": 8}


def model_file(family: str, n: int, directory: Path) -> Path:
    setup, model, inputs, _, _ = FAMILIES[family]
    path = directory / f"{family}_{n}.py"
    source = TEMPLATE.format(
        path=str(ROOT / "examples" / f"{family}.py"),
        setup=setup,
        model=model.format(n=n),
        inputs=inputs.format(n=n),
    )
    path.write_text(textwrap.dedent(source))
    return path


@dataclass
class Point:
    length: int
    original: int
    original_measured: bool
    chunked: int | None
    chunked_measured: bool


def ladder(family: str) -> list[int]:
    base = FAMILIES[family][3]
    step = STEP[family]
    lengths, k = [], 0
    while True:
        n = int(round(base * 2 ** (k / 2) / step)) * step
        if n > base * LADDER_MAX:
            return lengths
        lengths.append(n)
        k += 1


def _point(family: str, n: int, budget: int, directory: Path, log: Any) -> Point:
    """Return one length's peaks: measured at the example size, estimated beyond."""
    path = model_file(family, n, directory)
    if n <= FAMILIES[family][3] * MEASURE_UP_TO:
        planned, emitted = generate(path, Target(budget_bytes=budget), "")
        loaded, plan = planned.loaded, planned.plan
        original = measure_peak(loaded.module, loaded.inputs)
        module, _ = import_source(emitted.source)
        chunked = measure_peak(instantiate(module, loaded.module), loaded.inputs)
        point = Point(n, original, True, chunked if plan.met else None, True)
    else:
        graph = capture(load_model_file(path))
        plan = make_plan(graph, Target(budget_bytes=budget))
        original = estimate_graph(graph).peak
        point = Point(n, original, False, plan.planned_peak_bytes if plan.met else None, False)
    chunked_text = "-" if point.chunked is None else f"{point.chunked / 2**20:.0f} MiB"
    log(f"  {family} {n}: original {original / 2**20:.0f} MiB, chunked {chunked_text}")
    return point


def sweep(family: str, log: Any = print, refine: int = 3) -> tuple[int, list[Point]]:
    """Return the budget (the original's measured peak at the example size) and the original
    and chunked peaks along the ladder, until the chunked plan no longer fits it."""
    points = []
    base = FAMILIES[family][3]
    with tempfile.TemporaryDirectory() as tmp:
        example = load_model_file(model_file(family, base, Path(tmp)))
        budget = measure_peak(example.module, example.inputs)
        del example
        for n in ladder(family):
            points.append(_point(family, n, budget, Path(tmp), log))
            if points[-1].chunked is None:
                break
        if len(points) > 1 and points[-1].chunked is None:  # bisect between fit and miss
            low, high = points[-2].length, points[-1].length
            for _ in range(refine):
                mid = (low + high) // 2 // STEP[family] * STEP[family]
                if mid in (low, high):
                    break
                point = _point(family, mid, budget, Path(tmp), log)
                points.insert(-1, point)
                low, high = (mid, high) if point.chunked is not None else (low, mid)
    return budget, points


def longest(points: list[Point], budget: int, chunked: bool) -> Point | None:
    fits = [
        p
        for p in points
        if (p.chunked if chunked else p.original) is not None
        and (p.chunked if chunked else p.original) <= budget
    ]
    return fits[-1] if fits else None


def depth_timing(depths: tuple[int, ...] = (2, 6, 12, 24), seq: int = 1024) -> list[dict[str, Any]]:
    """Return planning and emit time for GPTs of growing depth."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for depth in depths:
            path = Path(tmp) / f"gpt_depth_{depth}.py"
            source = TEMPLATE.format(
                path=str(ROOT / "examples" / "gpt.py"),
                setup="",
                model=f"family.GPT(depth={depth})",
                inputs=f"(torch.randint(0, family.VOCAB, (1, {seq}), generator=g),)",
            )
            path.write_text(textwrap.dedent(source))
            graph = capture(load_model_file(path))
            start = time.perf_counter()
            make_plan(graph, Target(ratio=0.2))
            plan_seconds = time.perf_counter() - start
            start = time.perf_counter()
            assert main(["emit", str(path), "--out", str(Path(tmp) / "out")]) == 0
            rows.append(
                {
                    "depth": depth,
                    "nodes": len(graph.nodes),
                    "plan_s": plan_seconds,
                    "emit_s": time.perf_counter() - start,
                }
            )
    return rows


def plot(sweeps: dict[str, tuple[int, list[Point]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(sweeps), figsize=(4 * len(sweeps), 3.4))
    for ax, (family, (budget, points)) in zip(axes, sweeps.items()):
        xs = [p.length for p in points]
        ax.plot(xs, [p.original / 2**20 for p in points], "o-", label="original", color="tab:red")
        chunked = [(p.length, p.chunked / 2**20) for p in points if p.chunked is not None]
        ax.plot(*zip(*chunked), "s-", label="chunked", color="tab:blue")
        ax.axhline(budget / 2**20, ls="--", color="gray", label="budget")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log", base=2)
        ax.set_title(family)
        ax.set_xlabel(FAMILIES[family][4])
        ax.set_ylabel("activation MiB")
    axes[0].legend(fontsize=8)
    fig.suptitle(
        "Activation memory against input size; dashed: the original's peak at the example size"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)


__all__ = ["sweep", "longest", "depth_timing", "plot"]
