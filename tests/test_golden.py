"""Every committed file in generated/ equals a fresh emit, and is stable under black."""

from __future__ import annotations

import difflib
from pathlib import Path

import black
import pytest

from analysis.select import Target
from codegen.generate import generate
from tests.conftest import EXAMPLES, GENERATED

REFRESH = "python scripts/regenerate.py"

pytestmark = pytest.mark.default_time_limit  # as `scripts/regenerate.py` plans


@pytest.fixture(autouse=True)
def _untimed(monkeypatch) -> None:
    """As `scripts/regenerate.py` emits: the cost model's plan, not one timed on this machine."""
    import codegen.generate

    monkeypatch.setattr(codegen.generate, "TIME_UNLIMITED", False)


def _examples() -> list[Path]:
    return sorted(EXAMPLES.glob("*.py"))


@pytest.mark.parametrize("example", _examples(), ids=lambda p: p.stem)
def test_generated_matches_fresh_emit(example: Path, gpt_generated) -> None:
    committed = GENERATED / f"{example.stem}.py"
    assert committed.exists(), f"{committed} is missing; run `{REFRESH}`"
    if example.stem == "gpt":
        _, emitted = gpt_generated
    else:
        _, emitted = generate(example, Target(ratio=0.2), "--memory-ratio 0.2")
    on_disk = committed.read_text()
    if emitted.source != on_disk:
        diff = "".join(
            difflib.unified_diff(
                on_disk.splitlines(keepends=True),
                emitted.source.splitlines(keepends=True),
                fromfile=f"{committed} (committed)",
                tofile=f"{committed} (fresh emit)",
            )
        )
        pytest.fail(f"{committed} is stale; refresh with `{REFRESH}`\n{diff}")


@pytest.mark.parametrize("path", sorted(GENERATED.glob("*.py")), ids=lambda p: p.stem)
def test_generated_is_black_stable(path: Path) -> None:
    source = path.read_text()
    assert black.format_str(source, mode=black.Mode()) == source


def test_emission_is_deterministic(gpt_generated) -> None:
    planned, emitted = gpt_generated
    again = generate(EXAMPLES / "gpt.py", Target(ratio=0.2), "--memory-ratio 0.2")[1]
    assert again.source == emitted.source


def test_a_loop_header_opens_the_loop_not_the_values_made_before_it() -> None:
    """Values of a loop's stretch made outside it, before anything of the loop's own, read as
    the code before the loop they are: the loop's header comes after them, right above what
    the loop itself needs (its copies, its chunk size), and nothing is marked "Hoisted"."""
    source = (GENERATED / "gpt.py").read_text()
    lines = [line.strip() for line in source.splitlines()]
    header = lines.index("# Chunk loop (gpt.py:35-39), over `seq`.")
    made = lines.index('v: "f32[1, 8, seq, 32]" = view.transpose(1, 2)')
    assert made < header, (made, header)
    assert lines[header + 4].startswith("# Each copied contiguous once"), lines[header : header + 5]
    assert "Hoisted" not in source
