"""The estimate agrees with the live-storage tracker; the tracker itself counts what it should."""

from __future__ import annotations

import torch

from codegen.measure import LiveStorageTracker, measure_peak
from codegen.verify import import_source, instantiate


def test_tracker_counts_new_storage_not_views_or_inputs() -> None:
    x = torch.ones(1000)
    with LiveStorageTracker() as tracker:
        y = x * 2  # 4000 bytes
        z = y.view(10, 100)  # a view: nothing new
        y.add_(1)  # in place: nothing new
        del y, z
        w = x + 1  # the first result was freed: still 4000 live
    assert tracker.peak_bytes == 4000
    assert tracker.live_bytes == 4000
    del w


def test_measure_peak_counts_outputs_and_overlap() -> None:
    def fn(x: torch.Tensor) -> torch.Tensor:
        a = x * 2
        b = a * 3  # a and b alive together: 2 x 4000
        return b

    assert measure_peak(fn, (torch.ones(1000),)) == 8000


def _within(estimate: int, measured: int, tolerance: float) -> bool:
    return abs(estimate - measured) <= tolerance * measured


def test_estimate_matches_measurement_on_gpt(gpt_generated) -> None:
    planned, emitted = gpt_generated
    loaded, plan = planned.loaded, planned.plan
    original = measure_peak(loaded.module, loaded.inputs)
    module, _ = import_source(emitted.source)
    chunked = measure_peak(instantiate(module, loaded.module), loaded.inputs)
    assert _within(plan.original_peak_bytes, original, 0.10), (plan.original_peak_bytes, original)
    assert _within(plan.planned_peak_bytes, chunked, 0.10), (plan.planned_peak_bytes, chunked)
    assert chunked <= 0.2 * original * 1.05


def test_sdpa_float_copy_of_a_bool_mask_is_estimated(tmp_path) -> None:
    import textwrap

    from analysis.capture import capture
    from analysis.loader import load_model_file
    from analysis.memory import estimate_graph

    path = tmp_path / "masked.py"
    path.write_text(textwrap.dedent("""
            import torch

            class Masked(torch.nn.Module):
                def forward(self, q, k, v, keep):
                    mask = keep[:, None, None, :] & torch.ones(
                        q.shape[2], k.shape[2], dtype=torch.bool).tril()
                    return torch.nn.functional.scaled_dot_product_attention(q, k, v, mask)

            def make_model():
                return Masked()

            def make_inputs():
                g = torch.Generator().manual_seed(0)
                q, k, v = (torch.randn(1, 4, 256, 16, generator=g) for _ in range(3))
                return (q, k, v, torch.ones(1, 256, dtype=torch.bool))
            """))
    loaded = load_model_file(path)
    estimate = estimate_graph(capture(loaded)).peak
    measured = measure_peak(loaded.module, loaded.inputs)
    assert _within(estimate, measured, 0.05), (estimate, measured)
    assert measured > 4 * 256 * 256  # the float copy of the mask dominates: it is really there
