"""In-place elementwise ops in chunk loops (NOTE [In-place in loops]): used where safe, never
where the operand is read again, comes from outside the loop, or is a view."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from analysis.capture import capture
from analysis.inplace import inplace_operands
from analysis.loader import load_model_file
from codegen.measure import measure_peak
from analysis.select import Target, make_plan
from analysis.lower import lower
from codegen.emit import emit_module
from codegen.verify import import_source, instantiate, verify

MODEL = """
    import torch
    from torch import nn

    class Scores(nn.Module):
        def __init__(self):
            super().__init__()
            self.qk = nn.Linear(16, 32)

        def forward(self, x, bias):
            q, k = self.qk(x).split(16, dim=-1)
            q = q.view(1, -1, 2, 8).transpose(1, 2)
            k = k.view(1, -1, 2, 8).transpose(1, 2)
            raw = q @ k.transpose(-1, -2)
            {BODY}
            return att.softmax(dim=-1).sum(-1)

    def make_model():
        torch.manual_seed(0)
        return Scores()

    def make_inputs():
        g = torch.Generator().manual_seed(0)
        return (torch.randn(1, 384, 16, generator=g), torch.randn(384, generator=g))
"""


def _emit(tmp_path: Path, body: str):
    path = tmp_path / "scores.py"
    path.write_text(textwrap.dedent(MODEL).replace("{BODY}", body))
    loaded = load_model_file(path)
    graph = capture(loaded)
    plan = make_plan(graph, Target(ratio=0.2))
    assert plan.regions, "the scores should be chunked"
    source = emit_module(graph, plan, loaded.module, "test", "test", lower(graph, plan)).source
    verify(source, loaded.module, loaded.inputs)
    found = {
        graph[name].target.__name__: slot
        for r in plan.regions
        for name, slot in inplace_operands(graph, r).items()
    }
    return loaded, plan, source, found


def test_chain_of_elementwise_ops_runs_in_place_and_memory_matches(tmp_path: Path) -> None:
    body = "att = (raw / 3.0).masked_fill(bias > 1.0, float('-inf'))"
    loaded, plan, source, found = _emit(tmp_path, body)
    assert set(found) == {"div.Tensor", "masked_fill.Scalar"}
    assert ".div_(3.0)" in source and ".masked_fill_(" in source
    module, _ = import_source(source)
    measured = measure_peak(instantiate(module, loaded.module), loaded.inputs)
    assert abs(plan.planned_peak_bytes - measured) <= 0.05 * measured


def test_commutative_op_writes_into_its_second_operand(tmp_path: Path) -> None:
    loaded, plan, source, found = _emit(tmp_path, "att = bias + raw")
    assert found == {"add.Tensor": 1}
    assert ".add_(" in source


def test_operand_read_twice_is_not_overwritten(tmp_path: Path) -> None:
    _, _, source, found = _emit(tmp_path, "att = (raw * 2.0) + raw")
    assert "mul.Tensor" not in found
    assert ".mul_(" not in source


def test_view_and_outside_operands_are_not_overwritten(tmp_path: Path) -> None:
    # raw.transpose is a view of raw; bias is whole, from outside the loop
    _, _, source, found = _emit(tmp_path, "att = raw.transpose(-1, -2) * 2.0 - bias")
    assert "mul.Tensor" not in found
    assert ".mul_(" not in source


@pytest.mark.parametrize("body", ["att = (raw / 3.0).exp()", "att = torch.tanh(raw) * 2.0"])
def test_unary_chains_stay_exact(tmp_path: Path, body: str) -> None:
    _, _, _, found = _emit(tmp_path, body)
    assert found  # verify() inside _emit already checked the numerics
