"""Emit a generated module: Jinja2 skeleton, libcst forward body, black formatting."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import black
import jinja2
import libcst as cst
import torch

from analysis.ir import Graph
from analysis.plan import ChunkPlan, describe_lines, region_dim, symbol_name
from analysis.program import Program
from codegen import __version__
from codegen.body import ForwardPrinter, format_bytes, to_cst

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"


@dataclass(frozen=True)
class Emitted:
    """A generated module's source and the class it defines."""

    #: the module's formatted source
    source: str
    #: name of the nn.Module subclass in `__all__`
    class_name: str


def forward_source(graph: Graph, plan: ChunkPlan, program: Program) -> str:
    """Return the `forward` method's source, built with libcst."""
    params, items = ForwardPrinter(graph, plan, program).build()
    signature = ", ".join(["self", *params])
    func = cst.parse_statement(f"def forward({signature}):\n    pass\n")
    assert isinstance(func, cst.FunctionDef)
    func = func.with_changes(body=cst.IndentedBlock(body=to_cst(items)))
    return cst.Module(body=[func]).code


#: the containers whose class the generated module keeps (indexing depends on it)
_CONTAINERS = (torch.nn.Sequential, torch.nn.ModuleList, torch.nn.ModuleDict)


def _kind(module: torch.nn.Module) -> str:
    """Return the `torch.nn` class a module is built as: its container class, else Module."""
    return next((c.__name__ for c in _CONTAINERS if isinstance(module, c)), "Module")


def _containers(module: torch.nn.Module) -> list[tuple[str, str, int]]:
    """Return every container's path, class and length (Sequential and ModuleList), parents
    first, the root included: the order `_build` needs."""
    return [
        (fqn, _kind(m), len(m) if not isinstance(m, torch.nn.ModuleDict) else 0)
        for fqn, m in module.named_modules(remove_duplicate=False)
        if _kind(m) != "Module"
    ]


def _parameters(module: torch.nn.Module) -> list[dict[str, object]]:
    """Return every parameter and buffer by path; a second path to a tensor is a tie."""
    persistent = set(module.state_dict(keep_vars=True))
    out = []
    first: dict[int, str] = {}
    for kind, named in (
        ("parameter", module.named_parameters(remove_duplicate=False)),
        ("buffer", module.named_buffers(remove_duplicate=False)),
    ):
        for fqn, tensor in named:
            out.append(
                {
                    "fqn": fqn,
                    "shape": tuple(tensor.shape),
                    "dtype": str(tensor.dtype),
                    "kind": kind,
                    "persistent": kind == "parameter" or fqn in persistent,
                    "tied": first.get(id(tensor)),
                }
            )
            first.setdefault(id(tensor), fqn)
    return out


def emit_module(
    graph: Graph,
    plan: ChunkPlan,
    module: torch.nn.Module,
    command: str,
    target: str,
    program: Program,
    budget: int | None = None,
) -> Emitted:
    """Return the formatted source of the generated module, printing its loop program.

    Loops over the dynamic dims that size their chunks at run time (NOTE [Run-time chunk
    sizes]) stay within `budget` bytes by default, else a share of the original's estimated
    peak at the input's size.
    """
    class_name = f"Chunked{graph.model_class}"
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
    )
    regions = []
    for region, peak in zip(plan.regions, plan.region_peaks, strict=True):
        name, axis = region_dim(region, graph)
        dim = symbol_name(region.extent, graph) or str(region.extent)
        regions.append(
            {
                "lines": describe_lines(region, graph),
                "dim": f"{dim} ({name} axis {axis})",
                "chunk_size": region.chunk_size,
                "n_chunks": region.n_chunks(graph),
                "peak": format_bytes(peak),
            }
        )
    missed = ""
    if not plan.met:
        over = plan.planned_peak_bytes - plan.budget_bytes
        missed = f" (misses the target by {format_bytes(over)})"
    forward = forward_source(graph, plan, program)
    parameters = _parameters(module)
    source = env.get_template("module.py.j2").render(
        class_name=class_name,
        model_class=graph.model_class,
        model_file=Path(graph.model_file).name,
        version=__version__,
        command=command,
        target=target,
        original_peak=format_bytes(plan.original_peak_bytes),
        planned_peak=format_bytes(plan.planned_peak_bytes),
        missed=missed,
        regions=regions,
        parameters=parameters,
        ties=any(p["tied"] for p in parameters),
        containers=_containers(module),
        base=f"torch.nn.{_kind(module)}",
        forward=forward,
        output_class=program.output_class,
        runtime_sizes=program.budget is not None,
        budget=budget,
    )
    return Emitted(format_source(source), class_name)


def format_source(source: str) -> str:
    """Format with black; the result is stable under a second pass."""
    return black.format_str(source, mode=black.Mode())


__all__ = ["Emitted", "emit_module"]
