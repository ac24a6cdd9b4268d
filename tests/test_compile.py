"""`torch.compile` of a generated module (NOTE [Loops under torch.compile] in
`codegen/emit.py`): a forward that runs a chunk loop is left to run as written, so one set of
graphs, compiled at the first length, serves every length, and no loop is unrolled into one."""

from __future__ import annotations

import ast
import importlib.util

import pytest
import torch

from analysis.loader import load_model_file
from codegen.verify import compare
from tests.conftest import EXAMPLES, GENERATED


def _generated_gpt():
    spec = importlib.util.spec_from_file_location("compiled_gpt", GENERATED / "gpt.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_gpt_compiles_once_for_every_length() -> None:
    """`torch.compile(dynamic=True)` of `generated/gpt.py` matches the original at three
    lengths (none a multiple of the others, none equal to a fixed size of the model) and
    compiles no graph after the first length's; the loops' ops are in none of the graphs."""
    from torch._dynamo.utils import counters

    loaded = load_model_file(EXAMPLES / "gpt.py")
    generated = _generated_gpt()
    chunked = generated.ChunkedGPT.from_module(loaded.module)
    loops = []
    real = generated._rows

    def counted(*args):  # each loop's chunk sizing runs, outside the graphs, at every call
        loops.append(args)
        return real(*args)

    generated._rows = counted
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(chunked, dynamic=True)
    graphs = []
    with torch.no_grad():
        for length in (200, 333, 520):
            ids = torch.randint(
                0, 512, (1, length), generator=torch.Generator().manual_seed(length)
            )
            before = len(loops)
            assert compare(loaded.module(ids), compiled(ids)) is None, length
            assert len(loops) - before == 4, length  # the four attention loops ran eagerly
            graphs.append(counters["stats"]["unique_graphs"])
    torch._dynamo.reset()
    assert graphs[0] > 0 and graphs[1:] == [graphs[0]] * 2, graphs


@pytest.mark.parametrize("name", ["gpt", "unet", "vit", "evoformer", "vae", "video"])
def test_every_forward_with_a_chunk_loop_is_left_to_run_as_written(name: str) -> None:
    """Each forward that runs a `for start in range(...)` loop is marked
    `@torch.compiler.disable(recursive=False)` (compile still compiles the modules it calls);
    forwards without one are not, and neither are the loops over a container's modules."""
    tree = ast.parse((GENERATED / f"{name}.py").read_text())
    forwards = [
        node
        for cls in tree.body
        if isinstance(cls, ast.ClassDef)
        for node in cls.body
        if isinstance(node, ast.FunctionDef) and node.name == "forward"
    ]
    looping = 0
    for forward in forwards:
        loops = any(
            isinstance(node, ast.For) and getattr(node.target, "id", None) == "start"
            for node in ast.walk(forward)
        )
        looping += loops
        decorators = [ast.unparse(d) for d in forward.decorator_list]
        assert decorators == (["torch.compiler.disable(recursive=False)"] if loops else []), (
            name,
            decorators,
        )
    assert looping, name
