"""Half precision (NOTE [Half-precision tolerance] in codegen/verify.py): bf16 and fp16 models
emit and verify on CPU, their error against a float32 run of the original stays within twice
the original's own, and the check catches an output that is wrong rather than rounded
differently."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch

from analysis.loader import load_model_file
from codegen import cli
from codegen.verify import HALF, compare, float_reference, import_source, instantiate

BLOCKS = """
    import torch
    from torch import nn
    import torch.nn.functional as F

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln_1, self.ln_2 = nn.LayerNorm(64), nn.LayerNorm(64)
            self.qkv, self.proj = nn.Linear(64, 192), nn.Linear(64, 64)
            self.fc, self.out = nn.Linear(64, 256), nn.Linear(256, 64)

        def forward(self, x):
            b, t, c = x.shape
            q, k, v = self.qkv(self.ln_1(x)).view(b, t, 3, 4, 16).permute(2, 0, 3, 1, 4)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.proj(y.transpose(1, 2).reshape(b, t, c))
            return x + self.out(F.gelu(self.fc(self.ln_2(x))))

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(100, 64)
            self.blocks = nn.ModuleList(Block() for _ in range(2))
            self.head = nn.Linear(64, 100)

        def forward(self, ids):
            x = self.embed(ids)
            for block in self.blocks:
                x = block(x)
            return self.head(x)

    def make_model():
        torch.manual_seed(0)
        return Model().to(DTYPE)

    def make_inputs():
        return (torch.randint(0, 100, (1, 256), generator=torch.Generator().manual_seed(0)),)
"""


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_a_half_precision_model_emits_and_stays_within_twice_the_originals_error(
    tmp_path: Path, dtype: str
) -> None:
    path = tmp_path / "blocks.py"
    path.write_text(textwrap.dedent(BLOCKS).replace("DTYPE", f"torch.{dtype}"))
    assert (
        cli.main(["emit", str(path), "--out", str(tmp_path / "out"), "--memory-ratio", "0.1"]) == 0
    )
    source = (tmp_path / "out" / "blocks.py").read_text()
    assert "for start in range(" in source  # chunked, and verified above
    loaded = load_model_file(path)
    module, _ = import_source(source)
    chunked = instantiate(module, loaded.module)
    with torch.no_grad():
        expected, actual = loaded.module(*loaded.inputs), chunked(*loaded.inputs)
    assert actual.dtype == getattr(torch, dtype)
    reference = float_reference(loaded.module, loaded.inputs, expected)
    assert reference is not None and reference.dtype == torch.float32
    assert compare(expected, actual, reference) is None
    theirs = (expected.float() - reference).abs().max()
    ours = (actual.float() - reference).abs().max()
    assert ours <= 2 * theirs + HALF[expected.dtype] * reference.abs().max()


def test_the_half_precision_check_tells_rounding_from_a_wrong_value() -> None:
    torch.manual_seed(0)
    reference = torch.randn(64, 64)
    original = reference.to(torch.bfloat16)
    reordered = (reference + 1e-3 * torch.randn(64, 64)).to(torch.bfloat16)  # another rounding
    assert compare(original, reordered, reference) is None
    wrong = original.clone()
    wrong[7, :8] = 0  # one chunk's rows lost
    assert "over twice the original's" in (compare(original, wrong, reference) or "")
    assert compare(original, original.float(), reference) is not None  # the dtype must stay


def test_float32_outputs_keep_contract_3s_tolerances() -> None:
    value = torch.randn(8, 8)
    assert float_reference(torch.nn.Identity(), (value,), value) is None
    assert compare(value, value + 1e-3) is not None
