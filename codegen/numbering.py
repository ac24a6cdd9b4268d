"""How the printers write whole numbers, so that module calls alike up to numbers share a class.

NOTE [One class per block]
Module calls of one original class whose forwards print the same up to whole numbers share a
generated class: the UNet's residual blocks of every width are one `ResBlock`. To find them,
each call's forward is printed once with every whole number recorded in order and written as
one marker (`Numbering(record=True)`); two calls are alike when their code prints the same.
For each class, each number is then compared across its instances: one they all share is
written as itself; one that differs (a width, a loop's planned rows) becomes an attribute, one
the original module already holds with those values (`self.heads`, or a standard layer's
`self.norm.num_channels`), else a constructor argument kept as `self.size_<k>`; and the forward
is printed once more with those (`Numbering(fill=...)`). A shape annotation with a number that
differs and no attribute holding it is left out, and so are comments that differ (a loop's
bytes: the module docstring lists every loop's figures). Constructors are shared the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: how a recorded number is written: the same for every number, so texts compare equal
MARK = "__number__"


@dataclass
class Numbering:
    """Writes whole numbers: as themselves; as `MARK`, recording them (`record`); or as `fill`
    gives them, in the order they are written. Numbers in shape annotations are kept apart,
    one list per annotation (`notes`, `fill_notes`), since annotations may differ between
    instances that share a class; a None in `fill_notes` leaves that annotation out."""

    record: bool = False
    fill: list[str] | None = None
    fill_notes: list[list[str] | None] | None = None
    #: the numbers of the code recorded, in order
    values: list[int] = field(default_factory=list)
    #: the numbers of each shape annotation recorded, in order
    notes: list[list[int]] = field(default_factory=list)
    #: set when the annotation being written is to be left out
    dropped: bool = False
    _count: int = 0
    _note: list[str] | None = None

    def begin_note(self) -> None:
        """A shape annotation starts: its numbers go apart."""
        self.dropped = False
        if self.record:
            self.notes.append([])
        elif self.fill_notes is not None:
            self._note = self.fill_notes[len(self.notes)]
            self.notes.append([])
            self.dropped = self._note is None

    def __call__(self, value: int, annotation: bool = False) -> str:
        if annotation:
            return self._annotation(value)
        if self.record:
            self.values.append(value)
            return MARK
        if self.fill is not None:
            self._count += 1
            return self.fill[self._count - 1]
        return repr(value)

    def _annotation(self, value: int) -> str:
        if self.record:
            self.notes[-1].append(value)
            return MARK
        if self.fill_notes is not None:
            index = len(self.notes[-1])
            self.notes[-1].append(value)
            if self._note is None or index >= len(self._note):
                self.dropped = True
                return MARK
            return self._note[index]
        return repr(value)


__all__ = ["MARK", "Numbering"]
