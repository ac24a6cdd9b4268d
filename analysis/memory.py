"""Estimate activation memory by liveness over a straight-line program of statements.

NOTE [Memory model]
A program is a list of statements, each defining at most one value. A value either allocates a
new storage (its bytes) or shares the storage of the value it views or writes in place. A
storage is freed right after the last statement that uses any value sharing it, unless one of
those values is an output. Model inputs, parameters, buffers and constants own zero bytes: they
exist before the call. The live bytes right after a statement runs are that statement's
footprint; the peak is the largest footprint. This is what the live-storage tracker in
`codegen.measure` sees, op by op. A few ops allocate scratch while they run (SDPA turns a bool
mask into a float copy of it); a statement's scratch counts in its own footprint only. Which
storage a value shares is read off the fake tensors at capture, except where fake tensors and
eager differ: a dropout outside training returns its input itself in eager, where its fake
tensor has a storage of its own (`analysis.capture._returned_input`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import torch

from analysis.dimflow import out_meta, schema_arg
from analysis.ir import (
    Graph,
    Node,
    Ref,
    TensorMeta,
    evaluate,
    storage_roots,
    tensor_inputs,
    value_bytes,
)
from analysis.lower import lower_region
from analysis.ops import dim_rule
from analysis.plan import Region
from analysis.scopes import is_size, tensor_refs
from analysis.program import CHUNK, COPY, CausalRows, LoopRegion, LoopStep


@dataclass(frozen=True, slots=True)
class Stmt:
    """One statement's effect on storage."""

    #: the value it defines, or None for a statement that only reads (a buffer write)
    key: str | None
    #: bytes of new storage it allocates (0 for views and in-place ops)
    alloc: int = 0
    #: the value whose storage it shares, for views and in-place ops
    shares: str | None = None
    #: values it reads
    uses: tuple[str, ...] = ()
    #: a label for reports: graph node name, or region id for statements in a chunk loop
    label: str = ""
    #: bytes the op allocates and frees while it runs, on top of what is live
    scratch: int = 0


@dataclass(frozen=True, slots=True)
class Profile:
    """The estimated footprint after every statement."""

    #: live bytes right after each statement runs
    footprint: tuple[int, ...]
    #: labels of the statements, parallel to footprint
    labels: tuple[str, ...]
    #: live bytes after each statement, once the values it last used are freed
    live_after: tuple[int, ...] = ()

    @property
    def peak(self) -> int:
        return max(self.footprint, default=0)

    @property
    def peak_index(self) -> int:
        return max(range(len(self.footprint)), key=self.footprint.__getitem__, default=0)


def simulate(stmts: list[Stmt], outputs: set[str]) -> Profile:
    """Return the footprint of a program by liveness over storages (see NOTE [Memory model])."""
    root: dict[str, str] = {}
    size: dict[str, int] = {}
    last: dict[str, int] = {}
    for index, stmt in enumerate(stmts):
        for use in stmt.uses:
            if use in root:
                last[root[use]] = index
        if stmt.key is not None:
            owner = root.get(stmt.shares, stmt.key) if stmt.shares else stmt.key
            root[stmt.key] = owner
            if owner == stmt.key:
                size[owner] = stmt.alloc
            last[owner] = max(last.get(owner, index), index)
    pinned = {root[name] for name in outputs if name in root}
    frees: dict[int, list[str]] = {}
    for owner, index in last.items():
        if owner not in pinned:
            frees.setdefault(index, []).append(owner)
    live = 0
    footprint: list[int] = []
    after: list[int] = []
    for index, stmt in enumerate(stmts):
        if stmt.key is not None and root[stmt.key] == stmt.key:
            live += size[stmt.key]
        footprint.append(live + stmt.scratch)
        live -= sum(size[owner] for owner in frees.get(index, ()))
        after.append(live)
    return Profile(tuple(footprint), tuple(s.label for s in stmts), tuple(after))


def node_stmt(node: Node, graph: Graph) -> Stmt:
    """Return the statement that runs one graph node unchunked."""
    key = ("stmt", node.name)
    if key not in graph.memo:
        graph.memo[key] = _node_stmt(node, graph)
    return graph.memo[key]


def _node_stmt(node: Node, graph: Graph) -> Stmt:
    hints = graph.hints
    owned = node.kind == "op" and node.aliases is None and node.mutates is None
    mask = _bool_mask(node, graph)
    return Stmt(
        key=node.name,
        alloc=value_bytes(node.meta, hints) if owned else 0,
        shares=node.mutates or node.aliases,
        # a size holds no tensor: eager reads it where the model asks, the generated module
        # writes it from the sizes it binds (NOTE [Sizes passed as numbers])
        uses=() if is_size(graph, node.name) else tuple(dict.fromkeys(node.refs())),
        label=node.name,
        scratch=(_mask_scratch(node, graph, mask) if mask else 0)
        + _math_scratch(node, graph)
        + _copies_scratch(node, graph),
    )


def _copies_scratch(
    node: Node, graph: Graph, step: LoopStep | None = None, share: float = 1.0
) -> int:
    """The copies a composite op makes of its operands before its kernel and frees after
    (`Node.copies`): each operand's copy is of the chunk's share when the loop reads the operand
    by chunks (`step`), none when the loop copied it contiguous before it, else of the whole."""
    total = 0
    names = tensor_inputs(node, graph) if node.copies else ()
    for slot, ratio in node.copies:
        read = step.operand(slot) if step is not None else None
        if read is not None and read.source == COPY:
            continue  # copied contiguous before the loop
        chunked = read is not None and (read.source == CHUNK or read.rows is not None)
        nbytes = value_bytes(graph[names[slot]].meta, graph.hints)
        total += math.ceil(nbytes * ratio * (share if chunked else 1.0))
    return total


def _bool_mask(node: Node, graph: Graph) -> str | None:
    """Return the bool attention mask an SDPA call reads, if any."""
    if node.target is not torch.ops.aten.scaled_dot_product_attention.default:
        return None
    mask = schema_arg(node, "attn_mask")
    if isinstance(mask, Ref) and graph[mask.name].tensor.dtype == torch.bool:
        return mask.name
    return None


def _mask_scratch(node: Node, graph: Graph, mask: str, fraction: float = 1.0) -> int:
    """SDPA's float copy of a bool mask: the mask's elements at the query's dtype."""
    query = graph[node.args[0].name].tensor
    elements = graph[mask].tensor.numel(graph.hints)
    return math.ceil(elements * query.dtype.itemsize * fraction)


def _math_scratch(node: Node, graph: Graph, fraction: float = 1.0) -> int:
    """SDPA on CPU takes the unfused math path with fewer key heads than query heads,
    broadcast rather than `enable_gqa` (Falcon's multi-query attention), or with a mask that
    requires grad, even under no_grad (a parameter, or a view of one: measured, 32 MiB of
    scratch for 4 heads of 1024 queries, none with a buffer). It holds the scaled scores and
    their softmax, both queries x keys per head, and with `is_causal` a float mask of queries
    x keys. The fused kernel makes a float32 log-sum-exp per query and head beside its output,
    and drops it (UNet2DConditionModel's 8 heads of 4096 pixels: 128 KiB). `fraction`: the
    share of the queries a chunk runs."""
    if node.target is not torch.ops.aten.scaled_dot_product_attention.default:
        return 0
    query, key = (graph[a.name].tensor for a in node.args[:2])
    unfused = _trainable_mask(node, graph)
    if not unfused and (
        query.rank < 3 or key.rank != query.rank or schema_arg(node, "enable_gqa", False)
    ):
        return 0
    heads = [evaluate(size, graph.hints) for size in query.shape[:-2]]
    rows = evaluate(query.shape[-2], graph.hints) * fraction
    if not unfused and heads == [evaluate(size, graph.hints) for size in key.shape[:-2]]:
        # the fused kernel: its float32 log-sum-exp per query, made beside the output
        return math.ceil(math.prod(heads) * rows * 4)
    keys = evaluate(key.shape[-2], graph.hints)
    itemsize = query.dtype.itemsize
    scores = math.prod(heads) * rows * keys * itemsize
    causal = rows * keys * itemsize if schema_arg(node, "is_causal", False) else 0
    return math.ceil(2 * scores + causal)


def _trainable_mask(node: Node, graph: Graph) -> bool:
    """Whether an SDPA call's mask is a parameter that requires grad, or a view of one."""
    mask = schema_arg(node, "attn_mask")
    if not isinstance(mask, Ref):
        return False
    roots, _ = storage_roots(graph)
    root = graph[roots.get(mask.name, mask.name)]
    return root.kind == "param" and root.target in graph.trainable


def _causal_rows_scratch(node: Node, graph: Graph, rows: int) -> int:
    """`_causal_attention` on CPU (`CausalRows`): while it merges its two halves it holds the
    second half's output and four float32 rows of log-sum-exp per query (both halves', their
    sum and one weight), plus that weight in the query's dtype when it is not float32."""
    query = graph[node.args[0].name].tensor
    value = graph[node.args[2].name].tensor
    heads = math.prod(evaluate(size, graph.hints) for size in query.shape[:-2])
    width = evaluate(value.shape[-1], graph.hints)
    itemsize = query.dtype.itemsize
    lse = heads * rows * 4
    cast = heads * rows * itemsize if query.dtype != torch.float32 else 0
    return heads * rows * width * itemsize + 4 * lse + cast


def held_by_callers(graph: Graph) -> dict[str, list[tuple[str, tuple[str, ...]]]]:
    """The values each module call's caller holds while it runs, by the call's last node.

    NOTE [Arguments held by the caller]
    The generated module calls the model's modules (NOTE [Module scopes]), and a caller holds
    the arguments it passes until the call returns, even where the callee reads them no more:
    `x = self.blocks[0](x)` frees the old `x` only once the block has returned. So every value a
    module call reads from outside lives at least until the call's last node. Calls of one op
    (a layer) and `torch.nn` classes, which the generated module writes inline, hold nothing,
    nor does a call a chunk loop crosses (`crossed`): it is written inline too. When the
    arguments held are what keeps the peak over the target, the planner writes the calls of
    that kind of module inline (`analysis.select.inline_held`, `Graph.inline_calls`). A module
    written inline for another reason is estimated as if it held its arguments.
    """
    key = ("held by callers",)
    if key not in graph.memo:
        found: dict[str, list[tuple[str, tuple[str, ...]]]] = {}
        for call, names in call_members(graph).items():
            kind = graph.module_types.get(call.partition("@")[0], "")
            if len(names) < 2 or kind.startswith("torch.nn.") or call in graph.inline_calls:
                continue
            inside = set(names)
            inputs = tuple(  # sizes pass as numbers (NOTE [Sizes passed as numbers])
                dict.fromkeys(r for r in tensor_refs(graph, names) if r not in inside)
            )
            found.setdefault(names[-1], []).append((call, inputs))
        graph.memo[key] = found
    return graph.memo[key]


def call_members(graph: Graph) -> dict[str, tuple[str, ...]]:
    """Each module call's ops, in order."""
    key = ("call members",)
    if key not in graph.memo:
        members: dict[str, list[str]] = {}
        for node in graph.nodes:
            if node.kind == "op":
                for call in node.calls:
                    members.setdefault(call, []).append(node.name)
        graph.memo[key] = {call: tuple(names) for call, names in members.items()}
    return graph.memo[key]


def crossed(graph: Graph, span: tuple[str, ...]) -> frozenset[str]:
    """The module calls a stretch runs part of, or runs whole with more around it."""
    key = ("crossed", span)
    if key not in graph.memo:
        inside = set(span)
        members = call_members(graph)
        calls = {c for n in span for c in graph[n].calls}
        graph.memo[key] = frozenset(c for c in calls if not inside <= set(members[c]))
    return graph.memo[key]


def _holders(graph: Graph) -> dict[str, list[tuple[str, int]]]:
    """Each value a module call's caller holds: the calls, with their last node's position."""
    key = ("holders",)
    if key not in graph.memo:
        found: dict[str, list[tuple[str, int]]] = {}
        for last, calls in held_by_callers(graph).items():
            for call, inputs in calls:
                for name in inputs:
                    found.setdefault(name, []).append((call, graph.position(last)))
        graph.memo[key] = found
    return graph.memo[key]


def _returns(graph: Graph, name: str, skip: set[str] | frozenset[str] = frozenset()) -> list[Stmt]:
    """The statements that end the module calls ending at node `name` (but those in `skip`):
    they read what their callers held (NOTE [Arguments held by the caller])."""
    return [
        Stmt(key=None, uses=inputs, label=f"{call} returns")
        for call, inputs in held_by_callers(graph).get(name, ())
        if call not in skip
    ]


def graph_program(graph: Graph) -> list[Stmt]:
    """Return the program that runs the graph as captured, node by node."""
    stmts = []
    for node in graph.nodes:
        stmts.append(node_stmt(node, graph))
        stmts.extend(_returns(graph, node.name))
    return stmts


def estimate_graph(graph: Graph) -> Profile:
    """Return the estimated activation-memory profile of the unchunked graph."""
    return simulate(graph_program(graph), graph.output_names())


#: the suffix of a per-chunk value's program key
CHUNK_KEY = "@chunk"


def chunk_key(name: str) -> str:
    """Return the program key of one chunk of a per-chunk value."""
    return name + CHUNK_KEY


#: label suffix of the statements a region runs before its loop
SETUP = " setup"


def region_label(index: int) -> str:
    return f"region {index}"


def region_program(graph: Graph, lowered: LoopRegion, index: int) -> list[Stmt]:
    """Return one region as statements: hoisted nodes, buffers, one loop iteration, loop end."""
    region = lowered.region
    label = region_label(index)
    hints = graph.hints
    loop = region.loop_dims
    setup = f"{label}{SETUP}"  # before the loop: the hoisted values, copies and buffers
    stmts = [replace(node_stmt(graph[name], graph), label=setup) for name in region.hoisted]
    copies = {name: f"{name}@contiguous" for name in region.materialized}
    for name, key in copies.items():
        nbytes = value_bytes(graph[name].meta, hints)
        stmts.append(Stmt(key=key, alloc=nbytes, uses=(name,), label=setup))
    for step in lowered.steps:  # NOTE [Statistics before the loop]: `_group_stats`
        scratch = _group_stats_scratch(graph, region, step)
        if scratch:
            uses = (step.operand(0).value,)
            stmts.append(Stmt(key=None, uses=uses, label=setup, scratch=scratch))
    outputs = {name for name, _ in region.outputs}
    outer: set[str] = outputs | {total.value for total in lowered.sums}
    for number, done in enumerate(lowered.passes):  # NOTE [Statistics passes]
        key = f"@pass{number}"
        for step in done.steps:
            stmts.append(_step_stmt(graph, region, step, copies, outer, key, label))
        meta = out_meta(graph[done.value])
        size = max(evaluate(done.rows.units(meta.shape[loop[done.value]]), hints), 1)
        share = done.rows.rows(region.chunk_size, size, evaluate(region.extent, hints)) / size
        scratch = _float32_copy(meta, hints, share)  # the chunk's rows, centred in float32
        stmts.append(Stmt(key=None, uses=(done.value + key,), label=label, scratch=scratch))
        stmts.append(Stmt(key=None, uses=tuple(sorted(outer)), label=label))
    reuses = {name: value for name, value, _ in lowered.reuses}  # NOTE [Outputs in place]
    for name in outputs:
        if name in reuses:
            stmts.append(Stmt(key=name, shares=reuses[name], uses=(reuses[name],), label=setup))
        else:
            stmts.append(Stmt(key=name, alloc=value_bytes(graph[name].meta, hints), label=setup))
    for total in lowered.sums:  # NOTE [Sums over the chunks]: each starts whole
        starts = tuple(v for v in (total.added, total.bias) if v is not None)
        if total.overwrites:
            stmts.append(Stmt(key=total.value, shares=total.added, uses=starts, label=setup))
        else:
            nbytes = value_bytes(graph[total.value].meta, hints)
            stmts.append(Stmt(key=total.value, alloc=nbytes, uses=starts, label=setup))
    for step in lowered.steps:
        stmts.append(_step_stmt(graph, region, step, copies, outer, CHUNK_KEY, label))
        if step.node in outputs:
            stmts.append(Stmt(key=None, uses=(chunk_key(step.node), step.node), label=label))
        for total in lowered.sums_after(step.node):  # its chunk's share, added in place
            uses = (chunk_key(step.node), total.weight.value, total.value)
            scratch = _sum_scratch(graph, region, step)
            stmts.append(Stmt(key=None, uses=uses, label=label, scratch=scratch))
    stmts.append(Stmt(key=None, uses=tuple(sorted(outer)), label=label))
    return stmts


def _step_stmt(
    graph: Graph,
    region: Region,
    step: LoopStep,
    copies: dict[str, str],
    outer: set[str],
    key: str,
    label: str,
) -> Stmt:
    """One loop step as a statement: its chunk (keyed `name + key`) and what it reads, adding
    the values from outside the loop to `outer`."""
    hints = graph.hints
    extent = max(evaluate(region.extent, hints), 1)
    fraction = min(region.chunk_size, extent) / extent
    loop = region.loop_dims
    name = step.node
    node = graph[name]
    uses = []
    for ref in dict.fromkeys(node.refs()):
        used = ref + key if ref in loop else copies.get(ref, ref)
        uses.append(used)
        if ref not in loop:
            outer.add(used)
    base = node.mutates or node.aliases
    if step.inplace is not None:
        base = step.operands[step.inplace].value
    owned = base is None
    extent = evaluate(region.extent, graph.hints)
    made = made_fraction(graph, step, region.chunk_size, extent)
    mask = _bool_mask(node, graph)
    scratch = 0
    if mask is not None:  # the float copy is of the mask's chunk when the mask is chunked
        read = step.operand(3)
        chunked = read is not None and (read.source == CHUNK or read.rows is not None)
        scratch = _mask_scratch(node, graph, mask, fraction if chunked else 1.0)
    scratch += _group_norm_scratch(graph, step, region.chunk_size, extent)
    if any(isinstance(value, CausalRows) for value in step.args):
        scratch = _causal_rows_scratch(node, graph, min(region.chunk_size, extent))
    else:
        read = step.operand(0)
        chunked = read is not None and (read.source == CHUNK or read.rows is not None)
        scratch += _math_scratch(node, graph, fraction if chunked else 1.0)
    scratch += _copies_scratch(node, graph, step, fraction)
    alloc = math.ceil(value_bytes(node.meta, hints) * made) if owned else 0
    for read in step.operands:  # NOTE [Cyclic shifts]: the chunk whose rows wrap copies them
        if read.source == CHUNK or read.rows is None or not read.span.shift:
            continue
        copy = math.ceil(value_bytes(graph[read.value].meta, hints) * fraction)
        if read.value == base:  # a view of the copy keeps it
            owned, alloc = True, copy
        else:
            scratch += copy
    return Stmt(
        key=name + key,
        alloc=alloc,
        shares=None if owned else (base + key if base in loop else base),
        uses=tuple(uses),
        label=label,
        scratch=scratch,
    )


def _sum_scratch(graph: Graph, region: Region, step: LoopStep) -> int:
    """What adding a chunk into its sum takes beside it (NOTE [Sums over the chunks]): the
    chunk's rows as a matrix, a copy where its layout is not one."""
    meta = out_meta(graph[step.node])
    if meta is None or meta.contiguous:
        return 0
    extent = evaluate(region.extent, graph.hints)
    share = made_fraction(graph, step, region.chunk_size, extent)
    return math.ceil(value_bytes(meta, graph.hints) * share)


def _group_norm_scratch(graph: Graph, step: LoopStep, chunk: int, extent: int) -> int:
    """A group norm run by chunks in half precision (NOTE [Statistics before the loop]): the
    statistics pass holds one chunk of its input in float32, the normalization two."""
    node = graph[step.node]
    rule = dim_rule(node, graph)
    if rule is None or not rule.whole_of(step.dim):
        return 0
    meta = out_meta(node)
    if meta is None:
        return 0
    return _float32_copies(meta, graph.hints, made_fraction(graph, step, chunk, extent), 2)


def _group_stats_scratch(graph: Graph, region: Region, step: LoopStep) -> int:
    """The float32 copy `_group_stats` centres, one chunk of the norm's whole input at a time
    (NOTE [Statistics before the loop]); 0 for a step that takes no statistics before the
    loop."""
    node = graph[step.node]
    rule = dim_rule(node, graph)
    if rule is None or not rule.whole_of(step.dim) or step.node in region.recomputed:
        return 0
    read = step.operand(0)
    assert read is not None and read.rows is not None
    meta = out_meta(graph[read.value])
    length = max(evaluate(meta.shape[read.rows], graph.hints), 1)
    scale = evaluate(read.span.total_scale, graph.hints)
    rows = min(math.ceil(scale * region.chunk_size), length)
    return _float32_copy(meta, graph.hints, rows / length)


def _float32_copy(meta: TensorMeta, hints: Any, share: float) -> int:
    """Bytes of a float32 copy of `share` of a value, in whatever dtype it is."""
    return math.ceil(4 / meta.dtype.itemsize * value_bytes(meta, hints) * share)


def _float32_copies(meta: TensorMeta, hints: Any, share: float, copies: int) -> int:
    """Bytes of `copies` float32 copies of `share` of a half-precision value (0 in float32)."""
    if meta.dtype == torch.float32:
        return 0
    return math.ceil(copies * 4 / meta.dtype.itemsize * value_bytes(meta, hints) * share)


def made_fraction(graph: Graph, step: LoopStep, chunk: int, extent: int | None = None) -> float:
    """Return the share of its value a loop step makes per chunk: its chunk's rows, with any
    halo, at its scale (NOTE [Halos]); the most any chunk makes, given the loop's `extent`."""
    length = out_meta(graph[step.node]).shape[step.dim]
    size = max(evaluate(step.computed.units(length), graph.hints), 1)
    return step.computed.rows(chunk, size, extent) / size


def plan_program(graph: Graph, regions: tuple[Region, ...]) -> list[Stmt]:
    """Return the program of the graph with the regions run as chunk loops."""
    starts = {region.span[0]: (index, region) for index, region in enumerate(regions)}
    covered = {name for region in regions for name in region.span}
    inline = {c for region in regions for c in crossed(graph, region.span)}
    stmts: list[Stmt] = []
    for node in graph.nodes:
        if node.name in starts:
            index, region = starts[node.name]
            stmts.extend(region_program(graph, lower_region(graph, region), index))
            for name in region.span:  # calls ending in the loop end with it
                stmts.extend(_returns(graph, name, inline))
        elif node.name not in covered:
            stmts.append(node_stmt(node, graph))
            stmts.extend(_returns(graph, node.name, inline))
    return stmts


def estimate_plan(graph: Graph, regions: tuple[Region, ...]) -> Profile:
    """Return the estimated activation-memory profile with the regions chunked."""
    return simulate(plan_program(graph, regions), graph.output_names())


def local_region_peak(graph: Graph, profile: Profile, lowered: LoopRegion) -> int:
    """Return a region's peak if its stretch ran as a loop, the rest of `profile` unchanged.

    Only the region's statements are simulated, on top of the bytes live just before its
    stretch: the values alive across it are alive throughout the loop either way. This makes
    sizing a chunk cost the region's length, not the graph's.
    """
    region = lowered.region
    start = profile.labels.index(region.span[0])
    before = profile.live_after[start - 1] if start > 0 else 0
    inside = set(region.span)
    outputs = graph.output_names()
    keep = {
        name
        for name in region.span
        if name in outputs or any(user not in inside for user in graph.users(name))
    }
    # The storages the stretch reads from before it are simulated too: one read only inside
    # the stretch may be freed in it (a view copied contiguous lets its base go).
    roots, last_use = storage_roots(graph)
    inline = crossed(graph, region.span)
    incoming: list[Stmt] = []
    seen: set[str] = set()
    held = 0
    end = graph.position(region.span[-1])
    for name in dict.fromkeys(tensor_refs(graph, region.span)):
        if name in inside:
            continue
        root = roots.get(name, name)
        if root not in seen:
            seen.add(root)
            stmt = node_stmt(graph[root], graph)
            incoming.append(Stmt(key=root, alloc=stmt.alloc))
            held += stmt.alloc
            if last_use.get(root, 0) > end:
                keep.add(root)
        # held by a caller until a call that ends after the stretch returns
        if any(c not in inline and last > end for c, last in _holders(graph).get(name, ())):
            keep.add(root)
        if name != root:
            incoming.append(Stmt(key=name, shares=root))
    program = incoming + region_program(graph, lowered, 0)
    released = _released(graph, region.span, inline, seen)
    return before - held - released + simulate(program, keep).peak


def _released(graph: Graph, span: tuple[str, ...], inline: frozenset[str], read: set[str]) -> int:
    """Bytes live before a stretch only because a caller holds them for a call the stretch
    writes inline: written inline, nothing holds them, and they are gone before the loop (the
    normalised input an attention call was passed, last read by its keys and values)."""
    roots, last_use = storage_roots(graph)
    start = graph.position(span[0])
    freed: set[str] = set()
    for name, holders in _holders(graph).items():
        root = roots.get(name, name)
        if root in read or root in freed or last_use.get(root, 0) >= start:
            continue
        if not any(call in inline and last >= start for call, last in holders):
            continue
        if any(call not in inline and last >= start for call, last in holders):
            continue
        freed.add(root)
    return sum(node_stmt(graph[root], graph).alloc for root in freed)


def region_peak(profile: Profile, index: int) -> int:
    """Return the largest footprint while region `index` runs, its setup included."""
    label = region_label(index)
    labels = (label, f"{label}{SETUP}")
    return max((f for f, l in zip(profile.footprint, profile.labels) if l in labels), default=0)


def loop_peak(profile: Profile, index: int) -> int:
    """Return the largest footprint inside region `index`'s loop (its setup excluded)."""
    label = region_label(index)
    return max((f for f, l in zip(profile.footprint, profile.labels) if l == label), default=0)


__all__ = [
    "Profile",
    "call_members",
    "crossed",
    "estimate_graph",
    "estimate_plan",
    "local_region_peak",
    "loop_peak",
    "region_label",
    "region_peak",
    "region_program",
    "simulate",
]
