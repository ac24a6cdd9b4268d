"""Benchmark generated modules against their originals: activation memory and time.

    python scripts/bench.py [MODEL.py ...] [--memory-ratio R | --memory-budget 13.2MiB]
        [--repeats N] [--dtype bf16] [--write]

For each model (default: every file in examples/), in one process: plan and emit the chunked
module (verified), measure activation memory of both with the live-storage tracker (CPU) or
torch.cuda's allocator statistics (`--device cuda`), and time them interleaved, reporting the
median of the per-pair time ratios. `--write` rewrites BENCHMARKS.md with the table.
`--dtype bf16` (or fp16) runs each model with its weights and floating inputs in that dtype,
through a model file that wraps the original's factories, and checks outputs by the
half-precision rule (NOTE [Half-precision tolerance] in codegen/verify.py).
"""

from __future__ import annotations

import argparse
from dataclasses import replace
import platform
import tempfile
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch.utils._pytree import tree_leaves, tree_map  # noqa: E402

from codegen.measure import measure_peak  # noqa: E402
from analysis.select import Target  # noqa: E402
from codegen.body import format_bytes  # noqa: E402
from codegen.generate import generate  # noqa: E402
from codegen.verify import checked_inputs, compare, float_reference, verify  # noqa: E402
from codegen.cli import parse_size  # noqa: E402
from analysis.shortfall import shortfall  # noqa: E402
from scripts.baselines import APPROXIMATE, EXPERTS  # noqa: E402
from scripts.sweep import FAMILIES, TOKENS, depth_timing, longest, plot, sweep  # noqa: E402

#: BENCHMARKS.md keeps what follows this line when `--write` rewrites the tables above it
KEPT = "<!-- Runs by hand, kept as they are by --write: -->"


#: `--dtype` names
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

WRAPPER = """\"\"\"{stem} from {path}, with its weights and floating inputs in {dtype}.\"\"\"

import importlib.util

import torch

_spec = importlib.util.spec_from_file_location("_original_{stem}", {path!r})
_original = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_original)


def make_model():
    return _original.make_model().to({dtype})


def make_inputs():
    cast = lambda x: x.to({dtype}) if torch.is_tensor(x) and x.is_floating_point() else x
    return tuple(cast(x) for x in _original.make_inputs())


if hasattr(_original, "dynamic_shapes"):
    dynamic_shapes = _original.dynamic_shapes
"""


def in_dtype(path: Path, dtype: torch.dtype, directory: Path) -> Path:
    """A model file (Contract 1) that builds `path`'s model and inputs in `dtype`."""
    wrapped = directory / path.name
    wrapped.write_text(WRAPPER.format(stem=path.stem, path=str(path.resolve()), dtype=dtype))
    return wrapped


def _to(value: Any, device: str) -> Any:
    return tree_map(lambda t: t.to(device) if isinstance(t, torch.Tensor) else t, value)


def _time(fn: Any, inputs: tuple[Any, ...], device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn(*inputs)
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def bench_model(
    path: Path,
    ratio: float,
    repeats: int,
    device: str,
    tune: bool = False,
    budget: int | None = None,
    after: Any = None,
    max_slowdown: float | None = None,
    auto: bool = False,
) -> dict[str, Any]:
    """Return one row: estimates, measured memory, time ratio and planning time; planned for
    `budget` bytes when given, else for `ratio` of the original's estimated peak. `after`, given
    the planned model and the verified module, adds entries of its own (the zoo's checks)."""
    started = time.perf_counter()
    if budget is not None:
        target, flags = Target(budget_bytes=budget), f"--memory-budget {budget}"
    else:
        target, flags = Target(ratio=ratio), f"--memory-ratio {ratio:g}"
    if max_slowdown is not None:  # NOTE [Time limit]
        target, flags = (
            replace(target, max_slowdown=max_slowdown),
            f"{flags} --max-slowdown {max_slowdown:g}",
        )
    planned, emitted = generate(path, target, flags, tune=tune)
    chunked = verified(planned, emitted.source).to(device)
    if auto:  # sized from the device's free memory at each call (on CPU, as planned)
        chunked.memory_budget = "auto"
    plan_seconds = time.perf_counter() - started
    original = planned.loaded.module.to(device)
    inputs = _to(planned.loaded.inputs, device)
    make_expert = EXPERTS.get(path.stem)
    expert = make_expert(original) if make_expert else None
    variants = [original, chunked] + ([expert] if expert is not None else [])
    with torch.no_grad():
        reference = original(*inputs)
        wide = float_reference(original, inputs, reference)  # half precision: float32 outputs
        expert_difference = None
        for index, variant in enumerate(variants[1:], start=1):
            result = variant(*inputs)
            if index == 2 and path.stem in APPROXIMATE:  # reported, not required
                expert_difference = _largest_difference(reference, result)
                continue
            problem = compare(reference, result, wide)
            if problem:
                raise SystemExit(f"{path.name}: {problem}")
        del reference, wide
        peaks = [measure_peak(variant, inputs) for variant in variants]
        for variant in variants:  # warm up
            variant(*inputs)
        # Each round runs every variant once, in an order that rotates from round to round,
        # so none always runs right after the original (whose frees and cache state would
        # otherwise favour or hurt the same one every time).
        ratios: list[list[float]] = [[] for _ in variants[1:]]
        for round_ in range(repeats):
            order = list(range(len(variants)))
            order = order[round_ % len(order) :] + order[: round_ % len(order)]
            seconds = {index: _time(variants[index], inputs, device) for index in order}
            for index in range(1, len(variants)):
                ratios[index - 1].append(seconds[index] / seconds[0])
    plan = planned.plan
    original_bytes, chunked_bytes = peaks[0], peaks[1]
    return {
        "model": path.stem,
        "original": original_bytes,
        "chunked": chunked_bytes,
        "reduction": 1 - chunked_bytes / original_bytes,
        "time_ratio": statistics.median(ratios[0]),
        "expert": peaks[2] if expert is not None else None,
        "expert_time_ratio": statistics.median(ratios[1]) if expert is not None else None,
        "expert_difference": expert_difference,
        "estimate_error_original": plan.original_peak_bytes / original_bytes - 1,
        "estimate_error_chunked": plan.planned_peak_bytes / chunked_bytes - 1,
        "regions": len(plan.regions),
        "plan_seconds": plan_seconds,
        "met": plan.met,
        "why": shortfall(planned.graph, plan) or "",
        **(after(planned, chunked) if after is not None else {}),
    }


def verified(planned: Any, source: str) -> torch.nn.Module:
    """The generated module, verified on the example inputs and on every path a run-time check
    picks (NOTE [Padding checked at run time])."""
    inputs = planned.loaded.inputs
    return verify(source, planned.loaded.module, inputs, checked_inputs(planned.graph, inputs))


def budget_by_length(path: Path, budget: int, device: str) -> list[dict[str, Any]]:
    """Emit `path` once with a budget; measure it and the original at lengths up to the Dim's
    bound (NOTE [Run-time chunk sizes])."""
    planned, emitted = generate(path, Target(budget_bytes=budget), f"--memory-budget {budget}")
    chunked = verified(planned, emitted.source).to(device)
    original = planned.loaded.module.to(device)
    symbol = planned.graph.symbols[0]
    (formula, region), *_ = [
        pair
        for pair in zip(planned.program.formulas.regions, planned.plan.regions)
        if pair[0] is not None
    ]
    rows_of = sys.modules[type(chunked).__module__]._rows  # the generated module's own helper
    rows = []
    for n in (256, 512, 1024, 2048, 3072, 4096):
        if symbol.upper is not None and n > symbol.upper:
            break
        (ids,) = planned.loaded.inputs
        ids = torch.randint(0, int(ids.max()) + 1, (1, n)).to(device)
        row = {"n": n, "original": measure_peak(original, (ids,))}
        row["generated"] = measure_peak(chunked, (ids,))
        at = {symbol.symbol: n}
        fixed, per_row = int(formula.fixed.xreplace(at)), int(formula.per_row.xreplace(at))
        row["rows"] = rows_of(budget, fixed, per_row, region.chunk_size)
        rows.append(row)
    return rows


def compiled_by_length(path: Path, repeats: int, device: str) -> list[dict[str, Any]]:
    """A GPT-style model file (token ids in) emitted at the default target, then the original
    and the module each under `torch.compile(dynamic=True)`, run at half, three quarters and
    all of the example's length, none a fixed size of the model (NOTE [Loops under
    torch.compile]): the graphs each compiles at each length, and the median time of `repeats`
    interleaved rounds against the eager original. On CUDA, the peak of the compiled module
    against the eager module's."""
    from torch._dynamo.utils import counters

    planned, emitted = generate(path, Target(ratio=0.2), "--memory-ratio 0.2")
    chunked = verified(planned, emitted.source).to(device)
    original = planned.loaded.module.to(device)
    torch._dynamo.reset()
    compiled = {
        "original": torch.compile(original, dynamic=True),
        "chunked": torch.compile(chunked, dynamic=True),
    }
    rows = []
    (example,) = planned.loaded.inputs
    length, vocab = example.shape[1], int(example.max()) + 1
    for n in (length // 2 + 3, 3 * length // 4 + 1, length):
        ids = torch.randint(0, vocab, (1, n)).to(device)
        row: dict[str, Any] = {"n": n}
        for name, module in compiled.items():
            before = counters["stats"]["unique_graphs"]
            problem = compare(original(ids), module(ids))
            if problem:
                raise SystemExit(f"{path.name} compiled at {n}: {problem}")
            row[f"{name}_graphs"] = counters["stats"]["unique_graphs"] - before
        variants = [original, compiled["original"], chunked, compiled["chunked"]]
        seconds: list[list[float]] = [[] for _ in variants]
        for round_ in range(repeats):
            order = list(range(len(variants)))
            order = order[round_ % len(order) :] + order[: round_ % len(order)]
            for index in order:
                seconds[index].append(_time(variants[index], (ids,), device))
        ratios = [
            statistics.median(t / o for t, o in zip(times, seconds[0])) for times in seconds[1:]
        ]
        row["original_compiled"], row["chunked"], row["chunked_compiled"] = ratios
        if device == "cuda":
            for name, module in (("eager_peak", chunked), ("compiled_peak", compiled["chunked"])):
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
                module(ids)
                torch.cuda.synchronize()
                row[name] = torch.cuda.max_memory_allocated() - base
        rows.append(row)
    torch._dynamo.reset()
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| model | original | chunked | reduction | time ratio | expert | expert reduction "
        "| expert time ratio | estimate error (orig / chunked) | regions | emit + verify |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        expert = (
            f"{format_bytes(r['expert'])} | {1 - r['expert'] / r['original']:.1%} "
            f"| {r['expert_time_ratio']:.2f}x"
            if r["expert"] is not None
            else "- | - | -"
        )
        if r.get("expert_difference") is not None:  # an approximate baseline: how far off
            expert += f" (differs by up to {r['expert_difference']:.2g})"
        lines.append(
            f"| {r['model']} | {format_bytes(r['original'])} | {format_bytes(r['chunked'])} "
            f"| {r['reduction']:.1%} | {r['time_ratio']:.2f}x | {expert} "
            f"| {r['estimate_error_original']:+.1%} / {r['estimate_error_chunked']:+.1%} "
            f"| {r['regions']} | {r['plan_seconds']:.1f} s |"
        )
    return "\n".join(lines)


def _largest_difference(want: Any, got: Any) -> float:
    """The largest absolute difference between two outputs' tensors."""
    pairs = zip(tree_leaves(want), tree_leaves(got))
    return max(
        (
            float((a.float() - b.float()).abs().max())
            for a, b in pairs
            if isinstance(a, torch.Tensor)
        ),
        default=0.0,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", type=Path)
    parser.add_argument("--memory-ratio", type=float, default=0.2)
    parser.add_argument(
        "--memory-budget",
        type=parse_size,
        help="a budget in bytes (or 13.2MiB) in place of the ratio",
    )
    parser.add_argument("--repeats", type=int, default=12)
    parser.add_argument(
        "--max-slowdown", type=float, help="plan within this multiple of the original's time"
    )
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--write", action="store_true", help="rewrite BENCHMARKS.md")
    parser.add_argument(
        "--sweep", action="store_true", help="also the longest input under a fixed budget"
    )
    parser.add_argument("--depths", action="store_true", help="also planning time by depth")
    parser.add_argument(
        "--compile",
        nargs="?",
        type=Path,
        const=ROOT / "examples" / "gpt.py",
        metavar="GPT.py",
        help="also a GPT-style model (default examples/gpt.py) under torch.compile at 3 lengths",
    )
    parser.add_argument(
        "--auto",
        action="store_true",
        help='run the generated modules with memory_budget="auto" (on CUDA: all that fits)',
    )
    parser.add_argument(
        "--lengths", action="store_true", help="also one GPT module with a budget at every length"
    )
    parser.add_argument("--tune", action="store_true", help="emit with --tune (timed chunk sizes)")
    parser.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    args = parser.parse_args(argv)
    torch.set_grad_enabled(False)
    if args.device == "cuda":  # full float32 in both: TF32 rounds chunked and whole differently
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    models = args.models or sorted((ROOT / "examples").glob("*.py"))
    if args.dtype != "fp32":
        scratch = Path(tempfile.mkdtemp(prefix="autochunk_dtype_"))
        models = [in_dtype(path, DTYPES[args.dtype], scratch) for path in models]
    rows = []
    for path in models:
        row = bench_model(
            path,
            args.memory_ratio,
            args.repeats,
            args.device,
            args.tune,
            args.memory_budget,
            max_slowdown=args.max_slowdown,
            auto=args.auto,
        )
        rows.append(row)
        print(table([row]).splitlines()[-1], flush=True)
    text = table(rows)
    print(text)
    sections = ""
    if args.sweep:
        sweeps = {}
        lines = [
            "| model | budget | original longest | chunked longest | extension |",
            "|---|---|---|---|---|",
        ]
        for path in models:
            if path.stem not in FAMILIES:
                continue
            budget, points = sweep(path.stem)
            sweeps[path.stem] = (budget, points)
            unit = FAMILIES[path.stem][4]
            first = longest(points, budget, chunked=False)
            last = longest(points, budget, chunked=True)
            how = "measured" if last and last.chunked_measured else "estimated"
            tokens = ""
            if path.stem in TOKENS:
                count = TOKENS[path.stem]
                tokens = f" ({count(last.length) / count(first.length):.1f}x tokens)"
            lines.append(
                f"| {path.stem} | {format_bytes(budget)} | {first.length} {unit} (measured) "
                f"| {last.length} {unit} ({how}) | {last.length / first.length:.1f}x{tokens} |"
            )
        plot(sweeps, ROOT / "benchmarks.png")
        sections += (
            "\n## Longest input under a fixed activation budget\n\n"
            "The budget is each original's measured peak at its example size. Lengths grow in "
            "steps of about 1.41x; the chunked module is planned for the budget at each length. "
            "The original is measured at the example size and estimated beyond (its estimate "
            "tracks measurement within a few percent, table above); the chunked peaks beyond the "
            "example size are the planner's estimates. For GPT the length is in tokens, for ViT "
            "the image side, for the Evoformer residues, for the UNet the latent side.\n\n"
            + "\n".join(lines)
            + "\n\n![memory against length](benchmarks.png)\n"
        )
        print("\n".join(lines))
    if args.lengths:
        budget = 32 * 2**20
        lines = [
            "| tokens | original | generated | generated / budget | rows per chunk, first loop |",
            "|---|---|---|---|---|",
        ]
        for r in budget_by_length(ROOT / "examples" / "gpt.py", budget, args.device):
            lines.append(
                f"| {r['n']} | {format_bytes(r['original'])} | {format_bytes(r['generated'])} "
                f"| {r['generated'] / budget:.2f} | {r['rows']} |"
            )
        sections += (
            "\n## One module for every length\n\n"
            f"`examples/gpt.py` emitted once with `--memory-budget {budget}` "
            f"({format_bytes(budget)}), then run at each length; each loop computes its chunk "
            "size from the input's length and the budget. Both columns are measured.\n\n"
            + "\n".join(lines)
            + "\n"
        )
        print("\n".join(lines))
    if args.compile:
        lines = [
            "| tokens | graphs compiled: original / generated | original compiled | generated "
            "| generated compiled |"
            + (" generated peak: eager / compiled |" if args.device == "cuda" else ""),
            "|---|---|---|---|---|" + ("---|" if args.device == "cuda" else ""),
        ]
        for r in compiled_by_length(args.compile, args.repeats, args.device):
            peaks = ""
            if args.device == "cuda":
                peaks = f" {format_bytes(r['eager_peak'])} / {format_bytes(r['compiled_peak'])} |"
            lines.append(
                f"| {r['n']} | {r['original_graphs']} / {r['chunked_graphs']} "
                f"| {r['original_compiled']:.2f}x | {r['chunked']:.2f}x "
                f"| {r['chunked_compiled']:.2f}x |{peaks}"
            )
        sections += (
            f"\n## torch.compile\n\n`{args.compile.name}` at the default target; the original and "
            "the generated module each under `torch.compile(dynamic=True)`. Times are medians of "
            f"{args.repeats} interleaved rounds against the eager original.\n\n"
            + "\n".join(lines)
            + "\n"
        )
        print("\n".join(lines))
    if args.depths:
        lines = ["| GPT depth | graph nodes | plan | emit + verify |", "|---|---|---|---|"]
        for r in depth_timing():
            lines.append(
                f"| {r['depth']} | {r['nodes']} | {r['plan_s']:.2f} s | {r['emit_s']:.1f} s |"
            )
        sections += (
            "\n## Planning time by depth\n\nGPT blocks at 1024 tokens, default target. Planning "
            "is search and selection; emit includes capture, emission and verification.\n\n"
            + "\n".join(lines)
            + "\n"
        )
        print("\n".join(lines))
    if args.write:
        command = "python scripts/bench.py " + " ".join(argv if argv is not None else sys.argv[1:])
        machine = (
            torch.cuda.get_device_name()
            if args.device == "cuda"
            else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
        )
        path = ROOT / "BENCHMARKS.md"
        previous = path.read_text() if path.exists() else ""
        kept = previous[previous.index(KEPT) :] if KEPT in previous else f"{KEPT}\n"
        path.write_text(
            "# Benchmarks\n\n"
            f"Command: `{command.strip()}`  \n"
            f"Machine: {machine}; torch {torch.__version__}; target `--memory-ratio "
            f"{args.memory_ratio:g}`.\n\n"
            "Activation memory is measured (live-storage tracker on CPU, "
            "`torch.cuda.max_memory_allocated` on CUDA). The time ratio is the median of "
            f"{args.repeats} rounds, chunked (or expert) over original in the same round: below "
            "1.00 is faster. Each round runs original, chunked and expert once, in an order that "
            "rotates from round to round. "
            "Estimate error is the planner's estimate against the measurement. Expert is the "
            "hand-written chunking practitioners use for the family (`scripts/baselines.py`: "
            "HF-style query-chunked attention and chunked feed-forward for GPT and ViT, "
            "OpenFold-style `chunk_layer` for the Evoformer, diffusers-style sliced attention "
            "and chunked feed-forward for the UNet), measured in the same process.\n\n"
            f"{text}\n{sections}\n{kept}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
