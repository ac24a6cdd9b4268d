"""The cost model and the features built on it: chunk-size choice, --tune, planning speed."""

from __future__ import annotations

import textwrap
from pathlib import Path

from analysis.capture import capture
from analysis.cost import Machine, load_machine, region_time, span_time
from analysis.loader import load_model_file
from analysis.lower import lower_region
from analysis.select import Target, make_plan, rescaled
from codegen import cli

MACHINE = Machine(1e11, ((1 << 20, 1e11), (1 << 25, 1e11), (1 << 27, 1e10)), 2e-6)

MODEL = """
    import torch

    class Attention(torch.nn.Module):
        def __init__(self, depth):
            super().__init__()
            self.qkv = torch.nn.ModuleList(torch.nn.Linear(32, 96) for _ in range(depth))

        def forward(self, x):
            for layer in self.qkv:
                q, k, v = layer(x).split(32, dim=-1)
                q = q.view(1, -1, 4, 8).transpose(1, 2)
                k = k.view(1, -1, 4, 8).transpose(1, 2)
                v = v.view(1, -1, 4, 8).transpose(1, 2)
                att = (q @ k.transpose(-1, -2)).softmax(dim=-1)
                x = x + (att @ v).transpose(1, 2).reshape(1, -1, 32)
            return x

    def make_model():
        torch.manual_seed(0)
        return Attention({depth})

    def make_inputs():
        return (torch.randn(1, 512, 32, generator=torch.Generator().manual_seed(0)),)
"""


def _model(tmp_path: Path, depth: int = 1) -> Path:
    path = tmp_path / f"attention_{depth}.py"
    path.write_text(textwrap.dedent(MODEL).replace("{depth}", str(depth)))
    return path


def test_calibration_loads_with_measured_numbers() -> None:
    machine = load_machine()
    assert machine.flops_per_s > 1e8 and machine.op_overhead_s > 0
    sizes = [size for size, _ in machine.bandwidth]
    assert sizes == sorted(sizes)
    assert machine.bytes_per_s(1) == machine.bandwidth[0][1]
    assert machine.bytes_per_s(1 << 40) == machine.bandwidth[-1][1]


def test_tiny_chunks_pay_overhead_and_huge_ones_fall_out_of_cache(tmp_path: Path) -> None:
    graph = capture(load_model_file(_model(tmp_path)))
    plan = make_plan(graph, Target(ratio=0.3))
    (region,) = plan.regions
    lowered = lower_region(graph, region)
    times = {c: region_time(graph, lowered.with_chunk_size(c), MACHINE) for c in (1, 64, 512)}
    assert times[1] > times[64]
    assert times[1] > span_time(graph, region.span, MACHINE)  # 512 dispatches per op


def test_rescaled_plans_keep_the_target_or_are_refused(tmp_path: Path) -> None:
    graph = capture(load_model_file(_model(tmp_path)))
    plan = make_plan(graph, Target(ratio=0.3))
    smaller = rescaled(graph, plan, 0.5)
    assert smaller is not None and smaller.met
    assert smaller.regions[0].chunk_size == max(plan.regions[0].chunk_size // 2, 1)
    assert all(rescaled(graph, plan, f) is None or rescaled(graph, plan, f).met for f in (2, 8))


def test_tune_times_variants_and_writes_a_verified_module(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    assert cli.main(["emit", str(_model(tmp_path)), "--out", str(out), "--tune"]) == 0
    source = (out / "attention_1.py").read_text()
    assert "--tune" in source and "for start in range(0, 512, " in source


def test_small_row_chunks_make_matrix_products_slower_per_flop(tmp_path: Path) -> None:
    """A product of few rows feeds the kernel's tiles poorly: with `gemm_half_rows` set, the
    scores of 16 query rows cost more per row than those of 256, as measured on CPUs."""
    from dataclasses import replace

    from analysis.cost import gemm_rows, node_time

    graph = capture(load_model_file(_model(tmp_path)))
    node = next(n for n in graph.ops() if "matmul" in str(n.target))
    rows = 2  # f32[1, 4, 512, 512]: the queries
    assert gemm_rows(node, graph, rows, 16 / 512) == 16
    assert gemm_rows(node, graph, 1, 1 / 4) == 512  # fewer heads: each product keeps its rows
    assert gemm_rows(node, graph) == 512

    def per_row(machine: Machine, size: int) -> float:
        return node_time(node, graph, machine, size / 512, dim=rows) / size

    flat = replace(MACHINE, gemm_half_rows=0.0, op_overhead_s=0.0)
    tiled = replace(flat, gemm_half_rows=48.0)
    assert per_row(tiled, 16) / per_row(tiled, 256) > per_row(flat, 16) / per_row(flat, 256)
    assert load_machine().gemm_half_rows > 0  # measured by scripts/calibrate.py
