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
"""

from __future__ import annotations

from dataclasses import replace

from analysis.ir import Graph, Node, TensorMeta, renamed_refs, storage_roots, value_bytes
from analysis.ops import info

#: a value is worth recomputing when the values it is made from take at most this share of it
LEAF_SHARE = 1 / 8
#: cheap ops whose results are at least this share of the value are recomputed with it; smaller
#: ones are kept and read
RECOMPUTE_SHARE = 1 / 64


def rematerialized(graph: Graph) -> Graph | None:
    """Return the graph with each large, cheaply made value recomputed in front of every reader
    (NOTE [Recomputed values]), or None when no value qualifies."""
    chains = _chains(graph)
    if not chains:
        return None
    nodes: list[Node] = []
    taken = {node.name for node in graph.nodes}
    for node in graph.nodes:
        renamed: dict[str, str] = {}
        for value in dict.fromkeys(ref for ref in node.refs() if ref in chains):
            for original in chains[value]:
                clone = _clone(graph[original], renamed, taken, node)
                renamed[original] = clone.name
                nodes.append(clone)
        if renamed:
            node = replace(
                node,
                args=renamed_refs(node.args, renamed),
                kwargs=renamed_refs(node.kwargs, renamed),
                aliases=renamed.get(node.aliases, node.aliases) if node.aliases else None,
                mutates=renamed.get(node.mutates, node.mutates) if node.mutates else None,
            )
        nodes.append(node)
    dropped = {name for chain in chains.values() for name in chain}
    rewritten = replace(graph, nodes=tuple(nodes), memo={}, before=graph.captured)
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
    return replace(
        node,
        name=name,
        args=renamed_refs(node.args, renamed),
        kwargs=renamed_refs(node.kwargs, renamed),
        module_path=reader.module_path,
        calls=reader.calls,
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
