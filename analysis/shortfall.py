"""Why a plan misses its target, in one line, and whose limit it is.

NOTE [Whose limit]
A plan that misses its target says why, so the user can tell a model that cannot go lower from
a tool that could not take it there:
- **the model's floor**: what every plan holds at once is above the target (`floor`). PyTorch
  frees a tensor whole, never row by row, and the planner keeps the model's ops; within that,
  three things bound every plan from below:
  - the outputs: allocated by the forward and alive at its end ("its outputs alone are
    8.0 MiB");
  - an output with what it is made from: while its last rows are written it is whole, and so
    is a value every path to it passes through, unless the rows are remade through an
    attention, which holds all its keys and values (the logits with the hidden states under
    them);
  - an attention with no mask (or `is_causal`): while its last queries run, all its keys and
    values are whole, or a value they are both made from (a loop over heads makes each head's
    keys and values from the hidden states), and so are the rows it has made, in the smallest
    form they take on the way to an output; or, when that is larger, a value made before it
    and read again after it (the residual its block adds its output to, or what that is made
    from), into which its rows can at best be summed (NOTE [Sums over the chunks]); counted
    once when the keys are remade from it (NOTE [Products made once]).
  An attention with a mask is left out: a window needs only some keys at a time.
  The planner makes each projection once: it recomputes only cheap ops (NOTE [Recomputed
  values]), never a matrix product. So a plan that keeps the value the keys and values are made
  from, rather than the keys and values, also holds one head's keys and values for one batch
  entry, whole, while that head runs: its queries read every key (NOTE [One head's keys]).
- **the time limit** the user set, or the default's (NOTE [Time limit]): a loop would have
  lowered the peak, at more time than the limit leaves.
- **the tool's limit**: the peak is at an op no loop cut through (one that mixes every dim,
  named with its model line), or inside a loop already at its smallest useful chunk.

NOTE [One head's keys]
Below "the hidden states and the rows made" a plan must make some keys and values more than
once. A loop over heads holds, beside the hidden states and the output it builds, the keys and
values of the head it runs (2h/H for H heads of a width-h layer; 2.5h with four heads). Going
lower needs keys and values for every chunk of queries, remade from the hidden states: each
chunk repeats the key and value projections, at about 1.35x the time for a small encoder by
the FLOP count, which is not a plan the tool makes. Keys and values that are views of the
held value itself (no projection) add nothing.

NOTE [Products made once]
The same rule bounds what a plan may remake at all: cheap ops and norms, never a matrix
product (a linear, a convolution, an attention). So a value held for a loop over heads is one
from which each head's keys and values are remade through their own projections alone: the
hidden states, not the image a patch embedding's convolution made them from (torchvision
ViT's first block holds the embeddings, 512 KiB, not nothing). A value read both before an
attention and after it (the residual) is held through it, or a value it is remade from with
no matrix product; when that is the value the keys are remade from, it is counted once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from analysis.dimflow import schema_arg
from analysis.ir import (
    Graph,
    Ref,
    TensorMeta,
    dtype_size,
    evaluate,
    refs_in,
    storage_roots,
    value_bytes,
)
from analysis.memory import SETUP, estimate_graph, estimate_plan, region_label
from analysis.ops import CONTRACTION, dim_rule, info, is_convolution
from analysis.plan import ChunkPlan, describe_lines, format_bytes


def output_bytes(graph: Graph) -> int:
    """The bytes of the forward's outputs: a floor under every plan's peak."""
    names = {name for value in graph.outputs for name in refs_in(value)}
    return sum(
        value_bytes(graph[name].meta, graph.hints)
        for name in names
        if graph[name].kind == "op" and isinstance(graph[name].meta, TensorMeta)
    )


@dataclass(frozen=True, slots=True)
class ModelFloor:
    """A bound under every plan's peak (NOTE [Whose limit]), and what makes it, in words."""

    bytes: int
    words: str


SDPA = torch.ops.aten.scaled_dot_product_attention.default


def floor(graph: Graph) -> ModelFloor:
    """The highest of the model's floors (NOTE [Whose limit])."""
    if "floor" in graph.memo:
        return graph.memo["floor"]
    outputs = output_bytes(graph)
    found = [ModelFloor(outputs, f"its outputs alone are {format_bytes(outputs)}")]
    facts = _Facts(graph)
    for name in dict.fromkeys(n for value in graph.outputs for n in refs_in(value)):
        if graph[name].kind != "op" or not isinstance(graph[name].meta, TensorMeta):
            continue
        made_from = facts.cut(name)
        if made_from:
            size = facts.size(name)
            total = size + made_from
            found.append(
                ModelFloor(
                    total,
                    f"its output, {_called(graph, name)} ({format_bytes(size)}), with the "
                    f"{format_bytes(made_from)} it is made from is {format_bytes(total)}",
                )
            )
    for node in graph.nodes:
        if facts.attends_all(node):
            keys, rest, across = facts.attention_floor(node)
            total = keys + rest
            where = node.source.cite().split(" in ")[0] if node.source else node.name
            made = f"the rows it has made ({format_bytes(rest)})"
            if across:
                made = f"a value it is added to after, or what that is made from ({format_bytes(rest)})"
            found.append(
                ModelFloor(
                    total,
                    f"the attention at {where} holds its keys and values, or what they are made "
                    f"from ({format_bytes(keys)}), with {made}: {format_bytes(total)}",
                )
            )
    graph.memo["floor"] = best = max(found, key=lambda f: f.bytes)
    return best


def _called(graph: Graph, name: str) -> str:
    """A value in the model's terms: the module that made it ("lm_head's output"), else the
    value's name."""
    path = graph[name].module_path
    return f"{path}'s result" if path else name


class _Facts:
    """Dominators over the values the inputs flow into, and storage sizes, for `floor`."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.roots, _ = storage_roots(graph)
        #: immediate dominator of each value the inputs reach (None: the inputs themselves)
        self.idom: dict[str, str | None] = {}
        self.depth: dict[str, int] = {}
        #: an attention -> its ancestors, as a bit set over graph positions
        self.attentions: dict[str, int] = {}
        self.cuts: dict[str, int] = {}
        self.ancestors: dict[str, int] = {}
        for node in graph.nodes:
            if node.kind == "input":
                self.idom[node.name], self.depth[node.name] = None, 1
                continue
            # sizes are not values a plan holds: a view's symbolic length read off the
            # inputs does not make it depend on them
            preds = [
                r
                for r in dict.fromkeys(node.refs())
                if r in self.idom and isinstance(graph[r].meta, (TensorMeta, tuple))
            ]
            if not preds:
                continue  # made from parameters and sizes alone
            meet = preds[0]
            for other in preds[1:]:
                meet = self._meet(meet, other)
            self.idom[node.name] = meet
            self.depth[node.name] = self.depth[meet] + 1 if meet is not None else 1
            if node.target is SDPA:
                self.attentions[node.name] = 0
        #: the matrix products (attentions and convolutions too), as a bit set over positions
        self.products = 0
        if self.attentions:  # ancestors, needed only where there are attentions
            ancestors = self.ancestors
            for node in graph.nodes:
                mine = 0
                for ref in node.refs():
                    mine |= ancestors.get(ref, 0) | 1 << graph.position(ref)
                ancestors[node.name] = mine
                if node.kind == "op" and (
                    info(node.target).cost == CONTRACTION or is_convolution(node)
                ):
                    self.products |= 1 << graph.position(node.name)
            for name in self.attentions:
                self.attentions[name] = ancestors[name]

    def _before(self, ancestor: str, mask: int) -> bool:
        """Whether `ancestor` is in the ancestor set `mask`."""
        return bool(mask >> self.graph.position(ancestor) & 1)

    def _meet(self, a: str | None, b: str | None) -> str | None:
        """The deepest value dominating both (a value dominates itself)."""
        while a != b:
            if a is None or b is None:
                return None
            if self.depth[a] >= self.depth[b]:
                a = self.idom[a]
            else:
                b = self.idom[b]
        return a

    def size(self, name: str) -> int:
        """The bytes a value surely holds: its own, at most its storage's (a slice of a fused
        projection holds no more than itself, a broadcast no more than its source)."""
        node = self.graph[name]
        if node.kind != "op":
            return 0  # held by the caller or the module, not an activation
        root = self.graph[self.roots.get(name, name)]
        hints = self.graph.hints
        return min(value_bytes(node.meta, hints), value_bytes(root.meta, hints))

    def _after(self, name: str, ancestor: str) -> list[str]:
        """The attentions on a path from `ancestor` to `name`."""
        mine = self.ancestors.get(name, 0)
        return [
            a
            for a, before in self.attentions.items()
            if self._before(a, mine) and self._before(ancestor, before)
        ] + ([name] if name in self.attentions and ancestor != name else [])

    def cut(self, name: str) -> int:
        """The fewest bytes that the last rows of `name` are surely made from: a value every
        path to it passes through, after every attention on the way; or, remade through the
        last attentions, their keys and values with their queries or what those are made
        from. 0 when it is made from the inputs with no attention on the way."""
        if name in self.cuts:
            return self.cuts[name]
        dominators, through = self._dominators(name)
        if not through:
            found = 0  # the inputs alone
        else:
            last = [
                a for a in through if not any(self._before(a, self.attentions[b]) for b in through)
            ]
            remade = max(self._remade(self.graph[a]) for a in last)
            found = min([remade, *map(self.size, dominators)])
        self.cuts[name] = found
        return found

    def _dominators(self, name: str) -> tuple[list[str], list[str]]:
        """The values every path to `name` passes through, up to the first dominator with an
        attention between it and `name`, and the attentions there ([]: none up to the
        inputs)."""
        found: list[str] = []
        d = self.idom.get(name)
        while d is not None:
            through = self._after(name, d)
            if through:
                return found, through
            found.append(d)
            d = self.idom[d]
        return found, []

    def _remade(self, node) -> int:
        """What running an attention's last queries surely holds: all its keys and values,
        with its queries or what they are made from; 0 for a masked one (a window needs some
        keys at a time)."""
        if not self.attends_all(node):
            return 0
        query = node.args[0].name
        return self.keys_and_values(node) + min(self.size(query), self.cut(query))

    def attends_all(self, node) -> bool:
        """An attention whose last queries read every key: no mask, or causal."""
        return (
            node.target is SDPA
            and schema_arg(node, "attn_mask") is None
            and len(node.args) >= 3
            and all(isinstance(a, Ref) for a in node.args[:3])
        )

    def keys_and_values(self, node) -> int:
        """What its last queries surely hold of the keys and values: all of them, or a value
        both are made from since the attention before (a loop over heads makes each head's
        keys and values from the hidden states, holding those whole instead; only the head's
        own, when the inputs make them through their projections alone), whichever is less."""
        return min(keys for keys, _ in self._key_options(node))

    def _key_options(self, node) -> list[tuple[int, str | None]]:
        """The ways an attention's last queries may hold its keys and values, each with what
        it holds and the value it remakes them from for each head: "" for none (all keys and
        values whole), None for the inputs. A value counts only if each head's keys and
        values are remade from it with no matrix product but their own projections (NOTE
        [Products made once])."""
        key, value = node.args[1].name, node.args[2].name
        if self.roots.get(key, key) == self.roots.get(value, value):
            held = min(self.size(key) + self.size(value), self.size(self.roots.get(key, key)))
        else:
            held = self.size(key) + self.size(value)
        options: list[tuple[int, str | None]] = [(held, "")]
        if key not in self.idom or value not in self.idom:
            return options  # made from parameters alone
        source = self._meet(key, value)
        dominators, through = ([], []) if source is None else self._dominators(source)
        options += [
            (self.size(d) + self._one_head(node, d), d)
            for d in ([] if source is None else [source, *dominators])
            if self._per_head(node, d)
        ]
        if not through and self._per_head(node, None):  # remade from the inputs
            options.append((self._one_head(node, None), None))
        return options

    def attention_floor(self, node) -> tuple[int, int, bool]:
        """What an attention's last queries surely hold (NOTE [Whose limit]): its keys and
        values, or what they are made from, with the larger of the rows it has made and each
        value read across it, but a value the keys' own source makes again with no matrix
        product (which is held already). Returns the keys' part, the rest, and whether the
        rest is a value read across it."""
        rows, across = self.rows(node.name), self.read_across(node.name)
        best: tuple[int, int, bool] | None = None
        for keys, source in self._key_options(node):
            rest = max(
                (
                    held
                    for held, v in across
                    if not source or self._cone([v], source) & self.products
                ),
                default=0,
            )
            found = (keys, max(rows, rest), rest > rows)
            if best is None or sum(found[:2]) < sum(best[:2]):
                best = found
        assert best is not None
        return best

    def _cone(self, names: list[str], source: str | None) -> int:
        """The values made between `source` (None: the inputs) and `names`, with them, as a
        bit set over graph positions."""
        mask = 0
        for name in names:
            mask |= self.ancestors.get(name, 0) | 1 << self.graph.position(name)
        if source is not None:
            mask &= ~(self.ancestors.get(source, 0) | 1 << self.graph.position(source))
        return mask

    def _per_head(self, node, source: str | None) -> bool:
        """Whether a plan holding `source` (None: the inputs) remakes an attention's keys and
        values for each head with no matrix product but the last ones that make them (their
        projections, split by head)."""
        made = self._cone([a.name for a in node.args[1:3]], source) & self.products
        last = made
        for position in _bits(made):
            last &= ~self.ancestors.get(self.graph.nodes[position].name, 0)
        return made == last

    def _held_across(self, name: str) -> int:
        """The fewest bytes that keep `name`'s rows from before an attention until after it:
        `name`, or a value every path to it passes through that makes it again with no matrix
        product (NOTE [Products made once]); 0 when the inputs do."""
        best, d = self.size(name), self.idom.get(name)
        while d is not None:
            if self._cone([name], d) & self.products:
                return best
            best, d = min(best, self.size(d)), self.idom[d]
        return best if self._cone([name], None) & self.products else 0

    def _one_head(self, node, source: str | None) -> int:
        """The keys and values of one head and batch entry (NOTE [One head's keys]): what a
        plan holding `source` (None: the inputs) rather than them holds while that head runs;
        nothing of an operand that is a view of `source` or of an input, made by no op."""
        held = 0
        for operand in node.args[1:3]:
            root = self.roots.get(operand.name, operand.name)
            if root == (self.roots.get(source, source) if source else None):
                continue
            if self.graph[root].kind != "op":
                continue
            meta, hints = self.graph[operand.name].meta, self.graph.hints
            if isinstance(meta, TensorMeta) and meta.rank >= 2:
                rows, width = (evaluate(size, hints) for size in meta.shape[-2:])
                held += rows * width * dtype_size(meta.dtype)
        return held

    def read_across(self, name: str) -> list[tuple[int, str]]:
        """Each value made before an attention and read again after it (the residual its
        block adds its output to), with the most its last queries surely hold of it: the
        value, or what it is made from, and no more than the reader after the attention takes
        of it (a class token's row). The attention's own rows may at best be summed into it
        (a loop over heads adding each head's projected output into the residual), so the
        floor counts the larger of the two, not both."""
        graph, mine = self.graph, self.ancestors.get(name, 0)
        found, position = [], graph.position(name)
        for value in graph.nodes[:position]:
            if not self._before(value.name, mine) or not isinstance(value.meta, TensorMeta):
                continue
            read = [
                self.size(user)
                for user in graph.users(value.name)
                if graph.position(user) > position
                and self._before(name, self.ancestors.get(user, 0))
            ]
            if read:
                held = min(self.size(value.name), max(read))
                found.append((min(held, self._held_across(value.name)), value.name))
        return found

    def rows(self, name: str) -> int:
        """The smallest form an attention's made rows take on the way to the outputs: its
        result, or a value after it, before any later attention, that an output it reaches is
        made through. (A later attention reads every row: the rows must be kept until it has
        them, in a form made before it.)"""
        best = self.size(name)
        for out in dict.fromkeys(n for value in self.graph.outputs for n in refs_in(value)):
            if out not in self.ancestors or not (
                out == name or self._before(name, self.ancestors[out])
            ):
                continue
            d: str | None = out
            while d is not None and d != name and self._before(name, self.ancestors.get(d, 0)):
                if not [a for a in self._after(d, name) if a != name]:
                    best = min(best, self.size(d))
                d = self.idom.get(d)
        return best


def shortfall(graph: Graph, plan: ChunkPlan) -> str | None:
    """One line on why the plan misses its target and whose limit that is (NOTE [Whose
    limit]); None when it meets it."""
    if plan.met:
        return None
    bound = floor(graph)
    if bound.bytes >= plan.budget_bytes:
        if bound.bytes == plan.budget_bytes:
            said = f"the model's floor: {bound.words}, the target itself"
        else:
            said = f"the model's floor: {bound.words}, "
            said += f"{format_bytes(bound.bytes - plan.budget_bytes)} above the target"
        if estimate_agrees(plan.planned_peak_bytes, bound.bytes):
            return said
        # the plan is above the floor too: say whose limit holds the rest
        more = format_bytes(plan.planned_peak_bytes - bound.bytes)
        return f"{said}; the plan holds {more} more, {_above_floor(graph, plan)}"
    return _above_floor(graph, plan)


def _above_floor(graph: Graph, plan: ChunkPlan) -> str:
    """Whose limit keeps a plan above the model's floor: the time limit, or the tool's."""
    if plan.time_limited:
        further = "further"
        if plan.unlimited_peak_bytes is not None:
            further = f"to {format_bytes(plan.unlimited_peak_bytes)}"
        flag = "--max-slowdown"
        if plan.by_default:
            flag = "the default for a target out of reach; --max-slowdown to allow more"
        how = "estimated"
        if plan.measured_ratio is not None:
            how = f"measured {plan.measured_ratio:.2f}x"
        return (
            f"the time limit: loops that lower the peak {further} would make the forward "
            f"slower than {plan.max_slowdown:g}x the original ({how}; {flag})"
        )
    profile = estimate_plan(graph, plan.regions)
    label = profile.labels[profile.peak_index]
    for index, region in enumerate(plan.regions):
        if label in (region_label(index), region_label(index) + SETUP):
            return (
                f"the tool's limit: the peak is in the loop over {describe_lines(region, graph)}, "
                "at its smallest useful chunk"
            )
    name = label if label in graph else None
    if name is None:  # a module call returning: the peak is the values its caller holds
        return f"the tool's limit: the peak is where {label.removesuffix(' returns')} returns"
    node = graph[name]
    where = node.source.cite() if node.source is not None else node.name
    if dim_rule(node, graph) is None:
        return f"the tool's limit: the peak is at {where}, an op no loop can cut through"
    return f"the tool's limit: no loop through the peak at {where} lowered it"


def estimate_agrees(estimated: int, measured: int) -> bool:
    """Whether an estimate is the measured peak: within 1% of it, or 64 KiB."""
    return abs(measured - estimated) <= max(measured // 100, 64 << 10)


def estimate_gap(graph: Graph, estimated: int, measured: int, eager_stack: str) -> str | None:
    """Why the original's measured peak differs from its estimate, in one line, or None when
    they agree (within 1% or 64 KiB). The estimate is the captured graph's, each value freed at
    its last use: eager above it holds values longer (a Python name keeps them until it is
    rebound) or takes another path; eager below it skips what export builds (masks transformers
    builds only while exporting) or runs it in place. Both peaks are cited by their lines."""
    from analysis.capture import source_of  # the citation rule of the graph's own nodes

    if estimate_agrees(estimated, measured):
        return None
    gap = measured - estimated
    eager = source_of(eager_stack, Path(graph.model_file).resolve())
    at = eager.cite() if eager is not None else "a line outside the model"
    if gap > 0:
        return (
            f"the original measured {format_bytes(gap)} above its estimate: eager peaks at {at}, "
            "holding values longer than the graph does, or taking another path there"
        )
    profile = estimate_graph(graph)
    label = profile.labels[profile.peak_index]
    node = graph[label] if label in graph else None
    ours = node.source.cite() if node is not None and node.source is not None else label
    return (
        f"the original measured {format_bytes(-gap)} below its estimate: the graph export "
        f"captured peaks at {ours}, which eager skips or runs in place; eager peaks at {at}"
    )


def _bits(mask: int):
    """The positions set in a bit set, lowest first."""
    while mask:
        low = mask & -mask
        yield low.bit_length() - 1
        mask ^= low


__all__ = ["ModelFloor", "estimate_agrees", "estimate_gap", "floor", "output_bytes", "shortfall"]
