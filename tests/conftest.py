"""Shared fixtures: the GPT example, captured and planned once per session."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from analysis.select import Target  # noqa: E402
from codegen.generate import generate  # noqa: E402

EXAMPLES = ROOT / "examples"
GENERATED = ROOT / "generated"


@pytest.fixture(scope="session")
def gpt_generated():
    """The GPT example planned at the default target and emitted (not yet verified)."""
    torch.set_grad_enabled(False)
    return generate(EXAMPLES / "gpt.py", Target(ratio=0.2), "--memory-ratio 0.2")
