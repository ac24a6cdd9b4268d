"""A decoder's last level, as the VAE's: the upsampled image and its resnet blocks, chunked with
statistics passes that remake the image (NOTE [Statistics passes]), and blocks alike whose
equal peaks each get a loop (NOTE [Equal peaks])."""

from __future__ import annotations

import collections
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from analysis import select
from analysis.capture import build_graph, export
from analysis.ir import Graph
from analysis.loader import LoadedModel
from analysis.loops import lower_region
from analysis.plan import ChunkPlan
from analysis.search import PASSES_PER_VALUE
from analysis.select import Target, make_plan
from analysis.shortfall import estimate_agrees
from codegen.measure import measure_peak
from tests.test_conv import _emit_and_verify


class Block(nn.Module):
    """diffusers' ResnetBlock2D without a time embedding: each norm's statistics span the
    image, and the second reads the first conv."""

    def __init__(self, channels: int, out: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(4, channels)
        self.conv1 = nn.Conv2d(channels, out, 3, padding=1)
        self.norm2 = nn.GroupNorm(4, out)
        self.conv2 = nn.Conv2d(out, out, 3, padding=1)
        self.shortcut = nn.Conv2d(channels, out, 1) if channels != out else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv2(F.silu(self.norm2(self.conv1(F.silu(self.norm1(x))))))
        return (x if self.shortcut is None else self.shortcut(x)) + h


class LastLevel(nn.Module):
    """A low-resolution block, the 2x nearest upsampling and its conv, then a wide block that
    narrows the channels, and two blocks alike."""

    def __init__(self) -> None:
        super().__init__()
        self.low = Block(16, 16)
        self.up = nn.Conv2d(16, 16, 3, padding=1)
        self.blocks = nn.ModuleList([Block(16, 8), Block(8, 8), Block(8, 8)])
        self.out = nn.Conv2d(8, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.up(F.interpolate(self.low(x), scale_factor=2.0, mode="nearest"))
        for block in self.blocks:
            x = block(x)
        return self.out(x)


def _planned(model: nn.Module, inputs: tuple, ratio: float) -> tuple[Graph, ChunkPlan]:
    loaded = LoadedModel(Path(__file__), model, inputs, None)
    graph = build_graph(export(loaded), loaded)
    return graph, make_plan(graph, Target(ratio=ratio))


def _model() -> nn.Module:
    torch.manual_seed(0)
    model = LastLevel().eval()
    for module in model.modules():
        if isinstance(module, nn.GroupNorm):
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.normal_()
    return model


def test_a_loop_from_the_upsampling_remakes_the_image_in_both_passes() -> None:
    """The wide block's two norms both take their statistics in passes of a loop that starts
    at the upsampling: the upsampled image is made by both passes and the main loop, never held
    whole, and no value is made by more than two passes. Exact at odd sizes, its estimate
    measured."""
    model = _model()
    inputs = (torch.randn(1, 16, 23, 17) * 2 + 1,)
    graph, plan = _planned(model, inputs, 0.1)
    upsample = next(node.name for node in graph.nodes if "upsample" in node.name)
    wide = [region for region in plan.regions if upsample in region.loop_dims and region.recomputed]
    assert len(wide) == 1, plan.regions
    # it starts where only the low-resolution block's output is live, so remakes nothing before
    assert wide[0].span[0] == upsample, wide[0].span
    passes = lower_region(graph, wide[0]).passes
    assert len(passes) == 2, passes
    counts = collections.Counter(step.node for done in passes for step in done.steps)
    assert counts[upsample] == 2 and max(counts.values()) <= PASSES_PER_VALUE, counts
    chunked = _emit_and_verify(graph, plan, model, inputs)
    with torch.no_grad():
        measured = measure_peak(chunked, inputs)
    assert estimate_agrees(plan.planned_peak_bytes, measured), (plan.planned_peak_bytes, measured)


def test_blocks_alike_each_get_a_loop(monkeypatch) -> None:
    """The two narrow blocks peak alike. A loop through one leaves the plan's peak at the
    other; that is still progress, and the next stage chunks the other, so both blocks run in
    loops and the plan's peak falls below what either block holds unchunked."""
    model = _model()
    inputs = (torch.randn(1, 16, 24, 20),)
    graph, plan = _planned(model, inputs, 0.1)
    looped = {name for region in plan.regions for name in region.loop_dims}
    convs = [node.name for node in graph.nodes if node.name.startswith("conv2d")]
    # each narrow block's second conv (the last two blocks: convs 7 and 9 of 10)
    assert {convs[-4], convs[-2]} <= looped, (convs, plan.regions)

    def peak_only(profile, peak):  # progress judged by the plan's peak alone, as before
        return profile.peak // max(peak // 100, 1), 0

    monkeypatch.setattr(select, "_height", peak_only)
    _, before = _planned(model, inputs, 0.1)
    assert plan.planned_peak_bytes < before.planned_peak_bytes, (plan, before)
