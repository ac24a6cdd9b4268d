"""Group the module calls a generated module keeps into classes, one class per kind of block.

NOTE [One class per block]
Calls of one original class whose forwards print the same up to whole numbers share a class:
the UNet's residual blocks of every width are one `ResBlock`. A number that differs between
the instances (a width, a loop's planned rows) becomes an attribute: one the original module
already has with those values (`self.heads`, or a layer's `self.norm.num_channels`, which a
sharded layer keeps up to date), else a constructor argument kept as `self.size_<k>`. Type
annotations that differ name the same attributes, or are left out; comments that differ (a
loop's bytes) are left out, since the module docstring lists every loop's figures.
"""

from __future__ import annotations

import io
import re
import textwrap
import tokenize
from dataclasses import dataclass, field

import torch

from analysis.loader import MODEL_MODULE_PREFIX

#: a shape annotation the printer writes: "f32[1, seq, 256]"
_ANNOTATION = re.compile(r"^(?P<quote>['\"])(?P<dtype>\w+)\[(?P<dims>.*)\](?P=quote)$")


@dataclass
class Number:
    """A number that differs between the instances of a class."""

    #: how the forward reads it (`self.heads`, `self.size_0`)
    expr: str
    #: the constructor argument that sets it, for a number the original does not hold
    arg: str | None
    #: its value for each instance, by module path
    values: dict[str, int]


@dataclass
class GeneratedClass:
    """A generated class: the forward its instances share."""

    name: str
    #: the original's class
    original: type
    forward: str
    #: the module paths it runs, in call order
    paths: list[str]
    #: whether its forward has chunk loops
    loops: bool
    numbers: list[Number] = field(default_factory=list)
    #: the statements of its `__init__` when every instance builds the same submodules
    builds: list[str] | None = None

    @property
    def doc(self) -> str:
        """The class docstring: what it is, and which modules it runs."""
        module = self.original.__module__
        origin = "the model file" if module.startswith(MODEL_MODULE_PREFIX) else module
        loops = ", with its chunk loops" if self.loops else ""
        text = f"{self.original.__name__} of {origin}{loops}: {', '.join(self.paths)}."
        return "\n    ".join(textwrap.wrap(text, 88))

    def constructed(self, path: str) -> str:
        """`ResBlock(size_0=320)`: the expression that builds the instance at `path`."""
        args = ", ".join(f"{n.arg}={n.values[path]}" for n in self.numbers if n.arg)
        return f"{self.name}({args})"


@dataclass
class _Instance:
    path: str
    forward: str
    loops: bool
    tokens: list[tokenize.TokenInfo]


def group_classes(
    calls: list[tuple[str, type, str, bool]], root: torch.nn.Module, reserved: set[str]
) -> tuple[dict[str, GeneratedClass], list[GeneratedClass]]:
    """Group (path, original class, forward source, has loops) by class (NOTE [One class per
    block]). Returns the class of each path, and the classes in the order first called."""
    groups: dict[tuple, list[_Instance]] = {}
    by_path: dict[str, tuple] = {}
    for path, original, forward, loops in calls:
        tokens = list(tokenize.generate_tokens(io.StringIO(forward).readline))
        key = (original, tuple(_shape(t) for t in tokens))
        if path in by_path and by_path[path] != key:
            # a module called twice with different code: the calls' forwards differ
            raise ValueError(f"module {path} is called more than once with different code")
        by_path[path] = key
        instances = groups.setdefault(key, [])
        if all(i.path != path for i in instances):
            instances.append(_Instance(path, forward, loops, tokens))
    taken = set(reserved)
    of_path: dict[str, GeneratedClass] = {}
    classes = []
    for (original, _), instances in groups.items():
        name = original.__name__
        count = 1
        while name in taken:
            count += 1
            name = f"{original.__name__}{count}"
        taken.add(name)
        modules = [root.get_submodule(i.path) for i in instances]
        forward, numbers = _shared(instances, modules)
        found = GeneratedClass(
            name, original, forward, [i.path for i in instances], instances[0].loops, numbers
        )
        classes.append(found)
        for instance in instances:
            of_path[instance.path] = found
    return of_path, classes


def _shape(token: tokenize.TokenInfo) -> tuple[int, str]:
    """What must be equal for two forwards to share a class: every token but whole numbers,
    shape annotations and comments."""
    if token.type == tokenize.NUMBER and token.string.isdigit():
        return (token.type, "")
    if token.type == tokenize.STRING and _ANNOTATION.match(token.string):
        return (token.type, "")
    if token.type == tokenize.COMMENT:
        return (token.type, "")
    return (token.type, token.string)


def _shared(
    instances: list[_Instance], modules: list[torch.nn.Module]
) -> tuple[str, list[Number]]:
    """The forward the instances share, with the numbers that differ as attributes."""
    numbers: dict[tuple[int, ...], Number] = {}
    text = parameterized([i.forward for i in instances], [i.path for i in instances], modules, numbers)
    assert text is not None, "instances grouped by token shape differ in shape"
    return text, list(numbers.values())


def parameterized(
    texts: list[str],
    paths: list[str],
    modules: list[torch.nn.Module],
    numbers: dict[tuple[int, ...], Number],
    constructor: bool = False,
) -> str | None:
    """One source for the instances' `texts`: whole numbers that differ read as attributes
    (added to `numbers`, by their values), annotations that differ name those attributes or
    are left out, comments that differ are left out. None when they differ in more."""
    if len(set(texts)) == 1:
        return texts[0]
    streams = [list(tokenize.generate_tokens(io.StringIO(t).readline)) for t in texts]
    if len({tuple(_shape(t) for t in stream) for stream in streams}) != 1:
        return None

    def number(values: tuple[int, ...]) -> Number:
        key: tuple = values
        if constructor and values in numbers and numbers[values].arg is None:
            key = ("init", *values)  # in `__init__` no layer exists yet to read it from
        if key not in numbers:
            taken = {n.arg for n in numbers.values()}
            expr, arg = _held(values, modules, taken, layers=not constructor)
            numbers[key] = Number(expr, arg, dict(zip(paths, values)))
        return numbers[key]

    first = streams[0]
    edits: list[tuple[tuple[int, int], tuple[int, int], str]] = []
    dropped: set[int] = set()
    annotations = []
    for index, tokens in enumerate(zip(*streams)):
        strings = [t.string for t in tokens]
        if len(set(strings)) == 1:
            continue
        token = tokens[0]
        if token.type == tokenize.NUMBER:
            edits.append((token.start, token.end, number(tuple(int(t) for t in strings)).expr))
        elif token.type == tokenize.COMMENT:
            dropped.add(token.start[0])
        else:
            annotations.append((index, strings))
    for index, strings in annotations:  # after the code: they only name its attributes
        token, colon = first[index], first[index - 1]
        written = _annotation(strings, numbers)
        if written is not None:
            edits.append((token.start, token.end, written))
        elif colon.string == ":":
            edits.append((colon.start, token.end, ""))
    lines = texts[0].splitlines(keepends=True)
    for start, end, text in sorted(edits, reverse=True):
        assert start[0] == end[0], "an edit spans lines"
        line = lines[start[0] - 1]
        lines[start[0] - 1] = line[: start[1]] + text + line[end[1] :]
    return "".join(line for n, line in enumerate(lines, 1) if n not in dropped)


def _annotation(texts: list[str], numbers: dict[tuple[int, ...], Number]) -> str | None:
    """The shared annotation: dims that differ named by the attribute holding them
    (`f32[1, heads, seq]`), or None when one is not held, or differs in more."""
    parsed = [_ANNOTATION.match(t) for t in texts]
    if any(p is None for p in parsed) or len({p["dtype"] for p in parsed}) != 1:
        return None
    dims = [p["dims"].split(", ") for p in parsed]
    if len({len(d) for d in dims}) != 1:
        return None
    out = []
    for column in zip(*dims):
        if len(set(column)) == 1:
            out.append(column[0])
        elif all(c.isdigit() for c in column) and tuple(int(c) for c in column) in numbers:
            out.append(numbers[tuple(int(c) for c in column)].expr.removeprefix("self."))
        else:
            return None
    quote = parsed[0]["quote"]
    return f'{quote}{parsed[0]["dtype"]}[{", ".join(out)}]{quote}'


def _held(
    values: tuple[int, ...], modules: list[torch.nn.Module], args: set[str | None], layers: bool
) -> tuple[str, str | None]:
    """How the forward reads a number, and the constructor argument that sets it: an int
    attribute every original instance holds with exactly these values (`self.heads`, an
    argument), a standard layer's (`self.norm.num_channels`, none: the layer has it), else a
    new argument `self.size_<k>`."""

    def ints(module: torch.nn.Module) -> dict[str, int]:
        return {
            k: v
            for k, v in vars(module).items()
            if type(v) is int and not k.startswith("_") and k.isidentifier()
        }

    for name in ints(modules[0]):
        if name not in args and [ints(m).get(name) for m in modules] == list(values):
            return f"self.{name}", name
    for child_name, child in modules[0].named_children() if layers else ():
        if not child_name.isidentifier() or not type(child).__module__.startswith("torch.nn."):
            continue
        for name in ints(child):
            found = [ints(getattr(m, child_name, torch.nn.Module())).get(name) for m in modules]
            if found == list(values):
                return f"self.{child_name}.{name}", None
    count = 0
    while f"size_{count}" in args:
        count += 1
    return f"self.size_{count}", f"size_{count}"


__all__ = ["GeneratedClass", "Number", "group_classes", "parameterized"]
