"""Cyclic shifts (NOTE [Cyclic shifts]): Swin rolls the image by half a window before the
shifted windows' attention and back after it. A loop over rows of windows runs straight
through both rolls: the values before the first roll and after the roll back are its rows moved
on by the shift, read and written round the image's end; each roll in the loop runs along its
other dim only."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from analysis.capture import capture
from analysis.fastpath import eager_attention
from analysis.loader import load_model_file
from analysis.plan import Region
from analysis.search import Conflict, grow, propagate
from codegen.cli import main

MODEL = """
    import torch
    import torch.nn.functional as F
    from torch import nn

    WINDOW, SHIFT = 4, 2

    class Block(nn.Module):
        def __init__(self, width=32, heads=2):
            super().__init__()
            self.heads = heads
            self.norm = nn.LayerNorm(width)
            self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
            self.fc1, self.fc2 = nn.Linear(width, 4 * width), nn.Linear(4 * width, width)

        def attend(self, x):
            b, height, width, c = x.shape
            shifted = torch.roll(x, shifts=(-SHIFT, -SHIFT), dims=(1, 2))
            windows = shifted.view(b, height // WINDOW, WINDOW, width // WINDOW, WINDOW, c)
            windows = windows.permute(0, 1, 3, 2, 4, 5).reshape(-1, WINDOW * WINDOW, c)
            qkv = self.qkv(windows).reshape(windows.size(0), -1, 3, self.heads, c // self.heads)
            q, k, v = qkv.permute(2, 0, 3, 1, 4)
            out = F.scaled_dot_product_attention(q, k, v)
            out = self.proj(out.transpose(1, 2).reshape(-1, WINDOW * WINDOW, c))
            out = out.view(b, height // WINDOW, width // WINDOW, WINDOW, WINDOW, c)
            out = out.permute(0, 1, 3, 2, 4, 5).reshape(b, height, width, c)
            return torch.roll(out, shifts=(SHIFT, SHIFT), dims=(1, 2))

        def forward(self, x):
            x = x + self.attend(self.norm(x))
            return x + self.fc2(F.gelu(self.fc1(x)))

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Linear(3, 32)
            self.block = Block()

        def forward(self, x):
            return self.block(self.embed(x))

    def make_model():
        torch.manual_seed(0)
        return Model().eval()

    def make_inputs():
        return (torch.randn(1, 32, 32, 3, generator=torch.Generator().manual_seed(0)),)

    def dynamic_shapes():
        h, w = torch.export.Dim("h4", min=2, max=64), torch.export.Dim("w4", min=2, max=64)
        return {"x": {1: 4 * h, 2: 4 * w}}
"""


#: the block on tokens, as HF Swin's: the image is a view of them for the attention alone
TOKENS = MODEL.replace(
    """
        def forward(self, x):
            x = x + self.attend(self.norm(x))
""",
    """
        def forward(self, x):
            b, height, width, c = x.shape
            x = x.reshape(b, height * width, c)
            image = self.norm(x).view(b, height, width, c)
            x = x + self.attend(image).reshape(b, height * width, c)
""",
)


def _model(tmp_path: Path, source: str = MODEL) -> Path:
    assert source.count("def forward(self, x):") == 2
    path = tmp_path / "model.py"
    path.write_text(textwrap.dedent(source))
    return path


def _stretch(graph) -> tuple[list[str], str, list[str], str, str]:
    """The graph's names, the norm before the first roll, the rolls, the add after the roll
    back, and the attention."""
    names = [node.name for node in graph.nodes]
    norm = next(n for n in names if n.startswith("layer_norm"))
    rolls = [n for n in names if n.startswith("roll")]
    add = next(n for n in names[names.index(rolls[1]) :] if n.startswith("add"))
    attention = next(n for n in names if n.startswith("scaled_dot_product"))
    return names, norm, rolls, add, attention


def test_a_loop_over_rows_of_windows_runs_through_both_rolls(tmp_path: Path) -> None:
    """From the norm before the roll to the residual add after the roll back: one region, the
    windows at the loop's own rows, the norm and the add two image rows on (half a window),
    and no value the rolls did not move shifted."""
    graph = eager_attention(capture(load_model_file(_model(tmp_path))))
    names, norm, rolls, add, attention = _stretch(graph)
    span = tuple(names[names.index(norm) : names.index(add) + 1])
    region = propagate(graph, span, attention, 0)
    assert isinstance(region, Region), region
    assert {norm, *rolls, add} <= set(region.loop_dims), region.loop
    shifts = dict(region.shifts)
    assert shifts[norm] == shifts[add] == 2 and rolls[0] not in shifts, region.shifts
    assert attention not in shifts


def test_a_loop_that_cannot_shift_its_rows_starts_after_the_roll(tmp_path: Path) -> None:
    """On tokens, the norm before the first roll and the add after the roll back are rows of
    tokens, which a shift cannot move by whole rows of the image: the loop through the rolls
    fails, naming them as the boundaries to move, and the stretch between them still forms a
    loop over rows of windows, reading the rolled image as any value made before it (HF Swin's
    shifted blocks lost theirs when the failure ended the search)."""
    graph = eager_attention(capture(load_model_file(_model(tmp_path, TOKENS))))
    names, norm, rolls, add, attention = _stretch(graph)
    span = tuple(names[names.index(norm) : names.index(add) + 1])
    conflict = propagate(graph, span, attention, 0)
    assert isinstance(conflict, Conflict), conflict
    assert (conflict.start_after, conflict.end_before) == ((rolls[0],), (rolls[1],)), conflict
    regions = grow(graph, names, names.index(norm), names.index(add), attention, 0)
    assert regions and all(not region.shifts for region in regions), regions
    assert all(not set(rolls) & set(region.span) for region in regions), regions
    assert any(attention in region.loop_dims for region in regions), regions


def test_a_loop_through_the_rolls_is_offered_beside_those_past_them(tmp_path: Path) -> None:
    """Where the loop through the rolls forms, the stretches starting after the first roll or
    ending before the roll back are offered too: one through the rolls may hold more (each
    chunk reads its rows round the image's end), so selection weighs them all (torchvision
    Swin's shifted blocks: 3.5 MiB past the first roll, 4.7 MiB through it)."""
    graph = eager_attention(capture(load_model_file(_model(tmp_path))))
    names, norm, rolls, add, attention = _stretch(graph)
    regions = grow(graph, names, names.index(norm), names.index(add), attention, 0)
    through = [set(rolls) & set(region.loop_dims) for region in regions]
    assert set(rolls) in through and set() in through, [r.loop for r in regions]


def test_a_roll_of_the_chunked_dim_alone_is_followed(tmp_path: Path) -> None:
    """A roll along one dim: the rule moves every dim, shifts the rolled one, and runs the
    roll by 0 on a chunk along it; a roll of the flattened tensor mixes every dim."""
    from analysis.ops import dim_rule

    graph = eager_attention(capture(load_model_file(_model(tmp_path))))
    roll = next(node for node in graph.nodes if node.name.startswith("roll"))
    rule = dim_rule(roll, graph)
    assert rule is not None and [rule.shift_of(d) for d in range(4)] == [0, -2, -2, 0]
    assert dict(rule.swapped(1)) == {1: [-2], 2: [2]}  # on a chunk of rows: the columns only
    assert all(rule.input_dim(d, 0) == d for d in range(4))


def test_the_rolled_block_emits_one_loop_that_wraps_and_verifies(tmp_path: Path, capsys) -> None:
    """Emitted, the block's attention runs in one loop over rows of windows through both
    rolls; the chunk whose rows pass the image's end reads and writes them in two pieces. It
    verifies at the example's size and another, and measures its estimate."""
    path = _model(tmp_path)
    out = tmp_path / "out"
    args = ["emit", str(path), "--out", str(out), "--memory-ratio", "0.1", "--max-slowdown", "100"]
    assert main(args) == 0  # verified
    line = capsys.readouterr().out
    source = (out / "model.py").read_text()
    loops = source.split("for start in range(")[1:]
    rolled = [loop for loop in loops if "torch.roll(" in loop]
    assert rolled, source
    loop = rolled[0].split("\n        return", 1)[0]
    assert "self.block.qkv(" in loop and "self.block.proj(" in loop, source
    assert "torch.roll(block_norm, [-2], [2])" in loop, source  # the columns only
    assert "_wrapped(x, 1, 4 * start + 2, 4 * stop + 2)" in loop, source  # two rows on
    assert "_write_wrapped(" in loop, source
    assert "def _wrapped(" in source and "def _write_wrapped(" in source, source
    planned = line.split("estimated peak ", 1)[1].split(" for ", 1)[0].split(" -> ")[1]
    assert line.split("measured ", 1)[1].split(" -> ")[1].split()[:2] == planned.split(), line


def test_an_output_overwrites_a_value_only_at_the_rows_it_read(tmp_path: Path) -> None:
    """A loop may write its output over a value it reads for the last time only where each
    chunk writes the bytes it read: both unmoved, or moved by as many elements. Written two
    rows on over a value read at the loop's own rows, a chunk would overwrite rows the next one
    still reads (the attention's windows, under the output of timm Swin's shifted block)."""
    from analysis.loops import _same_shift
    from analysis.program import Span

    graph = eager_attention(capture(load_model_file(_model(tmp_path))))
    image = next(n.name for n in graph.nodes if n.name.startswith("linear"))  # (1, 32, 32, 32)
    windows = next(n.name for n in graph.nodes if n.name.startswith("reshape"))  # (64, 16, 32)
    assert _same_shift(graph, image, 1, {0}, image, 1, Span())
    assert _same_shift(graph, image, 1, {2}, image, 1, Span(shift=2))
    assert not _same_shift(graph, image, 1, {0}, image, 1, Span(shift=2))
    assert not _same_shift(graph, image, 1, {0, 2}, image, 1, Span(shift=2))
    # two windows of 16 tokens are as many elements as an image row at 32 px wide only
    assert not _same_shift(graph, windows, 0, {2}, image, 1, Span(shift=1))


@pytest.mark.default_time_limit
def test_a_plan_above_the_floor_is_made_again_without_the_time_limit(
    tmp_path: Path, monkeypatch
) -> None:
    """A plan made within the default time limit that misses its target and stays above the
    model's floor is made again without the limit, even where the limit turned no loop away
    (stages chosen within it may go another way: timm Swin's); at its floor, it is not."""
    import analysis.pipeline as pipeline
    from analysis.select import Target
    from analysis.shortfall import ModelFloor

    path = _model(tmp_path)
    made: list[float] = []
    planned = pipeline._planned

    def turned_nothing_away(loaded, graph, target, progress):
        found = planned(loaded, graph, target, progress)
        made.append(target.max_slowdown)
        return found.relabelled(time_limited=False)

    monkeypatch.setattr(pipeline, "_planned", turned_nothing_away)
    result = pipeline.plan_model(path, Target(ratio=0.1))
    assert made == [1.05, float("inf")]
    assert result.unlimited is not None and result.plan.time_limited and result.plan.by_default
    assert result.plan.unlimited_peak_bytes < result.plan.planned_peak_bytes

    made.clear()
    at_the_floor = ModelFloor(result.plan.planned_peak_bytes, "the plan's own peak")
    monkeypatch.setattr(pipeline, "floor", lambda graph: at_the_floor)
    result = pipeline.plan_model(path, Target(ratio=0.1))
    assert made == [1.05] and result.unlimited is None and not result.plan.time_limited
