"""Emit a generated module: Jinja2 skeleton, libcst forward body, black formatting."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from pathlib import Path

import black
import jinja2
import libcst as cst
import torch

from analysis.ir import Graph
from analysis.plan import ChunkPlan, describe_lines, dim_words, symbol_name
from analysis.fastpath import NO_PADDING
from analysis.program import Budget, CausalRows, Program, Statement
from codegen import __version__
from analysis.layers import Layer
from analysis.ops import info
from analysis.errors import InternalError
from codegen.classes import (
    GeneratedClass,
    Instance,
    common_comments,
    fill,
    fill_notes,
    group_classes,
)
from codegen.numbering import Numbering
from codegen.body import ForwardPrinter, Loop, attribute_path, format_bytes, to_cst

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
    return _function(*ForwardPrinter(graph, plan, program).build())


def _function(params: list[str], items: list[Any]) -> str:
    """`def forward(self, ...)` with the printed items as its body; one that runs a chunk loop
    is left to run as written under torch.compile (NOTE [Loops under torch.compile])."""
    signature = ", ".join(["self", *params])
    func = cst.parse_statement(f"def forward({signature}):\n    pass\n")
    assert isinstance(func, cst.FunctionDef)
    func = func.with_changes(body=cst.IndentedBlock(body=to_cst(items)))
    if any(isinstance(item, Loop) and item.chunk for item in items):
        skip = cst.Decorator(
            cst.parse_expression("torch.compiler.disable(recursive=False)"),
            trailing_whitespace=cst.TrailingWhitespace(
                whitespace=cst.SimpleWhitespace("  "),
                comment=cst.Comment("# compile runs its loops as written"),
            ),
        )
        func = func.with_changes(decorators=[skip])
    return cst.Module(body=[func]).code


# NOTE [Loops under torch.compile]
# Dynamo unrolls a `for` over `range(0, seq, chunk)` into the graph, so a compiled chunk loop
# would be one graph per number of chunks, recompiled at every length, with its chunks free
# to be fused back together. A forward that runs a chunk loop is therefore marked
# `torch.compiler.disable(recursive=False)`: compile runs that frame as written, eagerly,
# and still compiles the modules it calls (their forwards are frames of their own), and the
# graphs around it. The helpers the loops call (`_rows`, `_budget`, the statistics pass, the
# causal attention by rows) are disabled whole: they branch on Python ints that would
# otherwise be guarded on. One compile then serves every length (`tests/test_compile.py`);
# the loop holds what the plan says, as in eager mode.


#: the containers whose class the generated module keeps (indexing depends on it)
_CONTAINERS = (torch.nn.Sequential, torch.nn.ModuleList, torch.nn.ModuleDict)


def _kind(module: torch.nn.Module) -> str:
    """Return the `torch.nn` class a module is built as: its container class, else Module."""
    return next((c.__name__ for c in _CONTAINERS if isinstance(module, c)), "Module")


class _Builder:
    """Write the statements that build the original's submodules and tensors, each generated
    class building its own subtree when all its instances are alike."""

    def __init__(
        self, root: torch.nn.Module, layers: dict[str, Layer], classes: dict[str, GeneratedClass]
    ) -> None:
        self.root = root
        self.layers = layers
        #: module path -> the class it is built as
        self.classes = classes
        #: how whole numbers are written (NOTE [One class per block])
        self.num = Numbering()
        #: whether any statement written registers a tensor (the module needs `_register`)
        self.registers = False

    def built(self, path: str, module: torch.nn.Module) -> str:
        """The expression that builds one submodule: a standard layer as itself
        (`torch.nn.Linear(256, 768)`), a generated block as its class, a container as its
        class, anything else plain."""
        layer = self.layers.get(path)
        if layer is not None:
            args = [self.literal(a) for a in layer.args]
            args += [f"{k}={self.literal(v)}" for k, v in layer.kwargs]
            return f"torch.nn.{layer.cls.__name__}({', '.join(args)})"
        if path in self.classes:
            cls = self.classes[path]
            args = ", ".join(f"{k}={self.num(v)}" for k, v in cls.arguments(path))
            return f"{cls.name}({args})"
        return f"torch.nn.{_kind(module)}()"

    def literal(self, value: Any) -> str:
        """A constructor argument, its whole numbers as the numbering writes them."""
        if isinstance(value, int) and not isinstance(value, bool):
            return self.num(value)
        if isinstance(value, tuple):
            inner = ", ".join(self.literal(v) for v in value)
            return f"({inner}{',' if len(value) == 1 else ''})"
        if isinstance(value, list):
            return f"[{', '.join(self.literal(v) for v in value)}]"
        return repr(value)

    def builds_itself(self, path: str) -> bool:
        found = self.classes.get(path)
        return found is not None and found.builds is not None

    def lines(
        self, path: str, module: torch.nn.Module, numbering: Numbering | None = None
    ) -> list[str]:
        """The statements that build `module`'s subtree (its children, their tensors, below),
        written from `module` (`self.attn.qkv = ...`)."""
        self.num = numbering or Numbering()
        out: list[str] = []
        self._walk(module, path, "", out)
        return out

    def share(self, cls: GeneratedClass, numbers: dict) -> None:
        """Let the class build its submodules itself when every instance builds them alike,
        up to numbers (which become constructor arguments)."""
        modules = [self.root.get_submodule(path) for path in cls.paths]
        recorded = []
        for path, module in zip(cls.paths, modules):
            numbering = Numbering(record=True)
            recorded.append((self.lines(path, module, numbering), numbering.values))
        if any(lines != recorded[0][0] for lines, _ in recorded):
            return
        filled = fill([values for _, values in recorded], cls.paths, modules, numbers, True)
        cls.builds = self.lines(cls.paths[0], modules[0], Numbering(fill=filled))
        cls.numbers = list(numbers.values())

    def _walk(self, module: torch.nn.Module, path: str, relative: str, out: list[str]) -> None:
        here = attribute_path(relative) if relative else "self"
        if path not in self.layers:
            persistent = set(module.state_dict(keep_vars=True))
            for leaf, tensor in module._parameters.items():
                if tensor is not None:
                    out.append(self.register(relative, leaf, tensor, "parameter", True))
            for leaf, tensor in module._buffers.items():
                if tensor is not None:
                    out.append(self.register(relative, leaf, tensor, "buffer", leaf in persistent))
        for name, child in module._modules.items():
            if child is None:
                continue
            child_path = f"{path}.{name}" if path else name
            child_relative = f"{relative}.{name}" if relative else name
            value = self.built(child_path, child)
            if type(module) in (torch.nn.Sequential, torch.nn.ModuleList) and name.isdigit():
                out.append(f"{here}.append({value})")  # a named Sequential keeps its names
            elif isinstance(module, torch.nn.ModuleDict):
                out.append(f"{here}[{name!r}] = {value}")
            elif name.isidentifier():
                out.append(f"{here}.{name} = {value}")
            else:
                out.append(f"{here}.add_module({name!r}, {value})")
            if not self.builds_itself(child_path):
                self._walk(child, child_path, child_relative, out)

    def register(
        self, owner: str, leaf: str, tensor: torch.Tensor, kind: str, persistent: bool
    ) -> str:
        self.registers = True
        fqn = f"{owner}.{leaf}" if owner else leaf
        extra = "" if persistent else ", persistent=False"
        shape = self.literal(tuple(tensor.shape))
        return f"_register(self, {fqn!r}, {shape}, {tensor.dtype}, {kind!r}{extra})"


def _ties(module: torch.nn.Module) -> list[str]:
    """`_tie(self, "head.weight", "wte.weight", ...)`: every second path to a tensor."""
    persistent = set(module.state_dict(keep_vars=True))
    first: dict[int, str] = {}
    out = []
    for kind, named in (
        ("parameter", module.named_parameters(remove_duplicate=False)),
        ("buffer", module.named_buffers(remove_duplicate=False)),
    ):
        for fqn, tensor in named:
            tied = first.setdefault(id(tensor), fqn)
            if tied != fqn:
                extra = "" if kind == "parameter" or fqn in persistent else ", persistent=False"
                out.append(f"_tie(self, {fqn!r}, {tied!r}, {kind!r}{extra})")
    return out


def _inner_first(classes: list[GeneratedClass]) -> list[GeneratedClass]:
    """The classes, each after every class with an instance inside one of its instances (how
    a class builds its submodules depends on how theirs are built)."""
    done: list[GeneratedClass] = []
    left = list(classes)
    while left:
        for cls in left:
            inside = [
                other
                for other in left
                if other is not cls
                and any(q.startswith(f"{p}.") for p in cls.paths for q in other.paths)
            ]
            if not inside:
                done.append(cls)
                left.remove(cls)
                break
        else:  # instances inside each other both ways cannot happen in a tree
            done.extend(left)
            break
    return done


def _inline_notes(graph: Graph, program: Program, module: torch.nn.Module) -> list[str]:
    """The header's list of module calls written inline in their parent, and why; a call
    inside another listed for the same reason goes with it, and containers (whose modules
    are called one by one) are left out."""
    notes: list[str] = []
    listed: dict[str, str] = {}
    for inlined in program.inlined:
        path = inlined.call.partition("@")[0]
        if isinstance(module.get_submodule(path), _CONTAINERS):
            continue
        parent = next((p for p in listed if path.startswith(f"{p}.")), None)
        if parent is not None and listed[parent] == inlined.reason:
            continue
        listed[path] = inlined.reason
        notes.append(f"{inlined.call}: {inlined.reason}")
    for block in program.blocks:  # a layer whose op a loop writes out instead of calling it
        for step in block.lowered.steps:
            path = graph[step.node].module_path
            layer = info(graph[step.node].target).layer
            written = step.layer is None or step.node in block.stats
            if written and path in program.layers and layer:
                reason = f"chunk loop {block.index + 1} slices its weights or runs it in place"
                if step.node in block.stats:  # Contract 3's one exception
                    reason = (
                        f"chunk loop {block.index + 1} normalizes it chunk by chunk with the "
                        "statistics of its whole input, taken first (two passes)"
                    )
                notes.append(f"{path}: {reason}")
        for total in block.lowered.sums:  # NOTE [Sums over the chunks]
            path = graph[total.node].module_path
            if path in program.layers:
                notes.append(
                    f"{path}: chunk loop {block.index + 1} adds it up over its input features, "
                    "chunk by chunk, from slices of its weight"
                )
    return list(dict.fromkeys(notes))


def _classes(
    graph: Graph, plan: ChunkPlan, program: Program, module: torch.nn.Module, reserved: set[str]
) -> tuple[dict[str, GeneratedClass], list[GeneratedClass], dict[GeneratedClass, dict]]:
    """The generated classes (NOTE [One class per block]) of the module calls kept as calls,
    each with its forward printed, and the numbers each reads by their values."""
    instances, scopes = [], {}
    for scope in program.scopes.values():
        numbering = Numbering(record=True)
        params, items = ForwardPrinter(graph, plan, scope, numbering).build()
        original = type(module.get_submodule(scope.path))
        loops = bool(scope.blocks)
        instances.append(
            Instance(
                scope.path, original, tuple(params), items, numbering.values, numbering.notes, loops
            )
        )
        scopes.setdefault(scope.path, scope)
    try:
        of_path, classes = group_classes(instances, module, reserved)
    except ValueError as exc:
        raise InternalError(str(exc)) from None
    numbers_of = {}
    for cls in classes:
        modules = [module.get_submodule(path) for path in cls.paths]
        numbers: dict = {}
        filled = fill([i.values for i in cls.instances], cls.paths, modules, numbers)
        notes = fill_notes([i.notes for i in cls.instances], cls.paths, modules, numbers)
        numbering = Numbering(fill=filled, fill_notes=notes)
        printer = ForwardPrinter(graph, plan, scopes[cls.paths[0]], numbering)
        params, items = printer.build()
        common_comments(items, [i.items for i in cls.instances])
        cls.forward = _function(params, items)
        cls.numbers = list(numbers.values())
        numbers_of[id(cls)] = numbers
    return of_path, classes, numbers_of


def emit_module(
    graph: Graph,
    plan: ChunkPlan,
    module: torch.nn.Module,
    command: str,
    target: str,
    program: Program,
    budget: int | str | None = None,
) -> Emitted:
    """Return the formatted source of the generated module, printing its loop program.

    Loops over the dynamic dims that size their chunks at run time (NOTE [Run-time chunk
    sizes]) stay within `budget` bytes by default ("auto": the device's free memory on CUDA),
    else a share of the original's estimated peak at the input's size.
    """
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
    )
    regions = []
    for region, peak in zip(plan.regions, plan.region_peaks, strict=True):
        dim = symbol_name(region.extent, graph) or str(region.extent)
        regions.append(
            {
                "lines": describe_lines(region, graph),
                "dim": f"{dim} ({dim_words(region, graph)})",
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
    class_name = f"Chunked{graph.model_class}"
    reserved = {class_name, "_Chunking"}
    of_path, classes, numbers_of = _classes(graph, plan, program, module, reserved)
    builder = _Builder(module, program.layers, of_path)
    for cls in _inner_first(classes):
        builder.share(cls, numbers_of[id(cls)])
    tree = builder.lines("", module)
    ties = _ties(module)
    shared = any(scope.budget is not None for scope in program.scopes.values())
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
        ties=ties,
        registers=builder.registers,
        tree=tree,
        classes=classes,
        shared=shared,
        inlined=_inline_notes(graph, program, module),
        base=f"torch.nn.{_kind(module)}",
        forward=forward,
        output_class=program.output_class,
        runtime_sizes=any(
            isinstance(item, Statement) and isinstance(item.expr, Budget) for item in program.body
        ),
        causal_rows=any(
            isinstance(value, CausalRows)
            for block in program.blocks
            for step in block.lowered.steps
            for value in step.args
        ),
        group_norms=any(block.stats for block in program.blocks),
        hook_checks=any(
            hooked
            for block in program.blocks
            for hooked in [h for *_, h in block.lowered.reuses]
            + [total.unless_hooked for total in block.lowered.sums]
        ),
        sums=any(block.lowered.sums for block in program.blocks),
        wrapped=any(block.lowered.region.shifts for block in program.blocks),
        padding_checks=any(
            node.kind == "op" and NO_PADDING in dict(node.kwargs) for node in graph.nodes
        ),
        budget=repr(budget),
    )
    return Emitted(format_source(source), class_name)


def format_source(source: str) -> str:
    """Format with black; the result is stable under a second pass."""
    return black.format_str(source, mode=black.Mode())


__all__ = ["Emitted", "emit_module"]
