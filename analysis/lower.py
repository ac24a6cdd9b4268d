"""Lowering: a graph with its plan into the loop program, one forward per module call kept.

Every decision about how a loop statement runs is taken once, in lowering (NOTE [Loop program]):
each region's steps in `analysis.loops`, the names, set-up and frees of each forward here, and
which module calls stay calls in `analysis.scopes` (NOTE [Module scopes]).
"""

from __future__ import annotations

import inspect
import re
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Mapping

import sympy
import torch

from analysis.dimflow import out_meta, same_size
from analysis.errors import InternalError
from analysis.ir import Graph, Node, Ref, TensorMeta, replaced_refs, storage_roots
from analysis.layers import Layer
from analysis.liveness import check_output_classes, needed, output_classes, read_sizes, with_frees
from analysis.loops import inferred_width, layer_call, lower_region
from analysis.names import Namespace, size_names, source_names, value_name
from analysis.ops import dim_rule
from analysis.plan import ChunkPlan, Region
from analysis.program import (
    CHUNK,
    CHUNK_ROWS,
    AddChunk,
    AddStats,
    COPY,
    Attr,
    CausalRows,
    Block,
    Bound,
    Budget,
    Call,
    ChunkLength,
    ChunkStart,
    Contiguous,
    Empty,
    Floor,
    GroupStats,
    InputSize,
    LoopRegion,
    LoopStep,
    ModuleCall,
    NewStats,
    Operand,
    Overwrite,
    Program,
    Return,
    Rows,
    SizeValue,
    Span,
    Statement,
    StatisticsPass,
    Stop,
    SumStart,
    SumStep,
    TensorConstant,
    UpdateBuffer,
    WriteChunk,
)
from analysis.scopes import Scopes, bound_symbols, is_size, module_scopes, path_of
from analysis.search import NEW_FILLS, dtype_source

if TYPE_CHECKING:
    from analysis.symbolic import Formulas


# ------------------------------------------------------------------ the whole forward
def lower(
    graph: Graph,
    plan: ChunkPlan,
    formulas: Formulas | None = None,
    layers: Mapping[str, Layer] | None = None,
    module: torch.nn.Module | None = None,
) -> Program:
    """Return the forward as a loop program: names, statements, loops and frees; ops the
    model's standard `layers` run become calls of those layers. Given the model's `module`,
    the module calls it can keep (NOTE [Module scopes]) get forwards of their own, in
    `Program.scopes`; without it, everything is written in the root's forward."""
    layers = dict(layers or {})
    scopes = module_scopes(graph, plan, layers, module, formulas) if module is not None else None
    root = _Lowering(graph, plan, formulas, layers, scopes, "", module).program()
    if scopes is None:
        return root
    children = {
        call: _Lowering(graph, plan, formulas, layers, scopes, call, module).program()
        for call in scopes.scopes
        if call
    }
    return replace(root, scopes=children, inlined=scopes.inlined)


class _Lowering:
    """Walk the graph once, naming every value in the order the forward binds it."""

    def __init__(
        self,
        graph: Graph,
        plan: ChunkPlan,
        formulas: Formulas | None,
        layers: dict[str, Layer],
        scopes: Scopes | None = None,
        call: str = "",
        module: torch.nn.Module | None = None,
    ) -> None:
        self.graph = graph
        self.plan = plan
        self.layers = layers
        self.scopes = scopes
        self.call = call
        self.scope = scopes.scopes[call] if scopes is not None else None
        self.module = module
        #: names from the source's assignments (NOTE [Names from the source])
        self.assigned = source_names(graph, layers)
        self.formulas = formulas
        #: the formulas when at least one loop sizes its chunks at run time (NOTE [Run-time
        #: chunk sizes]); then the forward computes a budget
        self.runtime = formulas if formulas and any(formulas.regions) else None
        self.ns = Namespace()
        #: the forward's parameters: its caller holds them, so a rebinding never frees them;
        #: and the parameter names bound again
        self.params_held: set[str] = set()
        self.rebound: set[str] = set()
        #: values named after the input a module call's output replaced (a residual stream)
        self.streams: set[str] = set()
        self.names: dict[str, Any] = {}
        self.symbols: dict[sympy.Symbol, str] = {}
        self.budget: str | None = None
        self.device_of = ""
        #: name -> the value outside the loops that holds it; the values emitted so far
        self.holder: dict[str, str] = {}
        self.emitted: set[str] = set()
        #: the current loop's chunk names and contiguous copies, by graph value
        self.chunks: dict[str, str] = {}
        self.copies: dict[str, str] = {}
        #: the names of the halos' row bounds, shared by the forward's loops
        self.bound_names: dict[tuple[bool, int, int], str] = {}

    # -------------------------------------------------------------- reads
    def reads(self, *values: Any) -> frozenset[str]:
        """Return the names an argument structure reads: values, chunks, sizes."""
        out: set[str] = set()

        def visit(value: Any) -> None:
            if isinstance(value, Ref):
                out.update({self.name_of(value.name)} - {None})
            elif isinstance(value, Operand):
                out.update({self._operand_name(value)} - {None})
                out.update(("start", "stop") if value.rows is not None else ())
                out.update(("start", "stop") if value.keys is not None else ())
            elif isinstance(value, sympy.Expr):
                try:
                    out.update(size_names(value, self.symbols))
                except TypeError:  # written with the model's dims, in a comment
                    pass
            elif isinstance(value, CausalRows):
                out.add("start")
            elif isinstance(value, (ChunkLength, ChunkStart)):
                out.update(("start", "stop") if isinstance(value, ChunkLength) else ("start",))
            elif isinstance(value, torch.device) and self.device_of:
                out.add(self.device_of)
            elif isinstance(value, (list, tuple)):
                for item in value:
                    visit(item)

        for value in values:
            visit(value)
        return frozenset(out)

    def _operand_name(self, operand: Operand) -> str | None:
        if operand.source == CHUNK:
            return self.chunks[operand.value]
        if operand.source == COPY:
            return self.copies[operand.value]
        return self.name_of(operand.value)

    def name_of(self, value: str) -> str | None:
        """Return a value's name in the forward (None for parameters and buffers)."""
        found = self.names[value]
        return found if isinstance(found, str) else None

    def base(self, node: Node) -> str:
        """The base of a value's name: the source's name for it, else its module and op, from
        this module (`q`, not `blocks_0_attn_q`)."""
        return _within(self.assigned.get(node.name) or value_name(node, self.graph), self.call)

    def output_base(self, node: Node, child: str) -> str:
        """The base of a value a child module returns: the name the child gives it, else the
        child's path (`attn = self.attn(ln_1)`)."""
        own = self.assigned.get(node.name)
        if own and _within(own, child) != Namespace.clean(own):
            return _within(own, child)
        return path_of(child)[len(self.scope.path) + 1 :] if self.call else path_of(child)

    def _replaced(self, scope: Any, output: str) -> str | None:
        """The one input a module's lone output replaces: same shape and dtype, and read no more
        after the call (`x = self.blocks[0](x)`, a residual stream), or None."""
        if len(scope.outputs) != 1 or not isinstance(self.graph[output].meta, TensorMeta):
            return None
        alike = [
            name
            for name in scope.inputs
            if self.graph[name].meta == self.graph[output].meta
            and isinstance(self.names.get(name), str)
        ]
        if len(alike) != 1:
            return None
        named = alike[0] in self.params_held or alike[0] in self.streams
        if not (named or self.assigned.get(alike[0])):
            return None  # named after its module (`ln_1`): not a name to pass on
        inside = self.scopes.nodes_under(scope.call)
        users = set(self.graph.users(alike[0]))
        if alike[0] in self.graph.output_names() or not users <= self.emitted | inside:
            return None  # read after the call: the output is another value
        self.streams.add(output)
        return alike[0]

    def param_base(self, name: str) -> str:
        """The base of a parameter of this module's forward: the original forward's own
        parameter, where the first line of this forward reading the value names exactly one
        of them (`h = self.conv_1(F.silu(self.norm_1(x)))` reads `x`), else the value's name
        where it was made. A line that reads sizes passed as numbers too (NOTE [Sizes passed
        as numbers]) gives its tensors the parameters it names in order, and its sizes the
        rest: `F.interpolate(x, size=size)` names `x` and `size`, sizes `size` and `size_1`."""
        graph = self.graph
        params = self._signature()
        for reader in self.scope.nodes:
            if name not in graph[reader].refs():
                continue
            source = graph[reader].source
            if source is None:
                continue
            named = set(re.findall(r"[A-Za-z_]\w*", source.code))
            found = [p for p in params if p in named]
            if len(found) == 1:
                return found[0]
            line = {
                ref
                for n in self.scope.nodes
                if graph[n].source is not None
                and (graph[n].source.file, graph[n].source.line) == (source.file, source.line)
                for ref in graph[n].refs()
            }
            read = [i for i in self.scope.inputs if i in line]
            sizes = [i for i in read if is_size(graph, i)]
            tensors = [i for i in read if i not in sizes]
            rest = found[len(tensors) :]
            if sizes and rest and name in tensors:
                return found[tensors.index(name)]
            if sizes and rest and len(rest) in (1, len(sizes)):
                return rest[min(sizes.index(name), len(rest) - 1)]
        return self.maker_base(name)

    def maker_base(self, name: str) -> str:
        """The base of a value made elsewhere: its name where it was made."""
        node = self.graph[name]
        if node.kind in ("param", "buffer", "input"):
            return str(node.target if node.kind != "input" else node.name).replace(".", "_")
        maker = self.scopes.scope_of.get(name, "") if self.scopes is not None else ""
        return _within(self.assigned.get(name) or value_name(node, self.graph), maker)

    def _signature(self) -> list[str]:
        """The names of the original forward's parameters."""
        if self.module is None:
            return []
        try:
            found = inspect.signature(self.module.get_submodule(self.scope.path).forward)
        except (TypeError, ValueError):
            return []
        kinds = (
            inspect.Parameter.POSITIONAL_ONLY,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
            inspect.Parameter.KEYWORD_ONLY,
        )
        return [p.name for p in found.parameters.values() if p.kind in kinds]

    def bind(self, node: Node) -> str:
        name = self.ns.create(self.base(node))
        self.names[node.name] = name
        return name

    def rebind(self, node: Node) -> str:
        """Bind a value computed outside the loops, reusing its base's name when the value
        that holds the name dies here (NOTE [Names from the source]): `q = q.view(...)`
        rebinds `q`. The old value is then freed by the rebinding, exactly where the memory
        estimate frees it: this statement reads it, or reads a value sharing its storage."""
        name = self.ns.clean(self.base(node))
        held = self.holder.get(name)
        if held is None or not self._dies_at(held, node):
            name = self.ns.create(self.base(node))
        elif held in self.params_held:
            self.rebound.add(name)
        self.names[node.name] = name
        self.holder[name] = node.name
        return name

    def _dies_at(self, held: str, node: Node) -> bool:
        return self._dies_reading(held, set(node.refs()), {node.name})

    def _dies_reading(self, held: str, reads: set[str], running: set[str]) -> bool:
        """Whether `held` is dead once statements running `running` (reading `reads`) ran; a
        parameter of this forward counts once this forward reads it no more (its caller holds
        it: the name is free, the memory not)."""
        graph = self.graph
        users = {u for u in graph.users(held) if not is_size(graph, u)}  # shapes: bound already
        if held in self.params_held:
            inside = self.scopes.nodes_under(self.call) if self.scopes is not None else users
            return users & inside <= self.emitted | running
        if held in graph.output_names():
            return False
        if self.call and held in self.scope.outputs:
            return False  # this forward returns it: its name must still hold it there
        if not users <= self.emitted | running:
            return False
        roots, _ = storage_roots(graph)
        root = roots.get(held, held)
        return any(roots.get(ref, ref) == root for ref in reads)

    # -------------------------------------------------------------- layout
    def program(self) -> Program:
        graph = self.graph
        body: list[Any] = []
        params = []
        for node in graph.nodes:
            if node.kind in ("param", "buffer"):
                self.names[node.name] = Attr(node.target)
        inputs = graph.inputs if self.scope is None or not self.call else self.scope.inputs
        for name in inputs:
            base = name if not self.call else self.param_base(name)
            self.names[name] = self.ns.create(base)
            self.holder[self.names[name]] = name
            params.append(self.names[name])
        self.params_held = set(inputs)
        tensors = [n for n in inputs if isinstance(graph[n].meta, TensorMeta)]
        self.device_of = self.names[tensors[0]] if tensors else ""
        if not self.call:
            for symbol in graph.symbols:
                var = self.ns.create(symbol.name)
                self.symbols[symbol.symbol] = var
                size = InputSize(self.names[symbol.input], symbol.axis, symbol.offset, symbol.scale)
                body.append(Statement(var, size, frozenset()))
        else:
            named = {s.symbol: s.name for s in graph.symbols}
            bound = bound_symbols(graph, self.scope.inputs)
            for symbol, (name, axis, offset, scale) in bound.items():
                if axis is None and (offset, scale) == (0, 1):  # passed as this very number
                    self.symbols[symbol] = self.names[name]
                    continue
                if symbol in named:
                    var = self.ns.create(named[symbol])
                else:  # a size of this input: `x_height`, the height x has here
                    dims = [named.get(s, "size") for s in symbol.free_symbols]
                    var = self.ns.create(
                        f"{self.names[name]}_{dims[0] if len(dims) == 1 else 'size'}"
                    )
                self.symbols[symbol] = var
                size = InputSize(self.names[name], axis, offset, scale)
                body.append(Statement(var, size, frozenset({self.names[name]})))
        for node in graph.nodes:  # a size that is a dynamic dim reads the dim's name
            if isinstance(node.meta, sympy.Symbol) and node.meta in self.symbols:
                self.names.setdefault(node.name, self.symbols[node.meta])
        if self.scopes is not None:  # sizes made elsewhere, written again here
            own = set(self.scope.nodes)
            readers = [n for n in self.scope.nodes if not is_size(graph, n)]
            wanted = [r for n in readers for r in graph[n].refs()]
            for child in self.scope.children:  # NOTE [Sizes passed as numbers]
                wanted += [n for n in self.scopes.scopes[child].inputs if is_size(graph, n)]
            for name in dict.fromkeys(wanted):
                if name in own or name in self.names or not is_size(graph, name):
                    continue
                if graph[name].meta in self.symbols:  # a size bound already: its name
                    self.names[name] = self.symbols[graph[name].meta]
                    continue
                var = self.ns.create(self.maker_base(name))
                self.names[name] = var
                size = SizeValue(graph[name].meta)
                body.append(Statement(var, size, self.reads(graph[name].meta)))
        mine = self.scope.regions if self.scope is not None else range(len(self.plan.regions))
        if self.runtime is not None and not self.call:
            body.extend(self._budget(bool(mine)))
        elif self.runtime is not None and mine:
            self.budget = "self._chunking.budget"
        starts = {self.plan.regions[i].span[0]: (i, self.plan.regions[i]) for i in mine}
        covered = {name for region in self.plan.regions for name in region.span}
        live = needed(graph)
        outputs = graph.output_names()
        called: set[str] = set()
        waiting: list[str] = []  # children met before all their inputs were made
        for node in graph.nodes:
            for child in [c for c in waiting if self._can_call(c)]:
                waiting.remove(child)
                body.append(self._module_call(child))
            if self.scopes is not None and node.kind in ("op", "constant"):
                if self.scopes.scope_of.get(node.name) != self.call:
                    child = self.scopes.child_holding(self.call, node.name)
                    if child is not None and child not in called:
                        called.add(child)
                        if self._can_call(child):
                            body.append(self._module_call(child))
                        else:
                            waiting.append(child)
                    continue
            if node.name in starts:
                index, region = starts[node.name]
                body.extend(self._region(index, region, live))
                self.emitted.update(region.span)
            elif node.kind == "op" and node.name not in covered and node.name in live:
                statement = self._call(node)
                if statement is not None:
                    body.append(statement)
            elif node.kind == "constant" and (graph.users(node.name) or node.name in outputs):
                body.append(self._constant(node))
        body.extend(self._module_call(child) for child in waiting)
        if self.call:
            returned = tuple(Ref(name) for name in self.scope.outputs)
            body.append(Statement(None, Return(None, returned), self.reads(returned)))
            results = set(self.scope.outputs)
        else:
            body.extend(self._return())
            results = outputs
        sizes = {  # ints: never worth a `del`
            item.var
            for item in body
            if isinstance(item, Statement) and isinstance(item.expr, (SizeValue, Floor, Budget))
        }
        keep = set(params) - self.rebound | set(self.symbols.values()) | sizes
        keep |= {self.names[n] for n in results if isinstance(self.names.get(n), str)}
        return Program(
            params=tuple(params),
            body=tuple(with_frees(read_sizes(body), keep)),
            names=dict(self.names),
            symbols=dict(self.symbols),
            device_of=self.device_of,
            budget=self.budget,
            output_class=bool(output_classes(graph.out_spec)),
            formulas=self.formulas,
            layers=self.layers,
            call=self.call,
            path=path_of(self.call),
        )

    def _can_call(self, child: str) -> bool:
        """Whether every input of a child module's call is made. A child's first node may
        come before its inputs: a constant it holds (a lifted tensor), or an op that reads
        no input; its call then waits for them."""
        assert self.scopes is not None
        return all(name in self.names for name in self.scopes.scopes[child].inputs)

    def _module_call(self, child: str) -> Statement:
        """`x = self.blocks[0](x)`: a child module's forward, binding what it returns."""
        scopes = self.scopes
        assert scopes is not None
        scope = scopes.scopes[child]
        inside = scopes.nodes_under(child)
        reads = self.reads([Ref(name) for name in scope.inputs])
        self.emitted.update(inside)
        targets = []
        for name in scope.outputs:
            base = self.output_base(self.graph[name], child)
            replaced = self._replaced(scope, name)
            if replaced is not None and not self.assigned.get(name):
                base = self.names[replaced]
            var = self.ns.clean(base)
            held = self.holder.get(var)
            if held is None or not self._dies_reading(held, set(scope.inputs), inside):
                var = self.ns.create(base)
            elif held in self.params_held:
                self.rebound.add(var)
            self.names[name] = var
            self.holder[var] = name
            targets.append(var)
        relative = scope.path[len(self.scope.path) + 1 :] if self.call else scope.path
        siblings = None
        parent, _, index = scope.path.rpartition(".")
        if self.module is not None and index.isdigit():
            container = self.module.get_submodule(parent)
            if isinstance(container, (torch.nn.ModuleList, torch.nn.Sequential)):
                siblings = len(container)
        call = ModuleCall(
            child, relative, tuple(scope.inputs), tuple(scope.outputs), tuple(targets), siblings
        )
        return Statement(None, call, reads)

    def _budget(self, own_loops: bool) -> list[Statement]:
        """The budget statement; bound to a name when this forward has loops of its own."""
        plan, formulas = self.plan, self.runtime
        assert formulas is not None
        share = plan.budget_bytes / max(plan.original_peak_bytes, 1)
        self.budget = self.ns.create("budget") if own_loops else None
        from analysis.symbolic import floor_terms  # symbolic estimates through lowering

        floors = floor_terms(plan, formulas)
        statements = []
        floor = None
        if len(floors) > 1 or (floors and not plan.met):
            floor = self.ns.create("floor")
            statements.append(Statement(floor, Floor(floors, not plan.met), self.reads(floors)))
        shared = self.scopes is not None and any(
            scope.regions for call, scope in self.scopes.scopes.items() if call
        )
        budget = Budget(share, formulas.original_peak, plan.budget_bytes, floor, shared)
        reads = self.reads(formulas.original_peak) | ({floor} if floor else set())
        statements.append(Statement(self.budget, budget, frozenset(reads)))
        return statements

    def _call(self, node: Node, region: int | None = None) -> Statement | None:
        symbol = isinstance(node.meta, sympy.Symbol) and node.meta in self.symbols
        if node.target is torch.ops.aten.sym_size.int and symbol:
            self.names[node.name] = self.symbols[node.meta]  # the dim is already bound
            return None
        if self.scopes is not None and is_size(self.graph, node.name):
            if node.name in self.params_held:  # passed in (NOTE [Sizes passed as numbers])
                return None
            if node.meta in self.symbols:  # a size bound already: its name
                self.names[node.name] = self.symbols[node.meta]
                return None
            var = self.rebind(node)  # written from the sizes bound, not its arguments
            self.emitted.add(node.name)
            return Statement(var, SizeValue(node.meta), self.reads(node.meta), node.source)
        reads = self.reads(node.args, [v for _, v in node.kwargs])
        var = self.rebind(node)
        self.emitted.add(node.name)
        everything = set(node.refs())
        layer = layer_call(self.graph, node, self.layers, everything)
        args = inferred_width(node, self.graph, node.args)
        call = Call(node.name, node.target, args, node.kwargs, node.meta, layer)
        return Statement(var, call, reads, node.source, region=region)

    def _constant(self, node: Node) -> Statement:
        """A tensor constant, written out (NOTE in `capture._constant_values`)."""
        var = self.ns.create(str(node.target).rsplit(".", 1)[-1])
        self.names[node.name] = var
        reads = frozenset({self.device_of} if self.device_of else ())
        return Statement(var, TensorConstant(node.args[0], node.tensor), reads)

    def _return(self) -> list[Statement]:
        graph = self.graph
        out = []
        for fqn, ref in graph.mutations:
            out.append(Statement(None, UpdateBuffer(fqn, ref.name), self.reads(ref)))
        check_output_classes(graph.out_spec, graph.model_file)
        out.append(
            Statement(None, Return(graph.out_spec, graph.outputs), self.reads(graph.outputs))
        )
        return out

    # -------------------------------------------------------------- regions
    def _region(self, index: int, region: Region, live: set[str]) -> list[Any]:
        """Return a region's set-up statements and its loop."""
        graph = self.graph
        lowered = lower_region(graph, region, self.layers)
        setup: list[Statement] = []
        for name in region.hoisted:
            if name in live:
                node = graph[name]
                chunked = [ref for ref in node.refs() if ref in region.loop_dims]
                # a fill called on a chunk for its dtype is called on a value before the loop
                if chunked and not is_size(graph, name):
                    source = dtype_source(graph, name, dict(region.slices))
                    if node.target not in NEW_FILLS or source is None:
                        raise InternalError(f"hoisted {name} reads {chunked[0]}, made in the loop")
                    moved = {chunked[0]: Ref(source)}
                    node = replace(node, args=replaced_refs(node.args, moved))
                statement = self._call(node, index)
                if statement is not None:
                    setup.append(statement)
        sliced = dict(region.slices)
        copies: dict[str, str] = {}
        for name in region.materialized:
            var = self.ns.create(f"{self.name_of(name) or 'self.' + graph[name].target}_contiguous")
            copies[name] = var
            reads = frozenset({self.name_of(name)} - {None})
            setup.append(Statement(var, Contiguous(name, name in sliced), reads, region=index))
        formula = self.runtime.regions[index] if self.runtime is not None else None
        rows: Any = region.chunk_size
        head = self.reads(region.extent)
        if formula is not None:
            rows = self.ns.create("chunk")
            sizes = Rows(
                formula.fixed,
                formula.per_row,
                region.chunk_size,
                region.extent,
                capped=not region.halos,
            )
            reads = self.reads(formula.fixed, formula.per_row, region.extent)
            path = self.runtime.fast[index] if self.runtime.fast else None
            if path is not None:
                fast, check = path
                faster = Rows(fast.fixed, fast.per_row, region.fast_chunk_size, region.extent)
                sizes = replace(sizes, fast=faster, check=check)
                reads |= self.reads(fast.fixed, fast.per_row) | {self.name_of(check)}
            # a CPU's cap reads the device; a loop with halos has none (NOTE [Halos])
            device = {self.device_of} if self.device_of and sizes.capped else set()
            reads |= {self.budget, rows} | device
            setup.append(Statement(rows, sizes, frozenset(reads), region=index))
            head |= {rows}
        stats: dict[str, str] = {}
        for step in lowered.steps:  # NOTE [Statistics before the loop]
            node = graph[step.node]
            rule = dim_rule(node, graph)
            if rule is None or not rule.whole_of(step.dim):
                continue
            stats[step.node] = var = self.ns.create(f"{self.base(node)}_stats")
            if step.node in region.recomputed:
                continue  # a statistics pass takes them (NOTE [Statistics passes])
            read = step.operand(0)
            assert read is not None and read.source != CHUNK and read.rows is not None
            expr = GroupStats(
                read.value, *_groups_and_eps(node), read.rows, rows, read.span.total_scale
            )
            reads = self.reads(Ref(read.value)) | ({rows} if isinstance(rows, str) else set())
            setup.append(Statement(var, expr, reads, node.source, region=index))
        self.copies = copies
        buffers = {name: self.bind(graph[name]) for name, _ in region.outputs}
        names = {}
        outputs = dict(region.outputs)
        for step in lowered.steps:
            base = self.base(graph[step.node])
            names[step.node] = self.ns.create(f"{base}_chunk" if step.node in outputs else base)
        for done in lowered.passes:
            node = graph[done.norm]
            var = stats[done.norm]
            new = NewStats(*_groups_and_eps(node))
            setup.append(Statement(var, new, frozenset(), node.source, region=index))
            setup.append(self._pass(index, lowered, done, rows, head, names, stats))
        device_of = region.slices[0][0] if region.slices else None
        reuses = {name: (value, hooked) for name, value, hooked in lowered.reuses}
        for name, _ in region.outputs:
            node = graph[name]
            var = buffers[name]
            dtype_of = self._dtype_of(region, node.tensor.dtype)
            reads = set(self.reads(list(node.tensor.shape))) | {var}
            for value in (dtype_of, device_of):  # a value copied: its copy, so it can go
                if value is not None:
                    reads |= {copies[value]} if value in copies else {self.name_of(value)} - {None}
            if device_of is None and self.device_of:
                reads.add(self.device_of)
            expr: Empty | Overwrite = Empty(node.tensor, dtype_of, device_of)
            if name in reuses:  # NOTE [Outputs in place]
                value, hooked = reuses[name]
                viewed = graph[value].tensor.shape != node.tensor.shape
                expr = Overwrite(value, hooked, tuple(node.tensor.shape) if viewed else None)
                reads = self.reads([Ref(value), *(expr.shape or ())]) | {var}
            setup.append(Statement(var, expr, frozenset(reads), region=index))
        for total in lowered.sums:  # NOTE [Sums over the chunks]
            setup.append(self._sum_start(index, region, total))
            buffers[total.node] = self.names[total.value]
        self.chunks = {}
        body, bounds = self._body(lowered, lowered.steps, rows, head, names, stats, buffers)
        block = Block(
            index=index,
            lowered=lowered,
            extent=region.extent,
            rows=rows,
            body=tuple(body),
            reads=head,
            chunks=dict(self.chunks),
            copies=copies,
            bounds=bounds,
            stats=stats,
        )
        self.chunks, self.copies = {}, {}
        return [*setup, block]

    def _sum_start(self, index: int, region: Region, total: SumStep) -> Statement:
        """A sum's start before its loop, bound to the name of the value it is after it
        (NOTE [Sums over the chunks])."""
        node = self.graph[total.value]
        like = total.added or self._dtype_of(region, node.tensor.dtype)
        reads = set(self.reads(Ref(total.added))) if total.added else set()
        if total.added is None:
            reads |= set(self.reads(list(node.tensor.shape)))
            reads |= {self.name_of(like)} - {None} if like else {self.device_of} - {""}
        var = self.bind(node)
        start = SumStart(total, node.tensor, like)
        return Statement(var, start, frozenset(reads), node.source, region=index)

    def _pass(
        self,
        index: int,
        lowered: LoopRegion,
        done: StatisticsPass,
        rows: Any,
        head: frozenset[str],
        names: dict[str, str],
        stats: dict[str, str],
    ) -> Block:
        """A statistics pass: the loop's steps that make a group norm's input, and the
        chunk's own rows of it added to the statistics (NOTE [Statistics passes])."""
        self.chunks = {}
        made = done.steps[-1].span
        body, bounds = self._body(lowered, done.steps, rows, head, names, stats, {}, done.rows)
        var = stats[done.norm]
        add = AddStats(var, done.value, done.steps[-1].dim, made, done.rows)
        body.append(Statement(None, add, frozenset({var, self.chunks[done.value]})))
        block = Block(
            index=index,
            lowered=lowered,
            extent=lowered.region.extent,
            rows=rows,
            body=tuple(body),
            reads=head,
            chunks=dict(self.chunks),
            copies=self.copies,
            bounds=bounds,
            stats=stats,
            statistics=done.norm,
        )
        self.chunks = {}
        return block

    def _body(
        self,
        lowered: LoopRegion,
        steps: tuple[LoopStep, ...],
        rows: Any,
        head: frozenset[str],
        names: dict[str, str],
        stats: dict[str, str],
        buffers: dict[str, str],
        extra: Span | None = None,
    ) -> tuple[list[Statement], dict[tuple[bool, int, int], str]]:
        """A loop's body: its stop, the ends of its spans, its steps, and each output's write
        into its buffer; with the names bound to the spans' ends."""
        region = lowered.region
        body = [Statement("stop", Stop(rows, region.extent))]
        # a statistics pass (no buffers) adds nothing to the sums (NOTE [Sums over the chunks])
        summing = lowered.sums_after if buffers else lambda node: ()
        outputs = {n: d for n, d in region.outputs if n in buffers}
        named = self._bounds(steps, outputs, region.extent, extra, summing)
        for (before, count, scale), (var, size) in named.items():
            bound = Bound(before, count, region.extent, scale, size)
            body.append(Statement(var, bound, head | self.reads(size)))
        outputs = dict(region.outputs)
        for step in steps:
            var = names[step.node]
            reads = self.reads(step.args, [v for _, v in step.kwargs])
            reads |= {stats[step.node]} if step.node in stats else set()
            self.chunks[step.node] = var
            body.append(Statement(var, step, reads, self.graph[step.node].source))
            if step.node in buffers:
                write = WriteChunk(buffers[step.node], outputs[step.node], var, step.span)
                body.append(Statement(None, write, frozenset({var, buffers[step.node]})))
            for total in summing(step.node):
                reads = {var, buffers[total.node]} | self.reads(total.weight)
                node = self.graph[total.node]
                body.append(Statement(None, AddChunk(total), frozenset(reads), node.source))
        return body, {end: var for end, (var, _) in named.items()}

    def _bounds(
        self,
        steps: tuple[LoopStep, ...],
        outputs: dict[str, int],
        extent: Any,
        extra: Span | None = None,
        sums_after: Any = lambda node: (),
    ) -> dict[tuple[bool, int, int], tuple[str, Any]]:
        """Name each end of the rows the loop's spans reach: `lo_2` for two rows before the
        chunk, `hi_2` for two after, `lo_1_x2` for one before at twice the loop's rows (NOTE
        [Halos]); `extra`, the rows a statistics pass adds, too."""
        spans = {extra} if extra is not None else set()
        firsts = set()  # a crop of an op's result reads only where its rows start
        for step in steps:
            spans.add(step.span)
            if step.computed != step.span:  # its length, `hi_2_x2 - lo_2_x2`, an argument
                lengths = _reads_length([step.args, [v for _, v in step.kwargs]])
                (spans if lengths else firsts).add(step.computed)
            if step.node in outputs and step.span.own != CHUNK_ROWS:  # its buffer's rows
                spans.add(step.span.own)
            for total in sums_after(step.node):  # a weight's slice (NOTE [Sums over the chunks])
                spans.add(total.weight.span)
            for read in step.operands:
                spans |= {read.span} | ({read.crop[1]} if read.crop else set())
        ends: dict[tuple[bool, int, int], Any] = {}
        for span in spans | firsts:
            if exactly_scaled(span, extent, self.graph):
                continue  # `8 * start : 8 * stop`, written where it is read
            size = span.size if span.scale > 1 else None  # a unit's rows are the loop's
            if span.before or span.scale > 1:
                ends[(True, span.before, span.scale)] = size
            if span in spans and (span.after or span.scale > 1):
                ends[(False, span.after, span.scale)] = size
        named = {}
        for end in sorted(ends, key=lambda e: (e[2], not e[0], e[1])):
            if end not in self.bound_names:
                word = "lo" if end[0] else "hi"
                suffix = f"_x{end[2]}" if end[2] > 1 else ""
                self.bound_names[end] = self.ns.create(f"{word}_{end[1]}{suffix}")
            named[end] = (self.bound_names[end], ends[end])
        return named

    def _dtype_of(self, region: Region, dtype: torch.dtype) -> str | None:
        """A value sliced into the loop with the buffer's dtype: the buffer follows its dtype
        at run time (a model cast to half precision gets half buffers)."""
        for name, _ in region.slices:
            meta = out_meta(self.graph[name])
            if meta is not None and meta.dtype == dtype:
                return name
        return None


def exactly_scaled(span: Span, extent: Any, graph: Graph) -> bool:
    """Whether a span is the chunk's own rows at a whole scale of a value exactly that many
    times the loop's length (a head's features): `scale * start : scale * stop`, with no ends
    to name or clip."""
    if span.unit != 1 or span.scale == 1 or span.before or span.after:
        return False
    return same_size(span.size, span.scale * extent, graph)


def _reads_length(value: Any) -> bool:
    """Whether a step's arguments pass the length of the rows it computes."""
    if isinstance(value, (list, tuple)):
        return any(_reads_length(v) for v in value)
    return isinstance(value, ChunkLength)


def _groups_and_eps(node: Node) -> tuple[int, float]:
    """A group norm's `group_norm(x, groups, weight, bias, eps)` groups and epsilon."""
    return node.args[1], node.args[4] if len(node.args) > 4 else 1e-5


def _within(base: str, call: str) -> str:
    """A name made after its module's path (`blocks_0_attn_q`), as the module's own forward
    names it (`q`)."""
    base = Namespace.clean(base)
    prefix = Namespace.clean(path_of(call)) + "_" if call else ""
    if prefix and base.startswith(prefix) and len(base) > len(prefix):
        return base[len(prefix) :]
    return base


__all__ = ["exactly_scaled", "layer_call", "lower", "lower_region"]
