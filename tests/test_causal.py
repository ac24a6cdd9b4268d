"""Causal masks (NOTE [Causal key truncation]): what the proof accepts is true of the real mask,
what it cannot prove it leaves alone, and attention loops over queries then skip hidden keys."""

from __future__ import annotations

import math
import re
import textwrap
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
import torch.nn.functional as F

from analysis.causal import band, band_if_nonzero, hidden_above, hides_nothing, truncated_keys
from analysis.ir import Graph
from codegen.generate import generate
from analysis.errors import InternalError
from codegen.verify import checked_inputs, compare, import_source, instantiate, verify
from analysis.select import Target
from tests.test_dimflow import Fn, capture

T = 12


def _rows_cols(t: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.arange(t)[:, None], torch.arange(t)[None, :]


def _hf_style(pad: torch.Tensor) -> torch.Tensor:
    """transformers' sdpa_mask: kv_idx <= q_idx, and the key is not padding."""
    t = pad.shape[-1]
    q_idx = (torch.arange(t) + 0)[None, None, :, None]
    kv_idx = (torch.arange(t) + 0)[None, None, None, :]
    keep = pad.bool()[:, None, None, :]
    return ((kv_idx <= q_idx).to(torch.bool) & keep).expand(1, -1, t, t)


def _prefix_lm(t: int) -> torch.Tensor:
    """A causal mask whose first columns are then opened to every query, in place."""
    mask = torch.ones(t, t, dtype=torch.bool).tril()
    mask[:, :4] = True
    return mask


#: mask builders the proof must accept, with the diagonal they hide above
CAUSAL: dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], int]] = {
    "tril": (lambda x: torch.ones(x.shape[-1], x.shape[-1], dtype=torch.bool).tril(), 0),
    "tril_diagonal_2": (lambda x: torch.ones(x.shape[-1], x.shape[-1]).tril(2).bool(), 2),
    "col_le_row": (lambda x: _rows_cols(x.shape[-1])[1] <= _rows_cols(x.shape[-1])[0], 0),
    "row_gt_col": (lambda x: _rows_cols(x.shape[-1])[0] > _rows_cols(x.shape[-1])[1], -1),
    "padded_hf": (lambda x: _hf_style(x > -1.0), 0),
    "additive_masked_fill": (
        lambda x: torch.zeros(x.shape[-1], x.shape[-1]).masked_fill(
            ~torch.ones(x.shape[-1], x.shape[-1], dtype=torch.bool).tril(), float("-inf")
        ),
        0,
    ),
    "square_subsequent": (  # nn.Transformer.generate_square_subsequent_mask
        lambda x: torch.triu(torch.full((x.shape[-1], x.shape[-1]), float("-inf")), diagonal=1),
        0,
    ),
    "not_triu_ones": (
        lambda x: ~torch.ones(x.shape[-1], x.shape[-1], dtype=torch.bool).triu(1),
        0,
    ),
    "masked_fill_triu": (
        lambda x: torch.zeros(x.shape[-1], x.shape[-1]).masked_fill(
            torch.ones(x.shape[-1], x.shape[-1]).triu(3).bool(), float("-inf")
        ),
        2,
    ),
    "triu_below_the_diagonal": (  # hides the diagonal too: true, though no loop may cut
        lambda x: torch.full((x.shape[-1], x.shape[-1]), float("-inf")).triu(-1),
        -2,
    ),
    "additive_where": (
        lambda x: torch.where(
            torch.ones(x.shape[-1], x.shape[-1], dtype=torch.bool).tril(), 0.0, float("-inf")
        ),
        0,
    ),
}

#: mask builders it must not accept: nothing is hidden above any diagonal, or hidden with a
#: value other than False / -inf (a row with every key hidden would then change its result)
NOT_CAUSAL: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "anti_causal": lambda x: _rows_cols(x.shape[-1])[1] >= _rows_cols(x.shape[-1])[0],
    "padding_only": lambda x: (x > 0.0)[:, None, None, :].expand(1, 1, x.shape[-1], -1),
    "finfo_min": lambda x: torch.zeros(x.shape[-1], x.shape[-1]).masked_fill(
        ~torch.ones(x.shape[-1], x.shape[-1], dtype=torch.bool).tril(),
        torch.finfo(torch.float32).min,
    ),
    "triu_of_data": lambda x: torch.triu(x[0, :, None] * x[0, None, :], diagonal=1) < 0,
    "triu_finfo_min": lambda x: torch.full(
        (x.shape[-1], x.shape[-1]), torch.finfo(torch.float32).min
    ).triu(1),
    "written_through_a_view": lambda x: _prefix_lm(x.shape[-1]),
    "bfloat16_positions": lambda x: torch.arange(600, dtype=torch.bfloat16)[None, :]
    <= torch.arange(600, dtype=torch.bfloat16)[:, None],
    "int8_positions": lambda x: torch.arange(600).to(torch.int8)[None, :]
    <= torch.arange(600).to(torch.int8)[:, None],
    "column_broadcast": lambda x: torch.ones(x.shape[-1], 1, dtype=torch.bool).tril()
    & (x > 0.0)[:, None, None, :],
}


def _mask(fn: Callable[[torch.Tensor], torch.Tensor]) -> tuple[Graph, str, Any]:
    graph, env = capture(Fn(fn), (torch.randn(1, T),))
    (output,) = graph.outputs
    return graph, output.name, env[output.name]


@pytest.mark.parametrize("case", sorted(CAUSAL))
def test_proven_masks_hide_every_key_above_their_diagonal(case: str) -> None:
    fn, diagonal = CAUSAL[case]
    graph, name, value = _mask(fn)
    assert hidden_above(graph, name) == diagonal
    above = torch.ones(T, T, dtype=torch.bool).triu(diagonal + 1)
    hidden = value == (False if value.dtype == torch.bool else -math.inf)
    assert hidden.expand(*value.shape[:-2], T, T)[..., above].all()
    assert not hidden.all(), "the cases should also have visible keys"


@pytest.mark.parametrize("case", sorted(NOT_CAUSAL))
def test_masks_the_proof_cannot_show_causal_are_left_alone(case: str) -> None:
    graph, name, _ = _mask(NOT_CAUSAL[case])
    assert hidden_above(graph, name) is None


#: masks over T keys (for T queries), and whether each hides no key at all
VISIBLE = {
    "positions at least 0": (lambda x: (torch.arange(T) >= 0)[None, :].expand(T, T), True),
    "positions shifted past 0": (lambda x: (torch.arange(T) + 2 > 1)[None, :].expand(T, T), True),
    "positions at least 1": (lambda x: (torch.arange(T) >= 1)[None, :].expand(T, T), False),
    "positions below 5": (lambda x: (torch.arange(T) < 5)[None, :].expand(T, T), False),
    "additive zeros": (lambda x: torch.zeros(T, T), True),
    "data": (lambda x: (x > -10.0)[:, None, :], False),
}


@pytest.mark.parametrize("case", sorted(VISIBLE))
def test_a_mask_that_hides_no_key_is_proven_so(case: str) -> None:
    """transformers builds an encoder's mask with no padding as `arange(n) >= 0`: SDPA with it
    equals SDPA without it, which eager runs; the proof claims nothing of a mask that hides a
    key, or of data."""
    fn, claimed = VISIBLE[case]
    graph, name, value = _mask(fn)
    assert hides_nothing(graph, name) is claimed
    if claimed:
        assert bool((value if value.dtype == torch.bool else value == 0).all())


ATTENTION = """
    import torch
    from torch import nn
    import torch.nn.functional as F

    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv = nn.Linear(32, 96)
            self.out = nn.Linear(32, 32)

        def forward(self, x, pad):
            b, t, _ = x.shape
            q, k, v = self.qkv(x).view(b, t, 3, 4, 8).permute(2, 0, 3, 1, 4)
            {MASK}
            y = F.scaled_dot_product_attention(q, k, v, mask)
            return self.out(y.transpose(1, 2).reshape(b, t, 32))

    def make_model():
        torch.manual_seed(0)
        return Attention()

    def make_inputs():
        g = torch.Generator().manual_seed(0)
        pad = torch.ones(1, 256, dtype=torch.long)
        pad[:, :5] = 0
        return (torch.randn(1, 256, 32, generator=g), pad)
"""


def _attention(tmp_path: Path, mask: str) -> tuple[Any, str]:
    path = tmp_path / "attention.py"
    path.write_text(textwrap.dedent(ATTENTION).replace("{MASK}", mask))
    planned, emitted = generate(path, Target(ratio=0.1), "--memory-ratio 0.1")
    verify(emitted.source, planned.loaded.module, planned.loaded.inputs)
    found = {
        name for region in planned.plan.regions for name in truncated_keys(planned.graph, region)
    }
    return found, emitted.source


def test_attention_with_a_padded_causal_mask_skips_hidden_keys(tmp_path: Path) -> None:
    mask = (
        "i = torch.arange(t)\n"
        "        mask = (i[None, :] <= i[:, None]) & pad.bool()[:, None, None, :]"
    )
    found, source = _attention(tmp_path, mask)
    assert found, "the query loop should cut the keys"
    assert "[:, :, :stop]" in source and "Causal mask" in source


def test_attention_with_a_square_subsequent_float_mask_skips_hidden_keys(tmp_path: Path) -> None:
    mask = "mask = torch.triu(torch.full((t, t), float('-inf')), diagonal=1)"
    found, source = _attention(tmp_path, mask)  # verified inside
    assert found and "[:, :, :stop]" in source


def test_attention_with_a_non_causal_mask_reads_every_key(tmp_path: Path) -> None:
    found, source = _attention(tmp_path, "mask = pad.bool()[:, None, None, :].expand(b, 1, t, t)")
    assert not found
    assert "[:, :, :stop]" not in source


EAGER = """
    import math
    import torch
    from torch import nn

    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv = nn.Linear(32, 96)

        def forward(self, x):
            b, t, _ = x.shape
            q, k, v = self.qkv(x).view(b, t, 3, 4, 8).permute(2, 0, 3, 1, 4)
            causal = torch.ones(t, t, dtype=torch.bool).tril()
            att = (q @ k.transpose(-1, -2)) / math.sqrt(8)
            att = att.masked_fill(~causal, float("-inf")).softmax(dim=-1)
            {AFTER}

    def make_model():
        torch.manual_seed(0)
        return Attention()

    def make_inputs():
        return (torch.randn(1, 256, 32, generator=torch.Generator().manual_seed(0)),)
"""


def _eager(tmp_path: Path, after: str) -> tuple[set[str], str]:
    path = tmp_path / "eager.py"
    path.write_text(textwrap.dedent(EAGER).replace("{AFTER}", after))
    planned, emitted = generate(path, Target(ratio=0.1), "--memory-ratio 0.1")
    verify(emitted.source, planned.loaded.module, planned.loaded.inputs)
    graph = planned.graph
    found = {
        str(graph[name].target)
        for region in planned.plan.regions
        for name in truncated_keys(graph, region)
    }
    return found, emitted.source


def test_written_out_causal_attention_skips_hidden_keys_end_to_end(tmp_path: Path) -> None:
    found, source = _eager(tmp_path, "return (att @ v).transpose(1, 2).reshape(b, t, 32)")
    # scores, scaling, masking, softmax and the product with the values all stop at the chunk
    assert {"aten.matmul.default", "aten.softmax.int"} <= found
    assert "[:, :, :, :stop]" in source and "[:, :, :stop]" in source


def test_probabilities_read_elsewhere_keep_every_key(tmp_path: Path) -> None:
    found, _ = _eager(tmp_path, "return (att @ v).transpose(1, 2).reshape(b, t, 32), att.sum(-1)")
    assert "aten.softmax.int" not in found


# ------------------------------------------------------------------ exact bands

try:  # imported here, not first inside a trace: transformers registers its outputs with pytree
    import transformers
    import transformers.modeling_outputs  # noqa: F401  (registered now, not inside an export)
    from transformers import masking_utils
except ImportError:  # pragma: no cover - the `libs` extra is not installed
    masking_utils = None


def _masking() -> Any:
    """transformers' mask builders, with `LlamaConfig` beside them; skips without the library."""
    if masking_utils is None:
        pytest.skip("needs transformers")
    masking_utils.LlamaConfig = transformers.LlamaConfig
    return masking_utils


def _transformers_mask(kind: str, **options: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """A mask as transformers' own `sdpa_mask` builds it while exporting (no skipping to
    `is_causal`): causal, a sliding window, their `and_masks`/`or_masks`, with or without vmap."""

    def build(x: torch.Tensor) -> torch.Tensor:
        masking = _masking()
        t = x.shape[-1]
        functions = {
            "causal": masking.causal_mask_function,
            "window": masking.sliding_window_causal_mask_function(4),
            "and": masking.and_masks(
                masking.causal_mask_function, masking.sliding_window_overlay(4)
            ),
            "or_prefix": masking.or_masks(masking.causal_mask_function, lambda b, h, q, kv: kv < 3),
        }
        return masking.sdpa_mask(
            batch_size=1,
            q_length=t,
            kv_length=t,
            mask_function=functions[kind],
            allow_is_causal_skip=False,
            **options,
        )

    return build


def _packed_ids_mask(x: torch.Tensor) -> torch.Tensor:
    """transformers' `create_causal_mask` on an unpadded prompt while exporting: causal, and
    the packed-sequence ids it finds in the position ids (all equal for `arange`)."""
    masking = _masking()
    config = masking.LlamaConfig(hidden_size=8, num_attention_heads=2, attn_implementation="sdpa")
    t = x.shape[-1]
    positions = (torch.arange(t) + 0).unsqueeze(0)
    mask = masking.create_causal_mask(
        config=config,
        inputs_embeds=x[:, :, None].expand(1, t, 8),
        attention_mask=None,
        cache=None,
        position_ids=positions,
        allow_is_causal_skip=False,
    )
    return mask


#: mask builders proven exactly a band of `lower <= key - query <= upper`
BANDS: dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], tuple[int | None, int | None]]] = {
    "col_le_row": (lambda x: _rows_cols(x.shape[-1])[1] <= _rows_cols(x.shape[-1])[0], (None, 0)),
    "tril_ones": (
        lambda x: torch.ones(x.shape[-1], x.shape[-1], dtype=torch.bool).tril(),
        (None, 0),
    ),
    "not_triu_ones": (
        lambda x: ~torch.ones(x.shape[-1], x.shape[-1], dtype=torch.bool).triu(1),
        (None, 0),
    ),
    "window_by_hand": (
        lambda x: (_rows_cols(x.shape[-1])[1] <= _rows_cols(x.shape[-1])[0])
        & (_rows_cols(x.shape[-1])[1] > _rows_cols(x.shape[-1])[0] - 5),
        (-4, 0),
    ),
    "transformers_causal": (_transformers_mask("causal"), (None, 0)),
    "transformers_causal_vmap": (_transformers_mask("causal", use_vmap=True), (None, 0)),
    "transformers_window": (_transformers_mask("window"), (-3, 0)),
    "transformers_and_masks": (_transformers_mask("and"), (-3, 0)),
    "transformers_packed_ids": (_packed_ids_mask, (None, 0)),
}

#: builders that are no band (or not provably one): the proof must not claim one
NOT_BANDS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "padded_hf": lambda x: _hf_style(x > 0.0),
    "transformers_or_prefix": _transformers_mask("or_prefix"),
    "tril_of_data": lambda x: (x[0, :, None] * x[0, None, :] > 0).tril(),
    "written_through_a_view": lambda x: _prefix_lm(x.shape[-1]),
}


@pytest.mark.parametrize("case", sorted(BANDS))
def test_proven_bands_are_exactly_the_real_mask(case: str) -> None:
    fn, expected = BANDS[case]
    graph, name, value = _mask(fn)
    assert band(graph, name) == expected
    rows, cols = _rows_cols(T)
    lower, upper = expected
    exact = torch.ones(T, T, dtype=torch.bool)
    if lower is not None:
        exact &= cols - rows >= lower
    if upper is not None:
        exact &= cols - rows <= upper
    assert torch.equal(value.expand(*value.shape[:-2], T, T), exact.expand(*value.shape[:-2], T, T))


@pytest.mark.parametrize("case", sorted(NOT_BANDS))
def test_masks_that_are_no_band_are_not_claimed(case: str) -> None:
    graph, name, _ = _mask(NOT_BANDS[case])
    assert band(graph, name) is None


def test_a_vmapped_mask_is_lowered_proven_and_cut(tmp_path: Path) -> None:
    """`torch.vmap` leaves batching steps only functorch runs; capture lowers them to plain ops,
    so the mask is proven exactly causal and SDPA runs as `is_causal`, with no mask."""
    found, source = _attention(
        tmp_path,
        "idx = torch.arange(t)\n"
        "        inner = torch.vmap(lambda i, j: j <= i, in_dims=(None, 0))\n"
        "        mask = torch.vmap(inner, in_dims=(0, None))(idx, idx)",
    )
    assert "_add_batch_dim" not in source and "is_causal=True)" in source


CAUSAL_SDPA = """
    import torch
    from torch import nn
    import torch.nn.functional as F

    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.q = nn.Linear(32, 64)
            self.kv = nn.Linear(32, 32)
            self.out = nn.Linear(64, 32)

        def forward(self, x):
            b, t, _ = x.shape
            q = self.q(x).view(b, t, 4, 16).transpose(1, 2)
            k, v = self.kv(x).view(b, t, 2, 1, 16).permute(2, 0, 3, 1, 4)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
            return self.out(y.transpose(1, 2).reshape(b, t, 64))

    def make_model():
        torch.manual_seed(0)
        return Attention()

    def make_inputs():
        return (torch.randn(1, 512, 32, generator=torch.Generator().manual_seed(0)),)

    def dynamic_shapes():
        return {"x": {1: torch.export.Dim("seq", min=2, max=4096)}}
"""


def test_a_causal_sdpa_chunked_over_queries_attends_from_the_chunks_first_row(
    tmp_path: Path,
) -> None:
    """`is_causal=True` would align a chunk's first query with the first key: the loop passes
    the keys up to its last query and the chunk's first row to `_causal_attention` instead."""
    path = tmp_path / "causal.py"
    path.write_text(textwrap.dedent(CAUSAL_SDPA))
    planned, emitted = generate(path, Target(ratio=0.6), "--memory-ratio 0.6")
    verify(emitted.source, planned.loaded.module, planned.loaded.inputs)
    assert "_causal_attention(" in emitted.source and "[:, :, :stop], start" in emitted.source
    module, _ = import_source(emitted.source)
    chunked = instantiate(module, planned.loaded.module)
    for length in (17, 700):  # the chunk's mask follows the run-time chunk sizes
        x = torch.randn(1, length, 32)
        with torch.no_grad():
            assert compare(planned.loaded.module(x), chunked(x)) is None
    code = "\n".join(
        line.split("#")[0] for line in emitted.source.split("def _causal_attention")[0].splitlines()
    )
    assert not re.search(r"is_causal=True[,)]", code)  # only in the citations of the source


@pytest.mark.parametrize("fused", [True, False], ids=["cpu_kernel", "mask"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_causal_attention_of_a_chunk_matches_is_causal_over_the_whole(
    tmp_path: Path, fused: bool, dtype: torch.dtype
) -> None:
    """`_causal_attention` as the generated module holds it: on CPU the keys before the chunk
    and its own square merged by their log-sum-exp, elsewhere the chunk's own mask (reached
    here by hiding the CPU kernel). Every chunk, the first included, grouped heads and a scale
    given, matches `is_causal=True` over the whole sequence within the dtype's tolerance."""
    path = tmp_path / "causal.py"
    path.write_text(textwrap.dedent(CAUSAL_SDPA))
    _, emitted = generate(path, Target(ratio=0.6), "--memory-ratio 0.6")
    module, _ = import_source(emitted.source)
    if not fused:
        module._FUSED_CPU = "no_such_kernel"
    gen = torch.Generator().manual_seed(3)
    q = torch.randn(2, 8, 300, 16, generator=gen).to(dtype)
    k, v = (torch.randn(2, 2, 300, 16, generator=gen).to(dtype) for _ in range(2))
    options = {"scale": 0.3, "enable_gqa": True}
    whole = F.scaled_dot_product_attention(q, k, v, is_causal=True, **options)
    reference = F.scaled_dot_product_attention(
        *(t.float() for t in (q, k, v)), is_causal=True, **options
    )
    for start, stop in ((0, 64), (64, 150), (150, 300)):
        rows = module._causal_attention(
            q[:, :, start:stop], k[:, :, :stop], v[:, :, :stop], start, **options
        )
        assert compare(whole[:, :, start:stop], rows, reference[:, :, start:stop]) is None


def _padded_transformers(window: int | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """transformers' `sdpa_mask` with a padding mask, as it builds it while exporting."""

    def build(padding: torch.Tensor) -> torch.Tensor:
        masking = _masking()
        function = (
            masking.causal_mask_function
            if window is None
            else masking.sliding_window_causal_mask_function(window)
        )
        return masking.sdpa_mask(
            batch_size=1,
            q_length=padding.shape[-1],
            kv_length=padding.shape[-1],
            mask_function=function,
            attention_mask=padding.to(torch.bool),
            allow_is_causal_skip=False,
        )

    return build


def _causal_and(padding: torch.Tensor) -> torch.Tensor:
    rows, cols = _rows_cols(padding.shape[-1])
    return (cols <= rows) & padding.to(torch.bool)[:, None, :]


#: masks that are a band when their integer input pads nothing (NOTE [Padding checked at run
#: time]), with that band
PADDED_BANDS: dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], tuple[int, int] | None]] = {
    "by_hand": (_causal_and, (None, 0)),
    "transformers_padded": (_padded_transformers(), (None, 0)),
    "transformers_padded_window": (_padded_transformers(window=4), (-3, 0)),
    # nonzero does not say equal to one, nor above a half once converted
    "equal_to_one": (
        lambda p: (_rows_cols(p.shape[-1])[1] <= _rows_cols(p.shape[-1])[0]) & (p == 1)[:, None],
        None,
    ),
    "converted_compared": (
        lambda p: (_rows_cols(p.shape[-1])[1] <= _rows_cols(p.shape[-1])[0])
        & (p.float() > 0.5)[:, None],
        None,
    ),
}


@pytest.mark.parametrize("case", sorted(PADDED_BANDS))
def test_a_padding_mask_assumed_to_pad_nothing_proves_the_band_it_leaves(case: str) -> None:
    """`band_if_nonzero`: with the padding input assumed nonzero everywhere, the mask is the band
    (checked against the real mask at an all-ones padding), and nothing is claimed without the
    assumption, or where the assumption does not decide the mask."""
    fn, expected = PADDED_BANDS[case]
    padding = torch.ones(1, T, dtype=torch.long)
    padding[:, :3] = 0
    graph, env = capture(Fn(fn), (padding,))
    (output,) = graph.outputs
    (given,) = [node.name for node in graph.nodes if node.kind == "input"]
    assert band(graph, output.name) is None
    assert band_if_nonzero(graph, output.name, given) == expected
    if expected is not None:
        lower, upper = expected
        rows, cols = _rows_cols(T)
        exact = (cols - rows <= upper) & (cols - rows >= (lower if lower is not None else -T))
        value = fn(torch.ones(1, T, dtype=torch.long))
        assert torch.equal(value.expand(*value.shape[:-2], T, T), exact.expand_as(value))


PADDED_ATTENTION = """
    import torch
    import torch.nn.functional as F
    from torch import nn

    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv = nn.Linear(32, 96)
            self.out = nn.Linear(32, 32)

        def forward(self, x, padding):
            b, t, _ = x.shape
            q, k, v = self.qkv(x).view(b, t, 3, 2, 16).permute(2, 0, 3, 1, 4)
            positions = torch.arange(t)
            mask = (positions[None, :] <= positions[:, None]) & padding.bool()[:, None, None, :]
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            return self.out(y.transpose(1, 2).reshape(b, t, 32))

    def make_model():
        torch.manual_seed(0)
        return Attention()

    def make_inputs():
        padding = torch.ones(1, 512, dtype=torch.long)
        padding[:, -5:] = 0  # right padding: every query still sees a key
        return (torch.randn(1, 512, 32, generator=torch.Generator().manual_seed(0)), padding)

    def dynamic_shapes():
        seq = torch.export.Dim("seq", min=8, max=4096)
        return {"x": {1: seq}, "padding": {1: seq}}
"""


def test_a_padding_mask_is_checked_at_run_time_and_both_paths_are_verified(
    tmp_path: Path,
) -> None:
    """NOTE [Padding checked at run time]: the forward checks `padding.all()` once; with no
    padding the attention runs `is_causal` with no mask (chunked: `_causal_attention`), else
    with the mask. Verification runs the example (padded) and the same inputs with no padding,
    so a wrong fast path is caught though the example never takes it."""
    path = tmp_path / "padded.py"
    path.write_text(textwrap.dedent(PADDED_ATTENTION))
    planned, emitted = generate(path, Target(ratio=0.3), "--memory-ratio 0.3")
    source = emitted.source
    assert "no_padding: " in source and "= padding.all()" in source
    assert "_attention(" in source and "no_padding," in source
    inputs = planned.loaded.inputs
    (other,) = checked_inputs(planned.graph, inputs)
    assert bool(other[1].all()) and torch.equal(other[0], inputs[0])
    verify(source, planned.loaded.module, inputs, [other])
    module, _ = import_source(source)
    chunked = instantiate(module, planned.loaded.module)
    for length, pad in ((40, 0), (40, 7), (300, 0)):  # every path, at run-time chunk sizes
        x = torch.randn(1, length, 32)
        padding = torch.ones(1, length, dtype=torch.long)
        padding[:, length - pad :] = 0
        with torch.no_grad():
            assert compare(planned.loaded.module(x, padding), chunked(x, padding)) is None
    wrong = source.replace(
        "return _causal_attention(query, key, value, start, **options)",
        "return _causal_attention(query, key, value, start, **options) * 1.01",
    ).replace(
        "query, key, value, is_causal=True, **options\n            )",
        "query, key, value, is_causal=True, **options\n            ) * 1.01",
    )
    assert wrong != source
    verify(wrong, planned.loaded.module, inputs)  # the example alone takes the masked path
    with pytest.raises(InternalError, match="does not match"):
        verify(wrong, planned.loaded.module, inputs, [other])


PADDED_TO_WINDOW = """
    import torch
    import torch.nn.functional as F

    class Model(torch.nn.Module):
        def forward(self, x):
            # HF Swin's maybe_pad: up to a multiple of the window, 8
            pad = (8 - x.shape[1] % 8) % 8
            if EXTRA:
                pad = pad + 8
            return F.pad(x.relu(), (0, 0, 0, pad)) * 2

    def make_model():
        return Model()

    def make_inputs():
        return (torch.randn(1, 64, 16, generator=torch.Generator().manual_seed(0)),)

    def dynamic_shapes():
        return {"x": {1: 8 * torch.export.Dim("eighths", min=2, max=64)}}
"""


@pytest.mark.parametrize("extra", [False, True])
def test_a_pad_export_proves_empty_is_read_as_its_input(tmp_path: Path, extra: bool) -> None:
    """At a dynamic size that is a multiple of the window the pad's amounts are sizes export
    proves 0: the pad, a whole copy eager never makes, goes; a pad of 8 more rows stays."""
    from analysis.capture import capture as capture_file
    from analysis.fastpath import eager_attention
    from analysis.loader import load_model_file

    path = tmp_path / "padded.py"
    path.write_text(textwrap.dedent(PADDED_TO_WINDOW).replace("EXTRA", str(extra)))
    graph = capture_file(load_model_file(path))
    pads = [n for n in graph.nodes if "pad" in str(n.target)]
    assert pads, "export keeps the pad with its symbolic amounts"
    kept = [n for n in eager_attention(graph).nodes if "pad" in str(n.target)]
    assert bool(kept) is extra
