"""The command line: `python -m codegen emit|plan MODEL.py ...` (Contract 2)."""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

from analysis.errors import InternalError, UserError
from analysis.ir import Node
from analysis.shortfall import estimate_agrees, estimate_gap, shortfall
from analysis.dump import format_pass
from analysis.pipeline import PASSES, plan_model
from analysis.plan import in_dim_names
from analysis.select import Target
from codegen.body import format_bytes
from codegen.generate import Status, generate
from codegen.plot import plot_plan

_ROOT = Path(__file__).resolve().parent.parent
from codegen.measure import peak_stack
from codegen.verify import checked_inputs, measure_pair, verify

_UNITS = {
    "": 1, "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}  # fmt: skip


def parse_size(text: str) -> int | str:
    """Parse `512MB`, `2GiB` or plain bytes into bytes (KB/MB/GB are powers of 1000), or
    `auto` (the generated module sizes its chunks from the device's free memory on CUDA)."""
    if text.strip().lower() == "auto":
        return "auto"
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    if not match or match[2].lower() not in _UNITS:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (try 512MB, 2GiB or bytes)")
    value = float(match[1]) * _UNITS[match[2].lower()]
    if value < 1:
        raise argparse.ArgumentTypeError(f"budget must be at least one byte: {text!r}")
    return int(value)


def parse_ratio(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"ratio must be in (0, 1]: {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m codegen",
        description="Plan and emit chunked, memory-saving PyTorch modules.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    emit = sub.add_parser("emit", help="write a verified chunked module to DIR/<stem>.py")
    emit.add_argument("model", help="model file defining make_model() and make_inputs()")
    emit.add_argument("--out", required=True, help="output directory")
    emit.add_argument(
        "--no-verify", action="store_true", help="skip the check against the original"
    )
    emit.add_argument(
        "--tune",
        action="store_true",
        help="time a few chunk-size variants on this device and keep the fastest that fits",
    )
    plan = sub.add_parser("plan", help="print the chunk plan")
    plan.add_argument("model", help="model file defining make_model() and make_inputs()")
    plan.add_argument("--json", action="store_true", help="print one JSON object")
    plan.add_argument(
        "--dump",
        nargs="?",
        const="all",
        choices=("all", *PASSES),
        metavar="PASS",
        help="print the result of each pass (or one of: " + ", ".join(PASSES) + ")",
    )
    plan.add_argument(
        "--plot",
        metavar="FILE.png",
        help="also draw the estimated memory over the forward pass, original against planned",
    )
    for command in (emit, plan):
        group = command.add_mutually_exclusive_group()
        group.add_argument(
            "--memory-budget",
            type=parse_size,
            metavar="SIZE",
            help="activation bytes to stay within (512MB, 2GiB), or 'auto': the module sizes "
            "its chunks from the device's free memory at each call on CUDA, and plans with the "
            "default ratio (the sizes it keeps on CPU)",
        )
        group.add_argument("--memory-ratio", type=parse_ratio, metavar="R")
        command.add_argument(
            "--max-slowdown",
            type=parse_slowdown,
            metavar="X",
            help="keep the planned forward's estimated time within X times the original's, "
            "or 'none' (default: none while the target is within reach; 1.05 when it is not)",
        )
    return parser


def parse_slowdown(text: str) -> float:
    """`--max-slowdown`: a multiple of the original's time, at least 1, or "none"."""
    if text.strip().lower() in ("none", "inf"):
        return math.inf
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value >= 1.0:
        raise argparse.ArgumentTypeError(f"a slowdown is at least 1: {text!r}")
    return value


def target_of(args: argparse.Namespace) -> tuple[Target, str]:
    """Return the target and its description for generated headers."""
    slowdown = getattr(args, "max_slowdown", None)
    flag = ""
    if slowdown is not None:
        flag = f" --max-slowdown {slowdown:g}" if slowdown != math.inf else " --max-slowdown none"
    if args.memory_budget == "auto":
        return Target(max_slowdown=slowdown, auto=True), f"--memory-budget auto{flag}"
    if args.memory_budget is not None:
        return (
            Target(budget_bytes=args.memory_budget, max_slowdown=slowdown),
            f"--memory-budget {args.memory_budget}{flag}",
        )
    ratio = args.memory_ratio if args.memory_ratio is not None else 0.2
    return Target(ratio=ratio, max_slowdown=slowdown), f"--memory-ratio {ratio:g}{flag}"


def write_atomic(path: Path, text: str) -> None:
    """Write a file so readers see the old content or the new one, never a partial one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def _emit(args: argparse.Namespace) -> int:
    target, flag = target_of(args)
    out_dir = Path(args.out)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"{out_dir}: --out must be a directory")
    destination = out_dir / f"{Path(args.model).stem}.py"
    if destination.resolve() == Path(args.model).resolve():
        raise UserError(f"{args.model}: --out {out_dir} would write over the model file itself")
    status = Status()
    flag += " --tune" if args.tune else ""
    planned, emitted = generate(args.model, target, flag, status, tune=args.tune)
    measured: tuple[int, int] | None = None
    if not args.no_verify:
        status.show("verifying against the original on the example inputs")
        inputs = planned.loaded.inputs
        also = checked_inputs(planned.graph, inputs)
        generated = verify(emitted.source, planned.loaded.module, inputs, also)
        status.show("measuring activation memory on the example inputs")
        measured = measure_pair(planned.loaded.module, generated, planned.loaded.inputs)
        gap = _estimate_gap(planned, measured[0])
        status.done()
    write_atomic(destination, emitted.source)
    plan = planned.plan
    note = (
        " (met)"
        if plan.met
        else f", missing the target by {format_bytes(plan.planned_peak_bytes - plan.budget_bytes)}"
        f" ({shortfall(planned.graph, plan)})"
    )
    print(
        f"wrote {destination}: {len(plan.regions)} chunk loop(s), estimated peak "
        f"{format_bytes(plan.original_peak_bytes)} -> {format_bytes(plan.planned_peak_bytes)} "
        f"for a target of {format_bytes(plan.budget_bytes)}{note}"
        + (
            f"; measured {format_bytes(measured[0])} -> {format_bytes(measured[1])}"
            if measured
            else ""
        )
        + (f" ({gap})" if measured and gap else "")
    )
    if measured and plan.regions and measured[1] >= measured[0]:
        print(
            f"warning: {Path(args.model).name}: on the example inputs the generated module uses no "
            f"less activation memory than the original ({format_bytes(measured[0])} -> "
            f"{format_bytes(measured[1])}); see `python -m codegen plan {args.model} --plot FILE.png`",
            file=sys.stderr,
        )
    return 0


def _estimate_gap(planned: Any, measured: int) -> str | None:
    """Why the original measured off its estimate, where it does (`estimate_gap`)."""
    estimated = planned.plan.original_peak_bytes
    if estimate_agrees(estimated, measured):
        return None  # no second run of the original for its stack
    if any(t.device.type != "cpu" for t in planned.loaded.inputs if isinstance(t, torch.Tensor)):
        return None
    _, stack = peak_stack(planned.loaded.module, planned.loaded.inputs)
    return estimate_gap(planned.graph, estimated, measured, stack)


def _plan(args: argparse.Namespace) -> int:
    target, _ = target_of(args)
    status = Status()
    planned = plan_model(args.model, target, status.planning)
    status.done()
    plan, graph = planned.plan, planned.graph
    if args.dump:
        for name, value in planned.passes:
            if args.dump in ("all", name):
                print(f"=== {name} ===")
                print(format_pass(name, value, graph))
        return 0
    if args.plot:
        title = (
            f"{Path(args.model).name}: estimated peak {format_bytes(plan.original_peak_bytes)} -> "
            f"{format_bytes(plan.planned_peak_bytes)}, {len(plan.regions)} chunk loop(s)"
        )
        plot_plan(graph, plan, Path(args.plot), title)
    formulas = planned.program.formulas

    def formula_of(index: int) -> dict[str, str] | None:
        found = formulas.regions[index] if formulas is not None else None
        if found is None:
            return None
        return {
            "fixed_bytes": in_dim_names(found.fixed, graph),
            "bytes_per_row": in_dim_names(found.per_row, graph),
        }

    if args.json:
        data = plan.to_json(graph)
        for index, region in enumerate(data["regions"]):
            region["memory_formula"] = formula_of(index)
        print(json.dumps(data, indent=2))
        return 0
    print(
        f"{Path(args.model).name}: estimated activation peak {format_bytes(plan.original_peak_bytes)}"
    )
    print(
        f"target {format_bytes(plan.budget_bytes)}; planned peak {format_bytes(plan.planned_peak_bytes)}"
        + ("" if plan.met else f" (target missed: {shortfall(graph, plan)})")
    )
    limit = ", no time limit"
    if plan.max_slowdown is not None:
        limit = f", within {plan.max_slowdown:g}x"
        limit += " (the default for a target out of reach)" if plan.by_default else ""
    print(f"estimated time {plan.time_ratio:.2f}x the original's (cost model){limit}")
    for index, region in enumerate(plan.to_json(graph)["regions"], 1):
        dim = region["dim"]
        where = region["where"]
        print(
            f"  region {index}: {where}, over {dim['symbol'] or dim['size']} "
            f"({dim['words']}), chunk {region['chunk_size']} x{region['n_chunks']}, "
            f"peak {format_bytes(region['estimated_peak_bytes'])}, {len(region['nodes'])} nodes in the loop"
        )
        passes = region["statistics_passes"]
        if passes:
            norms = ", ".join(
                f"{p['module'] or p['node']}" + (f" ({p['line']})" if p["line"] else "")
                for p in passes
            )
            print(
                f"    a first pass recomputes the input of {norms} for its statistics, "
                "so the input is never held whole"
            )
        formula = formula_of(index - 1)
        if formula is not None:
            print(
                f"    at run time: {formula['fixed_bytes']} bytes + {formula['bytes_per_row']} "
                "per row of the chunk, within the budget"
            )
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "emit": _emit,
    "plan": _plan,
}


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; return the exit code (0 ok, 1 user error, 2 usage, 3 internal error)."""
    args = _parser().parse_args(argv)
    torch.set_grad_enabled(False)
    try:
        return COMMANDS[args.command](args)
    except BrokenPipeError:  # the reader went away (`plan ... | head`): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except InternalError as exc:
        kept = f"; the generated code is kept in {exc.evidence}" if exc.evidence else ""
        print(f"INTERNAL ERROR: {exc}{kept}. Please report this.", file=sys.stderr)
        return 3
    except Exception as exc:  # a bug of ours, not the user's
        print(
            f"INTERNAL ERROR: {type(exc).__name__}: {exc}{_in_flight(exc)}. Please report this.",
            file=sys.stderr,
        )
        return 3


def _in_flight(exc: BaseException) -> str:
    """Where an unexpected error struck: the graph node the innermost frame holding one was
    working on (a local `node`, else any), with its module path and model line; "" if none."""
    found: Node | None = None
    ours = ""  # the innermost frame of this tool's own code: where to look first
    trace = exc.__traceback__
    while trace is not None:
        code = Path(trace.tb_frame.f_code.co_filename)
        if code.is_relative_to(_ROOT) and code.parts[len(_ROOT.parts)] in ("analysis", "codegen"):
            ours = f"{code.relative_to(_ROOT)}:{trace.tb_lineno} in {trace.tb_frame.f_code.co_name}"
        local = trace.tb_frame.f_locals
        named = local.get("node")
        nodes = (
            [named]
            if isinstance(named, Node)
            else [v for v in local.values() if isinstance(v, Node)]
        )
        found = nodes[0] if nodes else found
        trace = trace.tb_next
    raised = f", raised at {ours}" if ours else ""
    if found is None:
        return raised
    where = f", at graph node {found.name}"
    if found.module_path:
        where += f" in {found.module_path}"
    if found.source is not None:
        where += f" ({found.source.cite()})"
    return where + raised


__all__ = ["main"]
