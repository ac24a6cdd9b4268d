"""The estimate agrees with the live-storage tracker; the tracker itself counts what it should."""

from __future__ import annotations

import pytest
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


BROADCAST_HEADS = """
    import torch

    class MultiQuery(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.q, self.kv = torch.nn.Linear(64, 64), torch.nn.Linear(64, 32)

        def forward(self, x):
            q = self.q(x).view(1, -1, 4, 16).transpose(1, 2)
            k, v = self.kv(x).view(1, -1, 1, 32).transpose(1, 2).split(16, dim=-1)
            # one key head broadcast over four query heads, as Falcon's multi-query does
            a = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
            return a.transpose(1, 2).reshape(1, -1, 64)

    def make_model():
        torch.manual_seed(0)
        return MultiQuery().eval()

    def make_inputs():
        return (torch.randn(1, 1024, 64, generator=torch.Generator().manual_seed(0)),)
"""


def test_sdpa_on_broadcast_key_heads_takes_the_math_path_and_is_estimated(tmp_path) -> None:
    """Key heads broadcast over query heads send CPU SDPA down its math path (the scores and
    their softmax, and a float causal mask): estimated for the original, and the chunked
    module's fused causal chunks hold none of it."""
    import textwrap

    from codegen.generate import generate
    from analysis.select import Target

    path = tmp_path / "multi_query.py"
    path.write_text(textwrap.dedent(BROADCAST_HEADS))
    planned, emitted = generate(path, Target(ratio=0.1), "--memory-ratio 0.1")
    loaded = planned.loaded
    original = measure_peak(loaded.module, loaded.inputs)
    assert original > 2 * 4 * 1024 * 1024 * 4  # the scores and their softmax are there
    assert _within(planned.plan.original_peak_bytes, original, 0.02)
    module, _ = import_source(emitted.source)
    chunked = measure_peak(instantiate(module, loaded.module), loaded.inputs)
    assert _within(planned.plan.planned_peak_bytes, chunked, 0.02), (planned.plan, chunked)
    assert chunked < original / 5


TRAINABLE_MASK = """
    import torch

    class BiasedAttention(torch.nn.Module):
        def __init__(self, trainable):
            super().__init__()
            self.qkv = torch.nn.Linear(64, 192)
            # a learned additive bias over queries x keys, used whole as the mask
            self.bias = torch.nn.Parameter(torch.zeros(512, 512), requires_grad=trainable)

        def forward(self, x):
            q, k, v = self.qkv(x).view(1, -1, 3, 4, 16).permute(2, 0, 3, 1, 4)
            a = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=self.bias)
            return a.transpose(1, 2).reshape(1, -1, 64)

    def make_model():
        torch.manual_seed(0)
        return BiasedAttention(TRAINABLE).eval()

    def make_inputs():
        return (torch.randn(1, 512, 64, generator=torch.Generator().manual_seed(0)),)
"""


@pytest.mark.parametrize("trainable", [True, False], ids=["requires_grad", "frozen"])
def test_sdpa_with_a_mask_that_requires_grad_takes_the_math_path_and_is_estimated(
    tmp_path, trainable: bool
) -> None:
    """A mask that is a parameter requiring grad sends CPU SDPA down its math path even under
    no_grad (the scores and their softmax: 2 x 4 heads x 512 x 512 floats): estimated for the
    original, and a loop over queries cuts it; a frozen one runs fused, holding none of it."""
    import textwrap

    from codegen.generate import generate
    from analysis.select import Target

    path = tmp_path / "biased.py"
    path.write_text(textwrap.dedent(TRAINABLE_MASK).replace("TRAINABLE", str(trainable)))
    planned, emitted = generate(path, Target(ratio=0.2), "--memory-ratio 0.2")
    loaded = planned.loaded
    original = measure_peak(loaded.module, loaded.inputs)
    scores = 4 * 512 * 512 * 4
    assert (original > 2 * scores) == trainable, original
    assert _within(planned.plan.original_peak_bytes, original, 0.02), (planned.plan, original)
    module, _ = import_source(emitted.source)
    chunked = measure_peak(instantiate(module, loaded.module), loaded.inputs)
    assert _within(planned.plan.planned_peak_bytes, chunked, 0.02), (planned.plan, chunked)
    if trainable:
        assert chunked < original / 4


WINDOWS = """
    import torch

    class WindowScores(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv = torch.nn.Linear(128, 3 * 128)

        def forward(self, x):
            # Swin's windows: the projection viewed as (windows, tokens, 3, heads, features)
            # and permuted, so q and k fold their (windows, heads) dims only through a copy
            windows, tokens = x.shape[0], x.shape[1]
            qkv = self.qkv(x).reshape(windows, tokens, 3, 2, 64).permute(2, 0, 3, 1, 4)
            q, k = qkv[0] * 0.125, qkv[1]
            return torch.matmul(q, k.transpose(-2, -1)).softmax(-1).sum(-1)

    def make_model():
        torch.manual_seed(0)
        return WindowScores().eval()

    def make_inputs():
        return (torch.randn(256, 16, 128, generator=torch.Generator().manual_seed(0)),)
"""


def test_matmul_copies_of_operands_it_cannot_fold_are_estimated(tmp_path) -> None:
    """`matmul` folds its batch dims with `reshape`, which copies a permuted query and key
    (NOTE: `Node.copies`, found from the traced strides): the estimate counts both copies in
    the original and per chunk in the loop, so each matches its measured peak."""
    import textwrap

    from analysis.capture import capture
    from analysis.loader import load_model_file
    from analysis.select import Target
    from codegen.generate import generate

    path = tmp_path / "windows.py"
    path.write_text(textwrap.dedent(WINDOWS))
    loaded = load_model_file(path)
    graph = capture(loaded)
    matmul = next(n for n in graph.nodes if n.target is torch.ops.aten.matmul.default)
    assert [slot for slot, _ in matmul.copies] == [0, 1]  # both q and k are copied
    assert all(ratio == 1.0 for _, ratio in matmul.copies)
    planned, emitted = generate(path, Target(ratio=0.2), "--memory-ratio 0.2")
    original = measure_peak(loaded.module, loaded.inputs)
    q_and_k = 2 * 256 * 2 * 16 * 64 * 4
    assert original > 2 * q_and_k  # the projection and the two copies are there
    assert _within(planned.plan.original_peak_bytes, original, 0.01)
    module, _ = import_source(emitted.source)
    chunked = measure_peak(instantiate(module, planned.loaded.module), loaded.inputs)
    assert planned.plan.regions
    assert _within(planned.plan.planned_peak_bytes, chunked, 0.01), (planned.plan, chunked)


def test_a_contiguous_operand_needs_no_copy(tmp_path) -> None:
    """Queries in (batch, heads, tokens, features) order fold their batch dims as a view."""
    import textwrap

    from analysis.capture import capture
    from analysis.loader import load_model_file

    path = tmp_path / "plain.py"
    path.write_text(textwrap.dedent("""
        import torch

        class Plain(torch.nn.Module):
            def forward(self, q, k):
                return torch.matmul(q, k.transpose(-2, -1))

        def make_model():
            return Plain()

        def make_inputs():
            return (torch.randn(2, 4, 32, 16), torch.randn(2, 4, 32, 16))
        """))
    graph = capture(load_model_file(path))
    matmul = next(n for n in graph.nodes if n.target is torch.ops.aten.matmul.default)
    assert matmul.copies == ()  # k transposed is (b, h, d, n) with foldable batch strides


DROPOUT = """
    import torch

    class Dropped(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.up, self.drop = torch.nn.Linear(64, 1024), torch.nn.Dropout(0.1)
            self.down = torch.nn.Linear(1024, 64)

        def forward(self, x):
            h = self.up(x)
            # outside training the dropout returns `h` itself; F.dropout and p=0 alike
            return self.down(torch.nn.functional.dropout(self.drop(h), 0.0, training=True))

    def make_model():
        torch.manual_seed(0)
        return Dropped().eval()

    def make_inputs():
        return (torch.randn(1, 1024, 64, generator=torch.Generator().manual_seed(0)),)
"""


def test_a_dropout_outside_training_holds_nothing_of_its_own(tmp_path) -> None:
    """NOTE [Memory model]: fake tensors give an eval-mode dropout (and one dropping nothing)
    a storage of its own; eager returns the input itself, and so does the estimate."""
    import textwrap

    from analysis.capture import capture
    from analysis.loader import load_model_file
    from analysis.memory import estimate_graph

    path = tmp_path / "dropped.py"
    path.write_text(textwrap.dedent(DROPOUT))
    loaded = load_model_file(path)
    graph = capture(loaded)
    dropouts = [n for n in graph.nodes if "dropout" in str(n.target)]
    assert len(dropouts) == 2 and all(n.aliases is not None for n in dropouts), dropouts
    estimate = estimate_graph(graph).peak
    measured = measure_peak(loaded.module, loaded.inputs)
    assert estimate == measured == 1024 * 1024 * 4 + 1024 * 64 * 4, (estimate, measured)
