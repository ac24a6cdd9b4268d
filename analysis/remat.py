"""Rematerialisation: recompute a large, cheaply made value next to each reader.

NOTE [Recomputed values]
Libraries build some large values once and hand them to every layer: transformers builds one
`seq x seq` attention mask in the model's forward and passes it to each decoder layer. Such a
value lives from the first layer to the last, and no chunk loop can shrink it, because it is
made outside every loop. When it comes from much smaller values through cheap ops (comparisons,
logic, dtype conversions, broadcasts: `arange(seq)[:, None] >= arange(seq)[None, :]` and a
padding row), the pass copies that chain of ops in front of each reader. Each copy is then
planned like any other op: inside a loop over the queries it makes only the mask rows of the
chunk, and between readers nothing of the mask is kept. The price is computing the chain once
per reader, a few elementwise passes that are small next to the attention that reads it.

The pass is a pure function `Graph -> Graph`; the pipeline plans both graphs and keeps this one
only when its plan has the lower peak.

NOTE [Keys before queries]
A decoder layer normalises its input once and projects the queries, keys and values from it,
so eager holds the residual stream, the normalised input, q, k, v and the attention's output
together. A loop over the queries needs the keys and values whole, but nothing else: each
chunk of queries can be projected from its own rows of the normalised input. The pass (1)
moves each attention's query chain (the ops only the queries need) to right before the
attention, after the keys and values, and (2) recomputes for it the large value it shares with
them, when that value is made row by row through no matrix product from values alive after the
attention anyway (the residual stream) and small ones (the norm's per-row scale): the norm's
last multiplications, copied, or a whole `layer_norm` op, which normalises each row alone. Then one loop can make the keys and values row by row, and a
second run the queries' norm, projection, rotary embedding, attention, output projection and
residual add, holding only the residual stream, the keys, the values and the output; the
normalised input is gone once the values are made. The copies belong to the innermost module
call that runs both the shared value and the queries (the decoder layer). The price is the
norm's multiplications once more; the pipeline keeps the rewrite only when the peak falls.
"""

from __future__ import annotations

from dataclasses import replace

from analysis.ir import (
    Graph,
    Node,
    Ref,
    TensorMeta,
    common_calls,
    in_call,
    renamed_refs,
    storage_roots,
    value_bytes,
)
import torch

from analysis.ops import CONTRACTION, info
from analysis.packed import split_packed

#: the attention op whose query chain `queries_last` moves
_SDPA = torch.ops.aten.scaled_dot_product_attention.default
#: norms over the last dims, each row from its own row: a query chain may recompute one
#: (NOTE [Keys before queries]: torchvision's ViT normalises with one `layer_norm` op)
_NORMS = {torch.ops.aten.layer_norm.default, torch.ops.aten.rms_norm.default}
#: a value is worth recomputing when the values it is made from take at most this share of it
LEAF_SHARE = 1 / 8
#: cheap ops whose results are at least this share of the value are recomputed with it; smaller
#: ones are kept and read
RECOMPUTE_SHARE = 1 / 64


def rematerialized(graph: Graph) -> Graph | None:
    """Return the graph with each large, cheaply made value recomputed in front of every reader
    (NOTE [Recomputed values]), or None when no value qualifies."""
    captured = graph.captured
    split = split_packed(graph)  # NOTE [Packed projections]
    reordered = queries_last(split or graph) or split
    if reordered is not None:
        graph = replace(reordered, before=None)
    chains = _chains(graph)
    if not chains:
        return None if reordered is None else replace(graph, before=captured)
    nodes: list[Node] = []
    taken = {node.name for node in graph.nodes}
    for node in graph.nodes:
        renamed: dict[str, str] = {}
        for value in dict.fromkeys(ref for ref in node.refs() if ref in chains):
            for original in chains[value]:
                clone = _clone(graph[original], renamed, taken, node)
                renamed[original] = clone.name
                nodes.append(clone)
        nodes.append(_reading(node, renamed))
    dropped = {name for chain in chains.values() for name in chain}
    rewritten = replace(graph, nodes=tuple(nodes), memo={}, before=captured)
    return _without(rewritten, dropped)


def _chains(graph: Graph) -> dict[str, tuple[str, ...]]:
    """Return each value worth recomputing with the ops that make it, in execution order."""
    hints = graph.hints
    outputs = graph.output_names()
    roots, _ = storage_roots(graph)
    #: every in-place write, as (writer, the storage it lands in)
    writes = [(n.name, roots.get(n.mutates, n.mutates)) for n in graph.nodes if n.mutates]
    chosen: dict[str, tuple[str, ...]] = {}
    claimed: set[str] = set()
    for node in reversed(graph.nodes):
        name = node.name
        readers = graph.users(name)
        if name in claimed or name in outputs or not _cheap(node) or not readers:
            continue
        if len(readers) == 1 and graph.position(readers[0]) == graph.position(name) + 1:
            continue  # read right where it is made: nothing to gain
        size = value_bytes(node.meta, hints)
        chain = _grow(graph, name, size * RECOMPUTE_SHARE)
        leaves = {ref for n in chain for ref in graph[n].refs() if ref not in chain}
        leaf_bytes = sum(
            value_bytes(graph[leaf].meta, hints)
            for leaf in leaves
            if graph[leaf].kind not in ("param", "buffer", "constant")
        )
        # Storage, not names: a write through a view (`mask[:, :64] = True`) lands in the
        # value it views. Nothing outside the chain may write what the chain reads or makes
        # (a copy would miss it, or see it too early), and the chain's own in-place ops must
        # write storage it allocates itself (else each copy would apply them again).
        touched = {roots.get(x, x) for x in chain | leaves}
        outside = any(w not in chain and root in touched for w, root in writes)
        inside = any(w in chain and root not in chain for w, root in writes)
        if size == 0 or leaf_bytes > size * LEAF_SHARE or chain & outputs or outside or inside:
            continue
        chosen[name] = tuple(sorted(chain, key=graph.position))
        claimed |= chain
    return chosen


def _grow(graph: Graph, name: str, small: float) -> set[str]:
    """Return `name` with the cheap ops before it that make values larger than `small`."""
    chain: set[str] = set()
    pending = [name]
    while pending:
        current = pending.pop()
        if current in chain:
            continue
        chain.add(current)
        for ref in graph[current].refs():
            producer = graph[ref]
            if _cheap(producer) and value_bytes(producer.meta, graph.hints) > small:
                pending.append(ref)
    return chain


def _cheap(node: Node) -> bool:
    return node.kind == "op" and info(node.target).cheap and isinstance(node.meta, TensorMeta)


def _clone(node: Node, renamed: dict[str, str], taken: set[str], reader: Node) -> Node:
    """Return a copy of `node` for one reader: a fresh name, the reader's module, renamed refs."""
    count = 1
    while f"{node.name}_again_{count}" in taken:
        count += 1
    name = f"{node.name}_again_{count}"
    taken.add(name)
    moved = replace(node, name=name, module_path=reader.module_path, calls=reader.calls)
    return _reading(moved, renamed)


def _reading(node: Node, renamed: dict[str, str]) -> Node:
    """`node` reading the copies in `renamed` in place of the values they copy."""
    if not renamed:
        return node
    return replace(
        node,
        args=renamed_refs(node.args, renamed),
        kwargs=renamed_refs(node.kwargs, renamed),
        aliases=renamed.get(node.aliases, node.aliases) if node.aliases else None,
        mutates=renamed.get(node.mutates, node.mutates) if node.mutates else None,
    )


def _without(graph: Graph, dropped: set[str]) -> Graph:
    """Return the graph without the replaced chains' ops that nothing reads any more."""
    live = graph.output_names()
    keep: list[Node] = []
    for node in reversed(graph.nodes):
        if node.name not in dropped or node.name in live:
            keep.append(node)
            live.update(node.refs())
    return replace(graph, nodes=tuple(reversed(keep)), memo={})


__all__ = ["rematerialized"]


def queries_last(graph: Graph) -> Graph | None:
    """Return the graph with each attention's query chain moved after its keys and values,
    and the large row-wise value it shares with them recomputed for it (NOTE [Keys before
    queries]), or None when no attention changes."""
    nodes = list(graph.nodes)
    changed = False
    taken = {node.name for node in graph.nodes}
    for node in graph.nodes:
        if node.target is not _SDPA or len(node.args) < 3:
            continue
        current = replace(graph, nodes=tuple(nodes), memo={})
        moved = _queries_moved(current, node.name, taken)
        if moved is not None:
            nodes, changed = moved, True
    if not changed:
        return None
    return replace(graph, nodes=tuple(nodes), memo={}, before=graph.captured)


def _ancestors(graph: Graph, names: list[str]) -> set[str]:
    """The ops among `names` and every op they are made from."""
    found: set[str] = set()
    pending = [n for n in names if graph[n].kind == "op"]
    found.update(pending)
    while pending:
        for ref in graph[pending.pop()].refs():
            if ref not in found and graph[ref].kind == "op":
                found.add(ref)
                pending.append(ref)
    return found


def _queries_moved(graph: Graph, attention: str, taken: set[str]) -> list[Node] | None:
    """The graph's nodes with the attention's query chain moved right before it and its shared
    row-wise input copied for it; None when the chain is already there, or another op reads
    it before the attention."""
    node = graph[attention]
    query, key, value = (arg.name if isinstance(arg, Ref) else None for arg in node.args[:3])
    if query is None or key is None or value is None:
        return None
    shared_side = _ancestors(graph, [key, value])
    own = sorted(_ancestors(graph, [query]) - shared_side, key=graph.position)
    if not own:
        return None
    at = graph.position(attention)
    mine = set(own)
    if any(
        graph.position(user) < at and user not in mine for name in own for user in graph.users(name)
    ):
        return None
    if all(graph.position(n) == at - len(own) + i for i, n in enumerate(own)):
        return None  # already right before the attention
    # the large values the query chain reads from the shared part, recomputed for it
    hints = graph.hints
    size = value_bytes(graph[query].meta, hints)
    alive_after = {ref for later in graph.nodes[at + 1 :] for ref in later.refs()}
    clones: list[Node] = []
    renamed: dict[str, str] = {}
    read = {ref for name in own for ref in graph[name].refs() if ref not in mine}
    for boundary in sorted(read, key=graph.position):
        made = graph[boundary]
        if made.kind != "op" or value_bytes(made.meta, hints) < size * LEAF_SHARE:
            continue
        chain = _row_chain(graph, boundary, size * RECOMPUTE_SHARE, alive_after)
        if chain is None:
            continue
        for name in sorted(chain, key=graph.position):
            scope = common_calls([graph[name].calls, graph[own[0]].calls])
            clone = _clone(graph[name], renamed, taken, in_call(graph, graph[own[0]], scope))
            renamed[name] = clone.name
            clones.append(clone)
    moved = [_reading(graph[name], renamed) for name in own]
    rest = [n for n in graph.nodes if n.name not in mine]
    index = next(i for i, n in enumerate(rest) if n.name == attention)
    return rest[:index] + clones + moved + rest[index:]


def _row_chain(graph: Graph, name: str, small: float, alive_after: set[str]) -> set[str] | None:
    """The ops that make `name` from values alive after the attention anyway, small values and
    weights, through no contraction; None when some large input would be kept alive longer."""
    chain: set[str] = set()
    pending = [name]
    hints = graph.hints
    while pending:
        current = pending.pop()
        if current in chain:
            continue
        node = graph[current]
        known = info(node.target)
        if node.kind != "op" or not isinstance(node.meta, TensorMeta) or node.mutates:
            return None
        if not (known.cheap or known.elementwise or node.aliases or node.target in _NORMS):
            return None
        if known.cost == CONTRACTION:
            return None
        chain.add(current)
        for ref in node.refs():
            producer = graph[ref]
            if producer.kind != "op" or ref in alive_after:
                continue
            if value_bytes(producer.meta, hints) <= small:
                continue
            pending.append(ref)
    return chain
