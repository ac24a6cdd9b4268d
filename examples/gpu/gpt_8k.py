"""GPU-sized GPT (issue 17's GPU run): `examples/gpt.py` at width 1024, 16 heads and 8192
tokens, about 8 GiB of activations in float32 (estimated). Too large for the CPU benchmark."""

import importlib.util
from pathlib import Path

import torch

_spec = importlib.util.spec_from_file_location("gpt_base", Path(__file__).parent.parent / "gpt.py")
base = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(base)
base.MAX_LEN = 16384  # the position table, read when the model is built
SEQ = 8192


def make_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return base.GPT(width=1024, heads=16)


def make_inputs() -> tuple:
    generator = torch.Generator().manual_seed(0)
    return (torch.randint(0, base.VOCAB, (1, SEQ), generator=generator),)


def dynamic_shapes() -> dict:
    return {"ids": {1: torch.export.Dim("seq", min=2, max=base.MAX_LEN)}}
