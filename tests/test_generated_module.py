"""Contract 3 on the GPT example: standalone, same state dict, same outputs at any length."""

from __future__ import annotations

import ast

import pytest
import torch

from analysis.loader import load_model_file
from codegen.verify import compare, import_source, instantiate
from tests.conftest import EXAMPLES, GENERATED


@pytest.fixture(scope="module")
def gpt():
    loaded = load_model_file(EXAMPLES / "gpt.py")
    module, _ = import_source((GENERATED / "gpt.py").read_text())
    return loaded, module


def test_imports_only_torch_and_stdlib() -> None:
    import sys

    tree = ast.parse((GENERATED / "gpt.py").read_text())
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            roots.add((node.module or "").split(".")[0])
    assert roots <= {"torch"} | set(sys.stdlib_module_names), roots


def test_exports_one_module_class_constructible_without_arguments(gpt) -> None:
    _, module = gpt
    (name,) = module.__all__
    cls = getattr(module, name)
    assert issubclass(cls, torch.nn.Module)
    assert isinstance(cls(), torch.nn.Module)


def test_loads_original_state_dict_strictly(gpt) -> None:
    loaded, module = gpt
    (name,) = module.__all__
    fresh = getattr(module, name)()
    fresh.load_state_dict(loaded.module.state_dict(), strict=True)
    assert set(fresh.state_dict()) == set(loaded.module.state_dict())


@pytest.mark.parametrize("length", [1, 7, 300, 1000])
def test_matches_original_at_other_lengths(gpt, length: int) -> None:
    loaded, module = gpt
    chunked = instantiate(module, loaded.module)
    ids = torch.randint(0, 512, (1, length), generator=torch.Generator().manual_seed(length))
    with torch.no_grad():
        assert compare(loaded.module(ids), chunked(ids)) is None


def test_has_explicit_chunk_loops_with_shape_expressions() -> None:
    source = (GENERATED / "gpt.py").read_text()
    assert "for start in range(0, seq, " in source
    # the loop's output: q's dtype, on q's device, its length `seq` (NOTE [One chunk])
    assert "= q.new_empty((1, 8, seq, 32)) if chunk < seq else None" in source
    assert "2048" not in source.split('"""', 2)[2], "a dynamic length was baked in as a literal"


def test_cites_source_lines_and_frees_values() -> None:
    source = (GENERATED / "gpt.py").read_text()
    assert "# gpt.py:" in source and " in forward: " in source
    assert "\n        del " in source and "\n            del " in source


class LoRA(torch.nn.Module):
    """A low-rank adapter around a Linear, the way PEFT wraps a layer."""

    def __init__(self, base: torch.nn.Linear, rank: int = 4) -> None:
        super().__init__()
        self.base = base
        g = torch.Generator().manual_seed(0)
        self.a = torch.nn.Parameter(torch.randn(rank, base.in_features, generator=g) * 0.1)
        self.b = torch.nn.Parameter(torch.randn(base.out_features, rank, generator=g) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.a.T) @ self.b.T


def test_layers_are_layers_their_hooks_fire_and_swaps_act() -> None:
    """Standard layers stay instances of their class and are called as modules: a hook on a
    Linear fires (once per chunk inside a loop), and a LoRA swapped in by the original's path
    changes the output exactly as it changes the original's."""
    loaded = load_model_file(EXAMPLES / "gpt.py")
    module, _ = import_source((GENERATED / "gpt.py").read_text())
    original = loaded.module
    chunked = instantiate(module, original)
    assert type(chunked.blocks[0].mlp.fc) is torch.nn.Linear
    assert type(chunked.blocks[0].ln_1) is torch.nn.LayerNorm
    seen: list[str] = []
    for path in ("blocks.0.mlp.fc", "blocks.2.attn.qkv", "wte"):
        chunked.get_submodule(path).register_forward_hook(lambda m, i, o, p=path: seen.append(p))
    ids = torch.randint(0, 512, (1, 300), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        before = chunked(ids)
    assert sorted(set(seen)) == ["blocks.0.mlp.fc", "blocks.2.attn.qkv", "wte"]
    adapter = LoRA(original.blocks[1].mlp.fc)
    original.blocks[1].mlp.fc = adapter
    chunked.blocks[1].mlp.fc = adapter
    with torch.no_grad():
        expected, actual = original(ids), chunked(ids)
    assert compare(expected, actual) is None
    assert compare(before, actual) is not None  # the adapter did change the output
