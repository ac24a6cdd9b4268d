"""Run the model zoo: emit, verify, measure and time each model in `examples/zoo/`, one at a time.

    python scripts/zoo.py [MODEL.py ...] [--memory-ratio 0.2] [--timeout 600] [--write]

Each model runs in a subprocess of its own, under a timeout, so a hang or a crash costs one row.
A row gives the original's and the generated module's measured activation peaks, the reduction,
the median time ratio, the loops, and whether the module was verified at a second size of its
dynamic dims (half the example's), or why not. A model short of the target says why in a few
words (NOTE [Whose limit]). `--write` puts the table, with the library versions it ran with,
in `BENCHMARKS.md` between the zoo markers; given models, it replaces only their rows and
notes, and names them as re-run on their own.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from analysis.plan import format_bytes  # noqa: E402
from analysis.shortfall import estimate_agrees  # noqa: E402

ZOO = ROOT / "examples" / "zoo"
BEGIN, END = "<!-- zoo: begin -->", "<!-- zoo: end -->"
LIBRARIES = ("torch", "transformers", "diffusers", "torchvision", "timm")


def run_one(path: Path, ratio: float, repeats: int) -> dict[str, Any]:
    """One zoo row, in this process."""
    import torch

    from scripts.bench import bench_model

    torch.set_grad_enabled(False)
    return bench_model(path, ratio, repeats, "cpu", after=_checked)


def _checked(planned: Any, generated: Any) -> dict[str, str]:
    """The row's checks beyond bench's: a second size, and why the original measured off its
    estimate (`analysis.shortfall.estimate_gap`), where it does."""
    from analysis.shortfall import estimate_gap
    from codegen.measure import peak_stack

    loaded = planned.loaded
    measured, stack = peak_stack(loaded.module, loaded.inputs)
    gap = estimate_gap(planned.graph, planned.plan.original_peak_bytes, measured, stack)
    return {**_second_size(planned, generated), "original_gap": gap or ""}


def _second_size(planned: Any, generated: Any) -> dict[str, str]:
    """Verify at half the example's size along every dynamic dim; say what stops it."""
    import inspect

    import torch

    from codegen.verify import compare

    spec = planned.loaded.dynamic_shapes
    if not planned.graph.symbols:
        fixed = _fixed_size(planned.loaded.path)
        if spec is None:
            found = f"static: {fixed}" if fixed else "static (no dynamic dims declared)"
        else:
            found = "static (export fixed them)"
        return {"dynamic": found}
    inputs = planned.loaded.inputs
    names = list(inspect.signature(planned.loaded.module.forward).parameters)[: len(inputs)]
    per_input = [spec.get(n) for n in names] if isinstance(spec, dict) else list(spec)
    smaller = []
    for x, dims in zip(inputs, per_input):
        axes = dims if isinstance(dims, dict) else dict(enumerate(dims or ()))
        for axis, dim in axes.items():
            if isinstance(x, torch.Tensor) and dim is not None:
                x = x.narrow(axis, 0, max(x.shape[axis] // 2, 2))
        smaller.append(x)
    try:
        expected = planned.loaded.module(*smaller)
    except Exception as exc:  # noqa: BLE001 - the original itself refuses that size
        return {"dynamic": f"the original fails at half size: {type(exc).__name__}"}
    problem = compare(expected, generated(*smaller))
    return {"dynamic": f"differs at half size: {problem}" if problem else "verified at 2 sizes"}


def _fixed_size(path: Path) -> str | None:
    """The model file's `FIXED_SIZE`: why the model takes one size only."""
    for statement in ast.parse(path.read_text()).body:
        if isinstance(statement, ast.Assign) and [
            getattr(t, "id", None) for t in statement.targets
        ] == ["FIXED_SIZE"]:
            return ast.literal_eval(statement.value)
    return None


def versions() -> str:
    found = []
    for name in LIBRARIES:
        try:
            found.append(f"{name} {importlib.import_module(name).__version__}")
        except Exception:  # noqa: BLE001 - not installed
            found.append(f"{name} not installed")
    return ", ".join(found)


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| model | original | generated | reduction | time ratio | loops | dynamic "
        "| generated's estimate | short of the target because |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    notes = []
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['model']} | - | - | - | - | - | - | - | {row['error']} |")
            continue
        planned = round((1 + row["estimate_error_chunked"]) * row["chunked"])
        estimate = (
            "exact"
            if estimate_agrees(planned, row["chunked"])
            else f"{row['estimate_error_chunked']:+.1%}"
        )
        lines.append(
            f"| {row['model']} | {format_bytes(row['original'])} | {format_bytes(row['chunked'])} | "
            f"{row['reduction']:.1%} | {row['time_ratio']:.2f}x | {row['regions']} | "
            f"{row['dynamic']} | {estimate} | {'' if row['met'] else row['why']} |"
        )
        if row.get("original_gap"):
            notes.append(f"- {row['model']}: {row['original_gap']}.")
    if notes:
        lines += ["", "Originals measured off their estimates:", "", *notes]
    return "\n".join(lines)


def merged(old: str, new: str) -> str:
    """The table in `old` with the rows and notes of the models in `new` replaced by `new`'s,
    and a line naming the rows re-run on their own."""

    def parts(text: str) -> tuple[list[str], dict[str, str], dict[str, str]]:
        lines = text.strip().splitlines()
        head = [line for line in lines if line.startswith("Ran with")]
        rows = {
            line.split("|")[1].strip(): line
            for line in lines
            if line.startswith("| ") and not line.startswith("| model ")
        }
        notes = {line[2:].split(":", 1)[0]: line for line in lines if line.startswith("- ")}
        return head, rows, notes

    old_head, old_rows, old_notes = parts(old)
    new_head, new_rows, new_notes = parts(new)
    said = "Re-run on their own, after the rest: "
    before = [line for line in old.splitlines() if line.startswith(said)]
    rerun = set(new_rows) | set(before[0][len(said) : -1].split(", ") if before else ())
    rows = {**old_rows, **new_rows}
    notes = {k: v for k, v in old_notes.items() if k not in new_rows}
    notes.update(new_notes)
    lines = [
        (old_head or new_head)[0],
        f"{said}{', '.join(sorted(rerun))}.",
        "",
        *table([]).splitlines(),
        *(rows[name] for name in sorted(rows)),
    ]
    if notes:
        lines += ["", "Originals measured off their estimates:", ""]
        lines += [notes[name] for name in sorted(notes)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", type=Path)
    parser.add_argument("--memory-ratio", type=float, default=0.2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--write", action="store_true")
    parser.add_argument("--one", type=Path, help=argparse.SUPPRESS)  # the subprocess's model
    args = parser.parse_args(argv)
    if args.one is not None:
        print(json.dumps(run_one(args.one, args.memory_ratio, args.repeats)))
        return 0
    rows = []
    for path in args.models or sorted(ZOO.glob("*.py")):
        started = time.perf_counter()
        command = [sys.executable, __file__, "--one", str(path)]
        command += ["--memory-ratio", str(args.memory_ratio), "--repeats", str(args.repeats)]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout)
        except subprocess.TimeoutExpired:
            rows.append({"model": path.stem, "error": f"timed out after {args.timeout:g} s"})
        else:
            if done.returncode == 0:
                rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            else:
                last = (done.stderr.strip().splitlines() or ["no output"])[-1]
                rows.append({"model": path.stem, "error": last.replace("|", "/")})
        print(
            table(rows[-1:]).splitlines()[2],
            f"({time.perf_counter() - started:.0f} s)",
            flush=True,
        )
    text = f"Ran with {versions()}; `--memory-ratio {args.memory_ratio:g}`.\n\n{table(rows)}\n"
    print(text)
    if args.write:
        bench = ROOT / "BENCHMARKS.md"
        current = bench.read_text()
        if args.models and BEGIN in current:  # a few rows re-run: the others stay as they were
            text = merged(current.split(BEGIN, 1)[1].split(END, 1)[0], text)
        block = f"{BEGIN}\n{text}{END}"
        if BEGIN in current:
            head, rest = current.split(BEGIN, 1)
            current = head + block + rest.split(END, 1)[1]
        else:
            current = (
                current.rstrip()
                + "\n\n## Model zoo (`python scripts/zoo.py --write`)\n\n"
                + block
                + "\n"
            )
        bench.write_text(current)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
