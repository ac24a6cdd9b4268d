"""Causal masks (NOTE [Causal key truncation]): what the proof accepts is true of the real mask,
what it cannot prove it leaves alone, and attention loops over queries then skip hidden keys."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

from analysis.causal import hidden_above, truncated_keys
from analysis.ir import Graph
from codegen.generate import generate
from codegen.verify import verify
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
