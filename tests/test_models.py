"""End to end on small models with the shapes real models have: buffers, dict outputs,
in-place updates, a value read both sliced and whole; plus --no-verify and internal errors."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest
import torch

from analysis.loader import load_model_file
from codegen.measure import measure_peak
from analysis import cost
from codegen import cli, generate
from codegen.verify import compare, import_source, instantiate

SELF_ATTENTION = """
    import torch

    class SelfAttention(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(16, 16)
            self.register_buffer("calls", torch.zeros(1))
            self.register_buffer("scale", torch.full((16,), 0.5), persistent=False)

        def forward(self, x):
            self.calls.add_(1)
            h = self.lin(x) * self.scale
            a = (h @ h.transpose(-1, -2)).softmax(-1)  # h is the query and the key
            return {"out": a @ h, "calls": self.calls.clone()}  # and the value, read whole

    def make_model():
        torch.manual_seed(0)
        return SelfAttention()

    def make_inputs():
        return (torch.randn(1, 512, 16, generator=torch.Generator().manual_seed(1)),)
"""


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    path = tmp_path / "self_attention.py"
    path.write_text(textwrap.dedent(SELF_ATTENTION))
    return path


def test_buffers_dict_outputs_and_a_value_read_sliced_and_whole(model_file: Path, tmp_path):
    out = tmp_path / "out"
    assert cli.main(["emit", str(model_file), "--out", str(out), "--memory-ratio", "0.3"]) == 0
    source = (out / "self_attention.py").read_text()
    assert "for start in range(0, 512, " in source
    loaded = load_model_file(model_file)
    module, _ = import_source(source)
    chunked = instantiate(module, loaded.module)
    assert chunked.scale is loaded.module.scale  # non-persistent buffers are shared too
    assert chunked.calls is loaded.module.calls and chunked.lin.weight is loaded.module.lin.weight
    x = loaded.inputs[0]
    with torch.no_grad():
        expected = loaded.module(x)
        loaded.module.calls.sub_(1)  # one state for both: run the chunked one from the same
        actual = chunked(x)
    assert set(actual) == {"out", "calls"}
    assert compare(expected, actual) is None
    assert loaded.module.calls.item() == expected["calls"].item()
    assert measure_peak(chunked, (x,)) < 0.35 * measure_peak(loaded.module, (x,))


def test_no_verify_skips_the_check(model_file: Path, tmp_path, monkeypatch) -> None:
    called = []
    real = cli.verify
    monkeypatch.setattr(cli, "verify", lambda *args: called.append(args) or real(*args))
    out = tmp_path / "out"
    assert cli.main(["emit", str(model_file), "--out", str(out), "--no-verify"]) == 0
    assert not called and (out / "self_attention.py").exists()
    assert cli.main(["emit", str(model_file), "--out", str(out)]) == 0
    assert called


def test_wrong_code_is_an_internal_error_that_keeps_the_evidence(
    model_file: Path, tmp_path, monkeypatch, capsys
) -> None:
    real = generate.emit_module

    def broken(*args, **kwargs):
        emitted = real(*args, **kwargs)
        wrong = emitted.source.replace("torch.softmax(", "torch.log_softmax(")
        return type(emitted)(wrong, emitted.class_name)

    monkeypatch.setattr(generate, "emit_module", broken)
    out = tmp_path / "out"
    assert cli.main(["emit", str(model_file), "--out", str(out)]) == 3
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("INTERNAL ERROR")
    assert "does not match the original" in err
    kept = Path(err.split("kept in ")[1].split(".py")[0] + ".py")
    assert "torch.log_softmax(" in kept.read_text()
    assert not out.exists()


def test_emit_reports_measured_memory_and_warns_when_it_did_not_fall(
    model_file: Path, tmp_path, monkeypatch, capsys
) -> None:
    out = tmp_path / "out"
    assert cli.main(["emit", str(model_file), "--out", str(out), "--memory-ratio", "0.3"]) == 0
    captured = capsys.readouterr()
    assert re.search(r"; measured [\d.]+ \w+ -> [\d.]+ \w+$", captured.out.strip())
    assert "warning" not in captured.err
    monkeypatch.setattr(cli, "measure_pair", lambda *args: (1000, 1000))
    assert cli.main(["emit", str(model_file), "--out", str(out), "--memory-ratio", "0.3"]) == 0
    assert "uses no less activation memory than the original" in capsys.readouterr().err


def test_output_class_defined_in_the_model_file_is_a_clear_user_error(tmp_path, capsys) -> None:
    path = tmp_path / "pair.py"
    path.write_text(textwrap.dedent("""
            from typing import NamedTuple
            import torch

            class Pair(NamedTuple):
                out: torch.Tensor

            class M(torch.nn.Module):
                def forward(self, x):
                    return Pair((x @ x.transpose(-1, -2)).softmax(-1) @ x)

            def make_model():
                return M()

            def make_inputs():
                return (torch.randn(1, 256, 8),)
            """))
    assert cli.main(["emit", str(path), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {path}: the model returns a Pair") and "\n" not in err
    assert not (tmp_path / "out").exists()


def test_a_derived_dim_is_read_back_from_the_input_shape(tmp_path, capsys) -> None:
    path = tmp_path / "derived.py"
    path.write_text(textwrap.dedent("""
            import torch

            class M(torch.nn.Module):
                def forward(self, x):
                    return (x @ x.transpose(-1, -2)).softmax(-1) @ x

            def make_model():
                return M()

            def make_inputs():
                return (torch.randn(1, 256 + 2, 8),)

            def dynamic_shapes():
                h = torch.export.Dim("h", min=1, max=128)
                return {"x": {1: 4 * h + 2}}
            """))
    out = tmp_path / "out"
    assert cli.main(["emit", str(path), "--out", str(out)]) == 0
    source = (out / "derived.py").read_text()
    assert "h = (x.shape[1] - 2) // 4" in source and "range(0, 2 + 4 * h, " in source
    loaded = load_model_file(path)
    module, _ = import_source(source)
    chunked = instantiate(module, loaded.module)
    x = torch.randn(1, 4 * 100 + 2, 8)
    with torch.no_grad():
        assert compare(loaded.module(x), chunked(x)) is None


CONSTANTS = """
    import torch

    class Constants(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 4)
            self.bias = torch.tensor([0.5, -1.0, 2.0, float("-inf")])  # an attribute, not a buffer
            self.none = torch.zeros(0, 3)  # an empty one keeps its shape

        def forward(self, x):
            weights = torch.tensor([1.0, 2.0, 3.0, 4.0])  # built from Python data
            scores = self.lin(x) @ self.lin(x).transpose(-1, -2)
            out = (scores.softmax(-1) @ (x * weights)).clamp_min(self.bias) * torch.tensor(3)
            return out, self.bias, self.none  # constants returned as they are

    def make_model():
        torch.manual_seed(0)
        return Constants()

    def make_inputs():
        return (torch.randn(1, 256, 4, generator=torch.Generator().manual_seed(1)),)
"""


def test_tensor_constants_are_written_into_the_generated_forward(tmp_path: Path) -> None:
    path = tmp_path / "constants.py"
    path.write_text(textwrap.dedent(CONSTANTS))
    out = tmp_path / "out"
    assert cli.main(["emit", str(path), "--out", str(out)]) == 0  # verified inside
    source = (out / "constants.py").read_text()
    assert "for start in range(0, 256, " in source
    code = "".join(source.split())
    assert "torch.tensor([1.0,2.0,3.0,4.0],dtype=torch.float32" in code
    assert 'float("-inf")],dtype=torch.float32' in code
    assert "torch.tensor(3,dtype=torch.int64" in code


STRUCTURED = """
    import torch

    class Structured(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(8, 8)
            self.drop = torch.nn.Dropout(0.5)  # p > 0, but the tool runs in eval mode

        def forward(self, x, flags):
            h = self.drop(self.lin(x))
            scores = (h @ h.transpose(-1, -2)).softmax(-1)
            out = scores @ h
            kept = out.masked_fill(~flags[..., None], 0.0)  # a bool input
            return out, [kept, {"rows": out.sum(-1), "count": flags.sum()}]

    def make_model():
        torch.manual_seed(0)
        return Structured()

    def make_inputs():
        g = torch.Generator().manual_seed(1)
        return (torch.randn(1, 384, 8, generator=g), torch.rand(1, 384, generator=g) > 0.5)
"""


def test_nested_outputs_dropout_and_bool_inputs(tmp_path: Path) -> None:
    path = tmp_path / "structured.py"
    path.write_text(textwrap.dedent(STRUCTURED))
    out = tmp_path / "out"
    assert cli.main(["emit", str(path), "--out", str(out)]) == 0
    source = (out / "structured.py").read_text()
    assert "for start in range(0, 384, " in source
    loaded = load_model_file(path)
    module, _ = import_source(source)
    chunked = instantiate(module, loaded.module)
    with torch.no_grad():
        expected, actual = loaded.module(*loaded.inputs), chunked(*loaded.inputs)
    assert type(actual) is tuple and type(actual[1]) is list and type(actual[1][1]) is dict
    assert list(actual[1][1]) == ["rows", "count"]
    assert compare(expected, actual) is None


SEQUENTIAL_MLP = """
    import torch
    from torch import nn

    def make_model():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(16, 256), nn.GELU(), nn.Linear(256, 16), nn.Softmax(-1))

    def make_inputs():
        return (torch.randn(1, 1024, 16, generator=torch.Generator().manual_seed(0)),)
"""

NESTED_SEQUENTIALS = """
    import torch
    from torch import nn

    class Net(nn.Module):  # torchvision and timm CNNs nest Sequentials like this
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
            self.stages = nn.Sequential(
                nn.Sequential(nn.Conv2d(8, 8, 1), nn.ReLU(), nn.Sequential(nn.Conv2d(8, 16, 1))),
                nn.ModuleDict({"proj": nn.Conv2d(16, 16, 1)}),
            )
            self.head = nn.Linear(16, 10)

        def forward(self, x):
            x = self.stages[1]["proj"](self.stages[0](self.stem(x)))
            return self.head(x.mean((2, 3)))

    def make_model():
        torch.manual_seed(0)
        return Net().eval()

    def make_inputs():
        return (torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)),)
"""


@pytest.mark.parametrize(
    "text, containers",
    [
        (SEQUENTIAL_MLP, {"": torch.nn.Sequential}),
        (
            NESTED_SEQUENTIALS,
            {
                "stem": torch.nn.Sequential,
                "stages": torch.nn.Sequential,
                "stages.0": torch.nn.Sequential,
                "stages.0.2": torch.nn.Sequential,
                "stages.1": torch.nn.ModuleDict,
            },
        ),
    ],
    ids=["sequential", "nested"],
)
def test_containers_keep_their_class_and_paths(text: str, containers: dict, tmp_path: Path) -> None:
    """A model that is a Sequential, or nests them, used to fail: 'not subscriptable'."""
    path = tmp_path / "model.py"
    path.write_text(textwrap.dedent(text))
    assert cli.main(["emit", str(path), "--out", str(tmp_path / "out")]) == 0  # verified
    loaded = load_model_file(path)
    module, _ = import_source((tmp_path / "out" / "model.py").read_text())
    chunked = instantiate(module, loaded.module)
    for fqn, kind in containers.items():
        assert isinstance(chunked.get_submodule(fqn), kind), fqn
    assert list(chunked.state_dict()) == list(loaded.module.state_dict())
    with torch.no_grad():
        assert compare(loaded.module(*loaded.inputs), chunked(*loaded.inputs)) is None


def test_an_unexpected_error_names_the_graph_node_and_model_line(
    model_file: Path, tmp_path, monkeypatch, capsys
) -> None:
    """A bug of ours mid-analysis: the one INTERNAL ERROR line names the node being worked on,
    its module and the model line it came from, not only the Python error."""
    real = cost.node_time

    def broken(node, *args, **kwargs):
        if node.target is torch.ops.aten.softmax.int:
            raise TypeError("'NoneType' object is not subscriptable")
        return real(node, *args, **kwargs)

    monkeypatch.setattr(cost, "node_time", broken)
    assert cli.main(["emit", str(model_file), "--out", str(tmp_path / "out")]) == 3
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("INTERNAL ERROR: TypeError")
    assert ", at graph node softmax" in err and "self_attention.py:" in err, err
    assert ", raised at analysis/" in err, err  # where in the tool to look first


def test_generated_code_that_fails_to_run_names_its_line(
    model_file: Path, tmp_path, monkeypatch, capsys
) -> None:
    real = generate.emit_module

    def broken(*args, **kwargs):
        emitted = real(*args, **kwargs)
        wrong = emitted.source.replace("torch.softmax(", "torch.no_such_function(", 1)
        return type(emitted)(wrong, emitted.class_name)

    monkeypatch.setattr(generate, "emit_module", broken)
    assert cli.main(["emit", str(model_file), "--out", str(tmp_path / "out")]) == 3
    err = capsys.readouterr().err.strip()
    assert "failed to run: AttributeError" in err and "torch.no_such_function(" in err, err
    assert ", at line " in err and "kept in " in err


LIBRARY = """
    import torch
    from torch import nn


    def _passed_on(fn):
        def wrapper(*args, **kwargs):  # plumbing: never cited
            return fn(*args, **kwargs)

        return wrapper


    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(32, 32)

        @_passed_on
        def forward(self, x, scale=1.0):
            h = self.proj(x)
            scores = (h @ h.transpose(-1, -2)).softmax(-1) * scale  # LIBRARY LINE
            return scores @ h
"""

WRAPPER = """
    import torch
    from zoo_library import Block


    class Wrapped(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.block = Block()

        def forward(self, x):
            return self.block(x, scale=0.5)  # only delegates


    def make_model():
        torch.manual_seed(0)
        return Wrapped()


    def make_inputs():
        return (torch.randn(1, 256, 32, generator=torch.Generator().manual_seed(0)),)
"""


def test_a_model_file_that_only_delegates_cites_the_librarys_lines(tmp_path, monkeypatch) -> None:
    """The wrapper's one line makes nothing: citations name the library line that made each
    value, past the decorator's wrapper."""
    (tmp_path / "zoo_library.py").write_text(textwrap.dedent(LIBRARY))
    path = tmp_path / "wrapped.py"
    path.write_text(textwrap.dedent(WRAPPER))
    monkeypatch.syspath_prepend(str(tmp_path))
    from analysis.capture import capture

    graph = capture(load_model_file(path))
    softmax = next(n for n in graph.nodes if n.target is torch.ops.aten.softmax.int)
    assert softmax.source.file.endswith("zoo_library.py"), softmax.source
    assert softmax.source.code.endswith("# LIBRARY LINE") and softmax.source.function == "forward"
    assert not any(n.source.function == "wrapper" for n in graph.nodes if n.source)
