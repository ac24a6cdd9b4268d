"""Group the module calls a generated module keeps into classes, one class per kind of block
(NOTE [One class per block] in `codegen.numbering`)."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from typing import Any

import torch

from analysis.loader import MODEL_MODULE_PREFIX


@dataclass
class Number:
    """A number that differs between the instances of a class."""

    #: how the class reads it (`self.heads`, `self.norm.num_channels`, `self.size_0`)
    expr: str
    #: the constructor argument that sets it; None for a standard layer's own attribute
    arg: str | None
    #: its value for each instance, by module path
    values: dict[str, int]


@dataclass
class Instance:
    """One module call's forward, printed with its numbers recorded."""

    path: str
    original: type
    params: tuple[str, ...]
    #: the printed items (`codegen.body.Line` and `Loop`), numbers written as the marker
    items: list[Any]
    #: the numbers of the code, in the order written
    values: list[int]
    #: the numbers of each shape annotation, in order
    notes: list[list[int]]
    loops: bool


@dataclass
class GeneratedClass:
    """A generated class: the forward its instances share."""

    name: str
    #: the original's class
    original: type
    #: the instances, in call order
    instances: list[Instance]
    numbers: list[Number] = field(default_factory=list)
    #: the forward's source, once printed with the numbers filled in
    forward: str = ""
    #: the statements of its `__init__` when every instance builds its submodules alike
    builds: list[str] | None = None

    @property
    def paths(self) -> list[str]:
        return [i.path for i in self.instances]

    @property
    def base(self) -> str:
        """The torch.nn class it derives from: the container its original is (a `Sequential`
        subclass indexes its layers, `self[0]`), else Module."""
        for container in (torch.nn.Sequential, torch.nn.ModuleList, torch.nn.ModuleDict):
            if issubclass(self.original, container):
                return f"torch.nn.{container.__name__}"
        return "torch.nn.Module"

    @property
    def loops(self) -> bool:
        return self.instances[0].loops

    @property
    def doc(self) -> str:
        """The class docstring: what it is, and which modules it runs."""
        module = self.original.__module__
        origin = "the model file" if module.startswith(MODEL_MODULE_PREFIX) else module
        loops = ", with its chunk loops" if self.loops else ""
        text = f"{self.original.__name__} of {origin}{loops}: {', '.join(self.paths)}."
        return "\n    ".join(textwrap.wrap(text, 88))

    def arguments(self, path: str) -> list[tuple[str, int]]:
        """The constructor arguments of the instance at `path`."""
        return [(n.arg, n.values[path]) for n in self.numbers if n.arg]


def code_of(items: list[Any]) -> tuple:
    """What two forwards must print alike to share a class: their code, comments and shape
    annotations aside."""
    out = []
    for item in items:
        body = getattr(item, "body", None)
        out.append((item.head, code_of(body)) if body is not None else item.plain or item.code)
    return tuple(out)


def group_classes(
    instances: list[Instance], root: torch.nn.Module, reserved: set[str]
) -> tuple[dict[str, GeneratedClass], list[GeneratedClass]]:
    """Group module calls of one original class whose code prints alike up to numbers.
    Returns the class of each path, and the classes in the order first called. Raises
    ValueError for a module whose calls do not print alike."""
    groups: dict[tuple, list[Instance]] = {}
    keys: dict[str, tuple] = {}
    for instance in instances:
        key = (instance.original, instance.params, code_of(instance.items))
        if keys.setdefault(instance.path, key) != key:
            raise ValueError(f"module {instance.path} is called more than once with other code")
        members = groups.setdefault(key, [])
        if all(i.path != instance.path for i in members):
            members.append(instance)
    taken = set(reserved)
    of_path: dict[str, GeneratedClass] = {}
    classes = []
    for (original, _, _), members in groups.items():
        name = original.__name__
        count = 1
        while name in taken:
            count += 1
            name = f"{original.__name__}{count}"
        taken.add(name)
        found = GeneratedClass(name, original, members)
        classes.append(found)
        for instance in members:
            of_path[instance.path] = found
    return of_path, classes


def fill(
    recorded: list[list[int]],
    paths: list[str],
    modules: list[torch.nn.Module],
    numbers: dict[tuple, Number],
    constructor: bool = False,
) -> list[str]:
    """How each recorded number is written in the shared source: as itself where every
    instance has the same, else as the attribute holding it (added to `numbers`, by its
    values). In a constructor (`constructor`), only arguments hold numbers: no layer exists
    yet to read one from."""
    if len({len(r) for r in recorded}) != 1:
        raise ValueError("instances alike in code wrote different counts of numbers")
    out = []
    for column in zip(*recorded):
        if len(set(column)) == 1:
            out.append(repr(column[0]))
        else:
            out.append(_number(tuple(column), paths, modules, numbers, constructor).expr)
    return out


def fill_notes(
    notes: list[list[list[int]]],
    paths: list[str],
    modules: list[torch.nn.Module],
    numbers: dict[tuple, Number],
) -> list[list[str] | None]:
    """How the numbers of each shape annotation are written in the shared source: as
    themselves, by the attribute of the code holding them, or by an attribute the original
    modules hold with those values (`heads`, added to `numbers`: the constructor sets it);
    None (no annotation) where one has none, where the instances' annotations differ in their
    count of numbers, or where no attribute holds one that differs."""
    out: list[list[str] | None] = []
    for each in zip(*notes):
        if len({len(n) for n in each}) != 1:
            out.append(None)
            continue
        written: list[str] | None = []
        for column in zip(*each):
            values = tuple(column)
            if len(set(values)) == 1:
                written.append(repr(values[0]))
                continue
            if values not in numbers:
                taken = {n.arg for n in numbers.values()}
                expr, arg = _held(values, modules, taken, layers=True)
                if expr.startswith("self.size_"):  # no attribute of the original's
                    written = None
                    break
                numbers[values] = Number(expr, arg, dict(zip(paths, values)))
            written.append(numbers[values].expr.removeprefix("self."))
        out.append(written)
    return out


def _number(
    values: tuple[int, ...],
    paths: list[str],
    modules: list[torch.nn.Module],
    numbers: dict[tuple, Number],
    constructor: bool,
) -> Number:
    key: tuple = values
    if constructor and values in numbers and numbers[values].arg is None:
        key = ("init", *values)  # a layer's attribute: not there yet in `__init__`
    if key not in numbers:
        taken = {n.arg for n in numbers.values()}
        expr, arg = _held(values, modules, taken, layers=not constructor)
        numbers[key] = Number(expr, arg, dict(zip(paths, values)))
    return numbers[key]


def _held(
    values: tuple[int, ...], modules: list[torch.nn.Module], args: set[str | None], layers: bool
) -> tuple[str, str | None]:
    """How the class reads a number, and the constructor argument that sets it: an int
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


def common_comments(shared: list[Any], each: list[list[Any]]) -> None:
    """Leave out, in the shared items, the comments and the shape annotations that differ
    between the instances other than by a number the class names."""
    for position, item in enumerate(shared):
        others = [items[position] for items in each]
        if any(other.comments != others[0].comments for other in others):
            item.comments = []
        if getattr(item, "plain", "") and any(o.code != others[0].code for o in others):
            item.code = item.plain
        body = getattr(item, "body", None)
        if body is not None:
            common_comments(body, [other.body for other in others])


__all__ = [
    "GeneratedClass",
    "Instance",
    "Number",
    "code_of",
    "common_comments",
    "fill",
    "fill_notes",
    "group_classes",
]
