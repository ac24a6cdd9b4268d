"""The generated forward's liveness: which names each statement frees, and which sizes and
values are needed at all."""

from __future__ import annotations

import collections
from dataclasses import replace
from typing import Any

from analysis.errors import UserError
from analysis.ir import Graph
from analysis.loader import MODEL_MODULE_PREFIX
from analysis.program import Block, InputSize, ModuleCall, Return, SizeValue, Statement


def read_sizes(body: list[Any]) -> list[Any]:
    """The body without the sizes nothing reads (only annotations name them)."""
    while True:
        read = {name for item in body for name in _reads(item)}
        kept = [
            item
            for item in body
            if not (isinstance(item, Statement) and isinstance(item.expr, (InputSize, SizeValue)))
            or item.var in read
        ]
        if len(kept) == len(body):
            return kept
        body = kept


def needed(graph: Graph) -> set[str]:
    """Return the nodes whose results are used: everything else is dead code."""
    needed = set(graph.output_names())
    for node in reversed(graph.nodes):
        if node.name in needed or node.mutates is not None:
            needed.add(node.name)
            needed.update(node.refs())
    return needed


# ------------------------------------------------------------------ frees
def with_frees(items: list[Any], keep: set[str]) -> list[Any]:
    """Mark each bound name freed after its last use (names in `keep` excluded)."""
    last: dict[str, int] = {}
    bound: set[str] = set()
    for index, item in enumerate(items):
        for name in _reads(item):
            last[name] = index
        for name in _binds(item):
            bound.add(name)
            last.setdefault(name, index)
    out: list[Any] = []
    for index, item in enumerate(items):
        if isinstance(item, Block):
            inner_keep = keep | bound | _reads_after(items, index)
            item = replace(
                item,
                body=tuple(
                    with_frees(
                        list(item.body),
                        (inner_keep - _loop_locals(item)) | {"stop", *item.bounds.values()},
                    )
                ),
            )
        dead = tuple(sorted(n for n in bound if last.get(n) == index and n not in keep))
        following = items[index + 1] if index + 1 < len(items) else None
        if isinstance(following, Statement) and isinstance(following.expr, Return):
            dead = ()  # returning frees them
        if dead and not isinstance(item.expr if isinstance(item, Statement) else None, Return):
            item = replace(item, frees=dead)
        out.append(item)
    return out


def _reads_after(items: list[Any], index: int) -> set[str]:
    return {n for item in items[index + 1 :] for n in _reads(item)}


def _loop_locals(block: Block) -> set[str]:
    return {n for item in block.body for n in _binds(item)}


def _reads(item: Any) -> set[str]:
    if isinstance(item, Block):
        inner = {n for child in item.body for n in _reads(child)}
        return (inner - _loop_locals(item)) | set(item.reads)
    return set(item.reads)


def _binds(item: Any) -> set[str]:
    if isinstance(item, Block):
        return set()
    if isinstance(item.expr, ModuleCall):
        return set(item.expr.targets)
    return {item.var} if item.var else set()


# ------------------------------------------------------------------ outputs
def _class_of(spec: Any) -> Any:
    kind = getattr(spec, "type", None)
    if kind is collections.namedtuple:  # pytree keeps a namedtuple's class as the context
        kind = spec.context
    return kind


def output_classes(spec: Any) -> list[type]:
    """Return the output classes other than tuple, list and dict in an output structure."""
    if spec is None or spec.is_leaf():
        return []
    kind = _class_of(spec)
    found = [kind] if isinstance(kind, type) and kind not in (tuple, list, dict) else []
    return found + [c for child in spec.children() for c in output_classes(child)]


def check_output_classes(spec: Any, model_file: str) -> None:
    for kind in output_classes(spec):
        if kind.__module__.startswith(MODEL_MODULE_PREFIX):
            raise UserError(
                f"{model_file}: the model returns a {kind.__qualname__}, a class defined in the "
                "model file itself, which the generated module cannot import; define it in an "
                "importable module, or return a tuple or dict"
            )


__all__ = ["check_output_classes", "needed", "output_classes", "read_sizes", "with_frees"]
