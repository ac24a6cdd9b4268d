"""The loop program (NOTE [Loop program]): decisions are taken once, in lowering, and the memory
estimate, the cost model and the emitter read them; codegen never re-derives them."""

from __future__ import annotations

import ast
from dataclasses import replace
from pathlib import Path

import pytest

from analysis.cost import load_machine, region_time
from analysis.lower import lower_region
from analysis.memory import region_program, simulate
from analysis.program import CHUNK, OUTER, ChunkLength, ChunkStart, LoopRegion
from codegen import cli
from codegen.verify import import_source, instantiate

ROOT = Path(__file__).resolve().parent.parent
#: the passes whose decisions only the loop program may carry into codegen
DECISION_PASSES = {"causal", "dimflow", "inplace", "remat", "search", "cost"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


@pytest.mark.parametrize("path", sorted((ROOT / "codegen").glob("*.py")), ids=lambda p: p.name)
def test_codegen_imports_no_decision_pass_and_scans_no_text(path: Path) -> None:
    imported = _imports(path)
    assert not {f"analysis.{name}" for name in DECISION_PASSES} & imported
    tree = ast.parse(path.read_text())
    scans = {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and node.attr in ("findall", "finditer", "search")
    }
    assert not scans, f"{path.name} scans text with {scans}"
    if path.name != "cli.py":  # the CLI parses sizes like `512MB`: its own argument, not code
        assert "re" not in imported


def _attention_region(gpt_generated) -> tuple:
    planned, _ = gpt_generated
    region = planned.plan.regions[0]
    return planned.graph, region, lower_region(planned.graph, region)


def test_lowering_records_slices_key_cuts_and_in_place_writes(gpt_generated) -> None:
    graph, region, lowered = _attention_region(gpt_generated)
    steps: dict = {}
    for step in lowered.steps:  # the first step of each op: the scores' matmul, not the values'
        steps.setdefault(graph[step.node].target.__name__.split(".")[0], step)
    scores = steps["matmul"]
    queries, keys = scores.operands
    assert queries.source == OUTER and queries.rows == 2 and queries.keys is None
    assert keys.rows is None and keys.keys == 3  # k^T is read whole, cut to the visible keys
    assert scores.keys == 0 and scores.inplace is None
    assert steps["div"].target.__name__ == "div_.Tensor" and steps["div"].inplace == 0
    assert steps["div"].operands[0].source == CHUNK
    ones, tril = steps["ones"], steps["tril"]
    assert isinstance(ones.args[0][0], ChunkLength)
    assert isinstance(tril.args[1], ChunkStart) and tril.args[1].sign == 1
    # the program says what it reads; no step reads a value the region does not know
    known = {n for n, _ in region.loop} | set(region.hoisted) | set(region.materialized)
    for step in lowered.steps:
        for read in step.operands:
            assert read.source != CHUNK or read.value in known


def test_the_estimate_and_the_cost_model_read_the_programs_decisions(gpt_generated) -> None:
    """Undo one in-place write in the program: the estimate sees a second buffer, and a key
    cut removed makes the cost model count every key. Neither re-derives the choice."""
    graph, region, lowered = _attention_region(gpt_generated)
    outputs = graph.output_names()
    peak = simulate(region_program(graph, lowered, 0), outputs).peak
    undone = LoopRegion(
        lowered.region,
        tuple(
            (
                replace(step, inplace=None, target=graph[step.node].target)
                if step.inplace is not None
                else step
            )
            for step in lowered.steps
        ),
    )
    assert simulate(region_program(graph, undone, 0), outputs).peak > peak
    machine = load_machine()
    uncut = LoopRegion(lowered.region, tuple(replace(step, keys=None) for step in lowered.steps))
    assert region_time(graph, uncut, machine) > region_time(graph, lowered, machine)


def test_the_emitter_prints_the_program(gpt_generated) -> None:
    """Each loop statement of the generated forward is the program's step, in its order."""
    planned, emitted = gpt_generated
    block = planned.program.blocks[0]
    body = emitted.source.split("for start in range(0, seq, chunk):", 1)[1]
    names = [s.var for s in block.body if s.var and s.var != "stop"]
    positions = [body.index(f"\n            {name} = ") for name in names]  # not a comment
    assert positions == sorted(positions)
    assert "att = matmul_1.div_(" in body  # named as the source does


def test_plan_dump_shows_every_pass(capsys) -> None:
    assert cli.main(["plan", str(ROOT / "examples" / "gpt.py"), "--dump"]) == 0
    out = capsys.readouterr().out
    for name in ("capture", "recompute", "select", "lower"):
        assert f"=== {name} ===" in out
    lowered = out.split("=== lower ===", 1)[1]
    assert "for start in range(0, seq, chunk):  # region 1" in lowered
    assert "in place on slot 0" in lowered and "keys < stop+0" in lowered
    assert "[rows@2]" in lowered and "[keys@3]" in lowered
    assert cli.main(["plan", str(ROOT / "examples" / "gpt.py"), "--dump", "select"]) == 0
    only = capsys.readouterr().out
    assert only.startswith("=== select ===") and "=== lower ===" not in only


NAMED = """
    import torch

    class Named(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(8, 16)

        def forward(self, x):
            a, b = self.proj(x).chunk(2, dim=-1)
            h = torch.relu(a) + b * 3
            h = h.softmax(-1)
            return (h @ h.transpose(-1, -2)).sum(-1)

    def make_model():
        torch.manual_seed(0)
        return Named()

    def make_inputs():
        return (torch.randn(1, 64, 8),)
"""


def test_values_take_the_names_their_source_lines_assign(tmp_path: Path) -> None:
    """NOTE [Names from the source]: `a, b = ...` names the two chunks, `h = ...` the value the
    line ends with, not the intermediates; a layer's output is still named after the layer."""
    import textwrap

    path = tmp_path / "named.py"
    path.write_text(textwrap.dedent(NAMED))
    assert cli.main(["emit", str(path), "--out", str(tmp_path / "out"), "--no-verify"]) == 0
    tree = ast.parse((tmp_path / "out" / "named.py").read_text())
    bound = {
        target.id
        for node in ast.walk(tree)
        if isinstance(node, (ast.Assign, ast.AnnAssign))
        for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
        if isinstance(target, ast.Name)
    }
    assert {"a", "b", "h", "h_1"} <= bound, bound  # h: the loop's buffer, h_1: the softmax
    assert {"proj", "relu"} <= bound  # the line's intermediates keep their op's name


def test_gpt_values_are_named_as_the_source_names_them(gpt_generated) -> None:
    _, emitted = gpt_generated
    source = emitted.source
    assert 'q: "f32[1, seq, 256]" = split[0]' in source
    # `x = x + self.attn(self.ln_1(x))` in the block: the sum takes the name of the argument
    # (the caller holds it), the attention's output its module's name
    assert 'x: "f32[1, seq, 256]" = x + attn' in source
    assert 'ln_1: "f32[1, seq, 256]" = self.ln_1(x)' in source


def test_a_rebound_name_frees_its_old_value_where_the_estimate_does(gpt_generated) -> None:
    """`q = q.view(...).transpose(1, 2)` rebinds `q`: the old `q` dies with its storage still
    read by the view, so no `del` is needed and the measured peak stays the estimate's."""
    from codegen.measure import measure_peak

    planned, emitted = gpt_generated
    source = emitted.source
    assert 'q: "f32[1, 8, seq, 32]" = view.transpose(1, 2)' in source
    assert "del q\n" not in source.split("# Chunk loop")[0]
    module, _ = import_source(source)
    chunked = instantiate(module, planned.loaded.module)
    assert measure_peak(chunked, planned.loaded.inputs) == planned.plan.planned_peak_bytes
