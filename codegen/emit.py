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
from analysis.layers import Layer
from codegen.body import ForwardPrinter, attribute_path, format_bytes, to_cst

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


def _built(module: torch.nn.Module, layer: Layer | None) -> str:
    """Return the expression that builds one submodule: a standard layer as itself
    (`torch.nn.Linear(256, 768)`), a container as its class, anything else plain."""
    if layer is None:
        return f"torch.nn.{_kind(module)}()"
    args = [repr(a) for a in layer.args] + [f"{k}={v!r}" for k, v in layer.kwargs]
    return f"torch.nn.{layer.cls.__name__}({', '.join(args)})"


def _tree(module: torch.nn.Module, layers: dict[str, Layer]) -> list[str]:
    """Return the statements that build the original's submodules, parents first, at the
    original's paths: appended to a Sequential or ModuleList, keyed in a ModuleDict."""
    lines = []
    for path, child in module.named_modules(remove_duplicate=False):
        if not path:
            continue
        parent, _, name = path.rpartition(".")
        owner = module.get_submodule(parent)
        here = attribute_path(parent) if parent else "self"
        value = _built(child, layers.get(path))
        if isinstance(owner, (torch.nn.Sequential, torch.nn.ModuleList)):
            lines.append(f"{here}.append({value})")
        elif isinstance(owner, torch.nn.ModuleDict):
            lines.append(f"{here}[{name!r}] = {value}")
        elif name.isidentifier():
            lines.append(f"{here}.{name} = {value}")
        else:
            lines.append(f"{here}.add_module({name!r}, {value})")
    return lines


def _parameters(module: torch.nn.Module, layers: dict[str, Layer]) -> list[dict[str, object]]:
    """Return every parameter and buffer by path that no layer makes itself; a second path to
    a tensor is a tie."""
    persistent = set(module.state_dict(keep_vars=True))
    out = []
    first: dict[int, str] = {}
    for kind, named in (
        ("parameter", module.named_parameters(remove_duplicate=False)),
        ("buffer", module.named_buffers(remove_duplicate=False)),
    ):
        for fqn, tensor in named:
            made = fqn.rpartition(".")[0] in layers and id(tensor) not in first
            first.setdefault(id(tensor), fqn)
            if made:
                continue
            out.append(
                {
                    "fqn": fqn,
                    "shape": tuple(tensor.shape),
                    "dtype": str(tensor.dtype),
                    "kind": kind,
                    "persistent": kind == "parameter" or fqn in persistent,
                    "tied": first[id(tensor)] if first[id(tensor)] != fqn else None,
                }
            )
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
    parameters = _parameters(module, program.layers)
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
        tree=_tree(module, program.layers),
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
