"""One namespace for every identifier a generated forward uses."""

from __future__ import annotations

import builtins
import keyword
import re

from analysis.ir import Graph, Node
from analysis.ops import info

#: names the generated code itself relies on
RESERVED = {"self", "torch", "start", "stop", "math"}


class Namespace:
    """Hand out clean, unique, deterministic Python identifiers."""

    def __init__(self) -> None:
        self._taken: set[str] = set(RESERVED)
        self._count: dict[str, int] = {}

    def create(self, base: str) -> str:
        """Return a fresh identifier made from `base`: cleaned, not a keyword or builtin."""
        name = re.sub(r"\W+", "_", base).strip("_").lower() or "value"
        if name[0].isdigit():
            name = f"v_{name}"
        if keyword.iskeyword(name) or hasattr(builtins, name):
            name = f"{name}_"
        candidate = name
        while candidate in self._taken:
            self._count[name] = self._count.get(name, 0) + 1
            candidate = f"{name}_{self._count[name]}"
        self._taken.add(candidate)
        return candidate


def value_name(node: Node, graph: Graph) -> str:
    """Return the base of a value's name: its module path and op (`blocks_0_attn_softmax`),
    or the module path alone for ops named after their module (a Linear's output); an
    element of a tuple adds its index."""
    target = node.target
    op = getattr(getattr(target, "overloadpacket", None), "__name__", None)
    op = (op or getattr(target, "__name__", "value")).strip("_")
    if op == "getitem":
        return f"{value_name(graph[node.args[0].name], graph)}_{node.args[1]}"
    if info(target).names_module and node.module_path:
        return node.module_path
    return f"{node.module_path}_{op}" if node.module_path else op


__all__ = ["Namespace", "value_name"]
