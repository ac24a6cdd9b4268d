"""One namespace for every identifier a generated forward uses."""

from __future__ import annotations

import builtins
import keyword
import re

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

    def reserve(self, name: str) -> None:
        self._taken.add(name)
