"""Chunk sizes computed at run time from a memory budget (NOTE [Run-time chunk sizes]): one
module, emitted once, stays within its budget at every length, and matches the original."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from analysis.capture import capture
from analysis.loader import load_model_file
from codegen.measure import measure_peak
from analysis.memory import estimate_plan, loop_peak
from analysis.select import Target, make_plan, plan_for_range
from analysis.symbolic import plan_formulas, rehinted
from codegen import cli
from codegen.verify import compare, import_source, instantiate

BLOCKS = """
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv = nn.Linear(32, 96)
            self.proj = nn.Linear(32, 32)
            self.fc = nn.Linear(32, 256)
            self.out = nn.Linear(256, 32)

        def forward(self, x):
            q, k, v = self.qkv(x).split(32, dim=-1)
            q = q.view(1, -1, 4, 8).transpose(1, 2)
            k = k.view(1, -1, 4, 8).transpose(1, 2)
            v = v.view(1, -1, 4, 8).transpose(1, 2)
            att = ((q @ k.transpose(-1, -2)) * 0.35).softmax(dim=-1)
            x = x + self.proj((att @ v).transpose(1, 2).reshape(1, -1, 32))
            return x + self.out(torch.relu(self.fc(x)))

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.Sequential(Block(), Block())

        def forward(self, x):
            return self.blocks(x)

    def make_model():
        torch.manual_seed(0)
        return Model()

    def make_inputs():
        return (torch.randn(1, 128, 32, generator=torch.Generator().manual_seed(0)),)

    def dynamic_shapes():
        return {"x": {1: torch.export.Dim("seq", min=2, max=1024)}}
"""

BUDGET = 3 * 2**20
LENGTHS = (40, 128, 300, 512, 1024)  # up to 8x the example's 128


def _emit_blocks(tmp_path_factory, *flags: str) -> tuple[Path, Path]:
    """BLOCKS and the module `emit` writes for it with `flags`."""
    root = tmp_path_factory.mktemp("blocks")
    path = root / "blocks.py"
    path.write_text(textwrap.dedent(BLOCKS))
    out = root / "out"
    assert cli.main(["emit", str(path), "--out", str(out), *flags]) == 0
    return path, out / "blocks.py"


@pytest.fixture(scope="module")
def emitted(tmp_path_factory) -> tuple[Path, Path]:
    # out of reach at the example's length: its loops are chased, as the other tests' are
    # (module-scoped, it runs before `chase_the_target`)
    return _emit_blocks(tmp_path_factory, "--memory-budget", str(BUDGET), "--max-slowdown", "none")


def _module(emitted, **kwargs):
    path, generated = emitted
    loaded = load_model_file(path)
    module, _ = import_source(generated.read_text())
    chunked = instantiate(module, loaded.module)
    for key, value in kwargs.items():
        setattr(chunked, key, value)
    return loaded.module, chunked


def test_one_module_stays_within_its_budget_at_every_length(emitted) -> None:
    original, chunked = _module(emitted)
    assert chunked.memory_budget == BUDGET
    for n in LENGTHS:
        x = torch.randn(1, n, 32, generator=torch.Generator().manual_seed(n))
        with torch.no_grad():
            assert compare(original(x), chunked(x)) is None, n
        peak = measure_peak(chunked, (x,))
        assert peak <= 1.10 * BUDGET, (n, peak / 2**20)
    # the original at 8x the example length is far above the budget: the loops did the work
    assert measure_peak(original, (x,)) > 4 * BUDGET


def test_the_budget_is_an_attribute_that_can_change_after_loading(emitted) -> None:
    _, chunked = _module(emitted)
    x = torch.randn(1, 1024, 32)
    roomy = measure_peak(chunked, (x,))
    chunked.memory_budget = BUDGET // 2
    tight = measure_peak(chunked, (x,))
    assert tight < roomy
    assert tight <= 1.10 * max(BUDGET // 2, _floor(emitted, 1024))


def test_the_generated_formula_reads_plainly(emitted) -> None:
    source = emitted[1].read_text()
    assert "def __init__(self, memory_budget: int | str | None = 3145728)" in source
    code = " ".join(source.split())
    assert "= _rows( self._chunking.budget, " in code  # the budget the model forward set
    assert "for start in range(0, seq, chunk" in code
    assert "if x.is_cpu else seq" in code  # GPUs take all the rows that fit
    assert "# Rows per chunk: the most whose bytes (fixed, then per row) fit the budget" in source


def test_without_a_budget_the_chunks_follow_the_length(tmp_path: Path) -> None:
    path = tmp_path / "blocks.py"
    path.write_text(textwrap.dedent(BLOCKS))
    out = tmp_path / "out"
    assert cli.main(["emit", str(path), "--out", str(out), "--memory-ratio", "0.3"]) == 0
    loaded = load_model_file(path)
    module, _ = import_source((out / "blocks.py").read_text())
    chunked = instantiate(module, loaded.module)
    assert chunked.memory_budget is None
    peaks = {}
    for n in (64, 128, 512, 1024):
        x = torch.randn(1, n, 32)
        with torch.no_grad():
            assert compare(loaded.module(x), chunked(x)) is None
        peaks[n] = measure_peak(chunked, (x,))
        if n >= 128:  # the example's length and longer: the share of the original holds
            assert peaks[n] <= 0.35 * measure_peak(loaded.module, (x,)), n
    # shorter inputs keep the example's budget (and its larger, faster chunks)
    assert peaks[64] <= peaks[128]


def test_formulas_agree_with_the_estimate_at_other_lengths(tmp_path: Path) -> None:
    path = tmp_path / "blocks.py"
    path.write_text(textwrap.dedent(BLOCKS))
    graph = capture(load_model_file(path))
    plan = make_plan(graph, Target(ratio=0.2))
    formulas = plan_formulas(graph, plan)
    assert formulas is not None and any(formulas.regions)
    for n in (96, 700):
        (symbol,) = formulas.symbols
        longer = rehinted(graph, {symbol: n})
        for index, formula in enumerate(formulas.regions):
            if formula is None:
                continue
            sized = tuple(r.with_chunk_size(16) for r in plan.regions)
            actual = loop_peak(estimate_plan(longer, sized), index)
            assert abs(formula.at({symbol: n}, 16) - actual) <= 0.02 * actual + 64


def _floor(emitted, n: int) -> int:
    """The emitted plan's estimated peak at length n with every chunk at one row: no budget
    goes lower."""
    graph = capture(load_model_file(emitted[0]))
    plan = plan_for_range(graph, Target(budget_bytes=BUDGET))
    longer = rehinted(graph, {graph.symbols[0].symbol: n})
    return estimate_plan(longer, tuple(r.with_chunk_size(1) for r in plan.regions)).peak


IMAGE = """
    import torch
    from torch import nn

    class SpatialAttention(nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv = nn.Conv2d(8, 24, 1)
            self.out = nn.Conv2d(8, 8, 1)

        def forward(self, x):
            b, c, h, w = x.shape
            q, k, v = self.qkv(x).flatten(2).transpose(1, 2).split(8, dim=-1)
            att = (q @ k.transpose(-1, -2) * 0.35).softmax(-1)
            y = (att @ v).transpose(1, 2).reshape(b, c, h, w)
            return x + self.out(y)

    def make_model():
        torch.manual_seed(0)
        return SpatialAttention()

    def make_inputs():
        return (torch.randn(1, 8, 16, 16, generator=torch.Generator().manual_seed(0)),)

    def dynamic_shapes():
        return {"x": {2: torch.export.Dim("height", min=2, max=64),
                      3: torch.export.Dim("width", min=2, max=64)}}
"""


def test_two_dynamic_dims_size_their_chunks_too(tmp_path: Path) -> None:
    path = tmp_path / "image.py"
    path.write_text(textwrap.dedent(IMAGE))
    out = tmp_path / "out"
    budget = 2 * 2**20
    assert cli.main(["emit", str(path), "--out", str(out), "--memory-budget", str(budget)]) == 0
    source = (out / "image.py").read_text()
    assert "_rows(" in source and "height * width" in source.replace(
        "width * height", "height * width"
    )
    loaded = load_model_file(path)
    module, _ = import_source(source)
    chunked = instantiate(module, loaded.module)
    for h, w in ((16, 16), (40, 24), (48, 48)):
        x = torch.randn(1, 8, h, w)
        with torch.no_grad():
            assert compare(loaded.module(x), chunked(x)) is None, (h, w)
        assert measure_peak(chunked, (x,)) <= 1.10 * budget, (h, w)
    assert measure_peak(loaded.module, (x,)) > 4 * budget


def test_plan_shows_each_loops_formula(tmp_path: Path, capsys) -> None:
    import json

    path = tmp_path / "blocks.py"
    path.write_text(textwrap.dedent(BLOCKS))
    assert cli.main(["plan", str(path), "--json"]) == 0
    regions = json.loads(capsys.readouterr().out)["regions"]
    formulas = [r["memory_formula"] for r in regions if r["memory_formula"]]
    assert formulas and all("seq" in f["fixed_bytes"] + f["bytes_per_row"] for f in formulas)
    assert cli.main(["plan", str(path)]) == 0
    assert "at run time: " in capsys.readouterr().out


def test_rows_fall_with_the_budget_and_never_collapse_when_it_is_out_of_reach(emitted) -> None:
    module, _ = import_source(emitted[1].read_text())
    rows = module._rows
    assert rows(10_000, 1_000, 100, 64) == 64  # capped at the planned size
    assert rows(3_000, 1_000, 100, 64) == 16  # 20 rows fit: the power of two below
    assert rows(1_050, 1_000, 100, 64) == 1
    # out of reach (one row is 1100 bytes): within 5% of that, not one row at a time
    assert rows(100, 10_000, 10, 64) == 32


def test_loops_over_fixed_dims_keep_the_chunk_the_longest_input_needs(tmp_path: Path) -> None:
    """The GPT example under 32 MiB chunks its feed-forward over the hidden features, a dim
    that does not grow with the tokens: that loop's chunk is the one the Dim's longest length
    (4096 tokens) needs, so the module stays within the budget there too."""
    from tests.conftest import EXAMPLES

    out = tmp_path / "out"
    budget = 32 * 2**20
    assert (
        cli.main(
            ["emit", str(EXAMPLES / "gpt.py"), "--out", str(out), "--memory-budget", str(budget)]
        )
        == 0
    )
    loaded = load_model_file(EXAMPLES / "gpt.py")
    module, _ = import_source((out / "gpt.py").read_text())
    chunked = instantiate(module, loaded.module)
    ids = torch.randint(0, 512, (1, 4096), generator=torch.Generator().manual_seed(0))
    assert measure_peak(chunked, (ids,)) <= 1.05 * budget


ENCODER = """
    import torch
    from torch import nn
    import torch.nn.functional as F

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv, self.out = nn.Linear(64, 192), nn.Linear(64, 64)
            self.up, self.down = nn.Linear(64, 512), nn.Linear(512, 64)

        def forward(self, x):
            q, k, v = self.qkv(x).view(1, -1, 3, 4, 16).permute(2, 0, 3, 1, 4)
            a = F.scaled_dot_product_attention(q, k, v)
            h = x + self.out(a.transpose(1, 2).reshape(1, -1, 64))
            # a softmax over the hidden features: no loop walks them (NOTE [Sums over the
            # chunks]); the rows' loop, with its run-time sizes, is the one
            return h + self.down(torch.softmax(self.up(h), dim=-1))

    def make_model():
        torch.manual_seed(0)
        return Model().eval()

    def make_inputs():
        return (torch.randn(1, 2048, 64, generator=torch.Generator().manual_seed(0)),)

    def dynamic_shapes():
        return {"x": {1: torch.export.Dim("seq", min=16, max=4096)}}
"""


def test_a_plan_that_misses_its_target_runs_the_chunks_it_chose(tmp_path: Path) -> None:
    """Below the encoder's floor (its output with what it is made from) the target is missed: the module's
    budget is then the most a loop holds at its planned chunk, so its loops run the planned
    rows, not a few rows each for no lower peak, and the estimate is the measured peak. The
    planner's `run_time_rows` and the module's `_rows` are one rule."""
    from analysis.pipeline import plan_model
    from analysis.symbolic import run_time_rows

    path = tmp_path / "encoder.py"
    path.write_text(textwrap.dedent(ENCODER))
    out = tmp_path / "out"
    assert cli.main(["emit", str(path), "--out", str(out), "--memory-ratio", "0.02"]) == 0
    planned = plan_model(path, Target(ratio=0.02))
    assert not planned.plan.met and all(r.chunk_size >= 64 for r in planned.plan.regions)
    text = (out / "encoder.py").read_text()
    assert "The most a loop holds at its planned chunk" in text
    loaded = load_model_file(path)
    module, _ = import_source(text)
    chunked = instantiate(module, loaded.module)
    measured = measure_peak(chunked, loaded.inputs)
    assert abs(planned.plan.planned_peak_bytes - measured) <= 64 << 10, (planned.plan, measured)
    rows = module._rows
    for case in [(None, 0, 8, 100), (5000, 1000, 10, 256), (100, 1000, 10, 64), (10**6, 0, 0, 7)]:
        assert rows(*case) == run_time_rows(*case), case


@pytest.fixture(scope="module")
def automatic(tmp_path_factory) -> tuple[Path, Path]:
    return _emit_blocks(tmp_path_factory, "--memory-budget", "auto")


def _rows_seen(monkeypatch, module) -> list[tuple]:
    """Record each loop's `_rows(budget, fixed, per_row, most)` call and the rows it gave."""
    seen = []
    rows = module._rows

    def spy(*args):
        seen.append((*args, rows(*args)))
        return seen[-1][-1]

    monkeypatch.setattr(module, "_rows", spy)
    return seen


def test_auto_on_cpu_runs_the_planned_chunks(automatic, monkeypatch) -> None:
    """`--memory-budget auto`: the module's default is "auto", planned at the default ratio;
    on CPU it sizes each loop exactly as the planned share (`None`) does, at every length."""
    path, generated = automatic
    source = generated.read_text()
    assert 'def __init__(self, memory_budget: int | str | None = "auto")' in source
    assert "--memory-budget auto" in source and 'memory_budget="auto"' in source
    loaded = load_model_file(path)
    module, _ = import_source(source)
    chunked = instantiate(module, loaded.module)
    assert chunked.memory_budget == "auto"
    seen = _rows_seen(monkeypatch, module)
    for n in (64, 300, 1024):
        x = torch.randn(1, n, 32, generator=torch.Generator().manual_seed(n))
        with torch.no_grad():
            chunked.memory_budget = "auto"
            automatic_out = chunked(x)
            auto_calls, seen[:] = list(seen), []
            chunked.memory_budget = None
            planned_out = chunked(x)
            assert compare(loaded.module(x), automatic_out) is None, n
        assert auto_calls and auto_calls == seen, n  # same budgets, same rows
        seen.clear()
        assert torch.equal(automatic_out, planned_out)


def test_auto_on_cuda_takes_the_devices_free_memory_less_a_tenth(automatic, monkeypatch) -> None:
    """On CUDA, "auto" is what the device has free at the call: the free memory the driver
    reports, and what PyTorch's allocator has reserved and not handed out, less a tenth;
    numbers stand as given, None is the planned share. (The arithmetic, on CPU: the allocator
    calls are replaced.)"""
    module, _ = import_source(automatic[1].read_text())
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (1000 * 2**20, 80 * 2**30))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device: 300 * 2**20)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device: 100 * 2**20)
    cuda = torch.device("cuda", 0)
    assert module._budget("auto", cuda, 5) == 1200 * 2**20 * 9 // 10
    assert module._budget("auto", torch.device("cpu"), 5) == 5
    assert module._budget(None, cuda, 5) == 5
    assert module._budget(123, cuda, 5) == 123
    # where every row fits, one chunk of all of them (300, not a power of two below it)
    assert module._rows(10**12, 2**20, 4096, 300) == 300
    assert module._rows(2**20 + 4096 * 100, 2**20, 4096, 300) == 64


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_auto_on_a_gpu_runs_one_chunk_where_everything_fits(automatic, monkeypatch) -> None:
    """With the whole device free, each loop takes all its rows in one chunk."""
    path, generated = automatic
    loaded = load_model_file(path)
    module, _ = import_source(generated.read_text())
    original = loaded.module.cuda()
    chunked = instantiate(module, original)
    seen = _rows_seen(monkeypatch, module)
    x = torch.randn(1, 512, 32, device="cuda")
    with torch.no_grad():
        assert compare(original(x), chunked(x)) is None
    assert seen and all(rows == most for *_, most, rows in seen)


class Empties(TorchDispatchMode):
    """Records the shape of each tensor `torch.empty` or `new_empty` allocates."""

    def __init__(self):
        super().__init__()
        self.shapes: list[tuple[int, ...]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket is torch.ops.aten.empty:
            self.shapes.append(tuple(args[0]))
        elif func.overloadpacket is torch.ops.aten.new_empty:
            self.shapes.append(tuple(args[1]))
        return func(*args, **(kwargs or {}))


def test_a_loop_run_as_one_chunk_allocates_no_output_buffer(emitted, monkeypatch) -> None:
    """Where every row fits (an input no longer than a loop's chunk), the loop's one chunk is
    its output itself: no buffer is allocated and nothing copied into one (NOTE [One chunk]).
    Longer, the buffers are allocated and written chunk by chunk, as before; both match the
    original."""
    path, generated = emitted
    source = generated.read_text()
    code = " ".join(source.split())
    assert " if chunk < seq else None " in code, source
    assert "if transpose_1 is None: # one chunk: the output itself (NOTE [One chunk])" in code
    assert "(NOTE [One chunk])" in source
    original, chunked = _module(emitted, memory_budget=10**12)
    module = type(chunked).__module__
    seen = _rows_seen(monkeypatch, __import__("sys").modules[module])
    for n, one_chunk in ((4, True), (1024, False)):
        x = torch.randn(1, n, 32, generator=torch.Generator().manual_seed(n))
        seen.clear()
        with torch.no_grad(), Empties() as empties:
            out = chunked(x)
        assert compare(original(x), out) is None, n
        assert seen and all((rows >= n) == one_chunk for *_, rows in seen), (n, seen)
        assert (empties.shapes == []) == one_chunk, (n, empties.shapes)


def test_the_vae_at_a_small_latent_runs_its_loops_as_one_chunk() -> None:
    """The committed VAE decoder at an 8 x 8 latent: each loop's rows (its halos, its rows at
    twice the loop's, its statistics pass) fit in one chunk, which is its output; the image
    matches the original's and no output buffer is allocated."""
    from tests.conftest import EXAMPLES, GENERATED

    loaded = load_model_file(EXAMPLES / "vae.py")
    module, _ = import_source((GENERATED / "vae.py").read_text())
    chunked = instantiate(module, loaded.module)
    latent = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), Empties() as empties:
        out = chunked(latent)
    assert empties.shapes == [], empties.shapes
    with torch.no_grad():
        assert compare(loaded.module(latent), out) is None


def test_verification_runs_every_loop_as_one_chunk_too(emitted) -> None:
    """`emit` verifies the one-chunk path as well (every loop sized at run time taking all
    its rows, as on a GPU with memory to spare), which the example's chunks do not take: a
    module wrong only there is caught (NOTE [One chunk])."""
    from codegen.verify import verify
    from analysis.errors import InternalError

    path, generated = emitted
    loaded = load_model_file(path)
    source = generated.read_text()
    verify(source, loaded.module, loaded.inputs)  # as emitted: both paths match
    # wrong at one chunk only: no tensor of the output's shape to write the chunk into
    wrong = source.replace(" if chunk < seq else None", " if chunk < seq else torch.zeros(1)")
    assert wrong != source, source
    with pytest.raises(InternalError, match="generated module failed to run"):
        verify(wrong, loaded.module, loaded.inputs)


def test_one_chunk_check_passes_over_modules_with_no_run_time_sizes() -> None:
    """A module whose loops keep fixed chunks over a dynamic length still writes the one-chunk
    form (NOTE [One chunk]) but has no `_rows` to force it: the check leaves it be rather than
    failing with an AttributeError (UNet2DConditionModel's plan, which the zoo caught)."""
    import types

    from codegen.verify import _one_chunk_mismatch

    module = types.ModuleType("fixed_chunks")

    def unreachable(*args):
        raise AssertionError("the check ran the module")

    assert _one_chunk_mismatch(module, unreachable, unreachable, ()) is None
