"""NOTE [Outputs in place]: a loop's output takes the storage of a value the loop reads for the
last time, row by row, instead of a buffer of its own; never a value read after the loop, nor
one a module's hook could see."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

import analysis.loops
import analysis.search
from codegen.cli import main

MODEL = """
    import torch
    from torch import nn

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.mix = nn.Softmax(dim=1)
            self.norm = nn.LayerNorm(64)
            self.up, self.down = nn.Linear(64, 1024), nn.Linear(1024, 64)

        def forward(self, x):
            h = torch.softmax(x, dim=1)  # mixes the rows: made before the loop
            BODY

    def make_model():
        torch.manual_seed(0)
        return Model().eval()

    def make_inputs():
        return (torch.randn(1, 4096, 64, generator=torch.Generator().manual_seed(0)),)

    def dynamic_shapes():
        return {"x": {1: torch.export.Dim("seq", min=2, max=4096)}}
"""

BODIES = {
    # read for the last time by the loop, made in the module that holds it
    "last read": "return h + self.down(torch.relu(self.up(self.norm(h))))",
    # read after the loop: its rows must survive it
    "read after": "y = h + self.down(torch.relu(self.up(self.norm(h))))\n"
    "        return y + h.flip(1)",
    # a layer's result: a hook of the layer may keep it
    "a layer's": "h = self.mix(x)\n        return h + self.down(torch.relu(self.up(self.norm(h))))",
}


def _emit(tmp_path: Path, capsys, body: str) -> tuple[str, int, str]:
    """The generated forward's source, its planned peak and the emit line."""
    path = tmp_path / "model.py"
    path.write_text(textwrap.dedent(MODEL).replace("BODY", body))
    assert main(["plan", str(path), "--json", "--memory-ratio", "0.02"]) == 0
    planned = json.loads(capsys.readouterr().out)["planned_peak_bytes"]
    assert (
        main(["emit", str(path), "--out", str(tmp_path / "out"), "--memory-ratio", "0.02"]) == 0
    )  # verified
    line = capsys.readouterr().out
    return (tmp_path / "out" / "model.py").read_text(), planned, line


@pytest.mark.parametrize("case", list(BODIES))
def test_a_loop_output_overwrites_only_a_value_nothing_else_reads(
    tmp_path: Path, capsys, monkeypatch, case: str
) -> None:
    # loops only, no sums over the up projection's features (NOTE [Sums over the chunks]),
    # which write into `h` by rules of their own, tested in `tests/test_sums.py`
    monkeypatch.setattr(analysis.search, "contraction", lambda *args: None)
    source, planned, line = _emit(tmp_path, capsys, BODIES[case])
    # the loop is sized at run time: at one chunk, its chunk is `add` (NOTE [One chunk])
    code = " ".join(source.split())
    plain = "add = h if chunk < seq else None" in code
    guarded = (
        "if chunk < seq: add = h if not _hooked(self) else torch.empty_like(h) else: add = None"
        in code
    )
    assert (plain, guarded) == (case == "last read", case == "a layer's"), source
    assert "1 chunk loop(s)" in line, line
    estimated = line.split("estimated peak ", 1)[1].split(" for ", 1)[0]
    assert estimated == line.split("measured ", 1)[1].split(";")[0].strip(), line
    if case == "read after":
        return
    # the same plan with a buffer of its own holds the buffer's 1 MiB more
    monkeypatch.setattr(analysis.loops, "_reuses", lambda *args: ())
    (tmp_path / "out" / "model.py").unlink()
    _, buffered, _ = _emit(tmp_path, capsys, BODIES[case])
    assert buffered - planned == 4096 * 64 * 4, (buffered, planned)


def test_a_hook_keeping_a_layers_result_sees_it_unchanged(tmp_path: Path, capsys) -> None:
    """A layer's result a loop would write over is kept whole while any module has a forward
    hook: a hook that keeps the layer's output (no copy) sees what the original's sees."""
    import torch

    from analysis.loader import load_model_file
    from codegen.verify import import_source, instantiate

    source, _, _ = _emit(tmp_path, capsys, BODIES["a layer's"])
    loaded = load_model_file(tmp_path / "model.py")
    module, _ = import_source(source)
    chunked = instantiate(module, loaded.module)
    kept: dict[str, torch.Tensor] = {}
    for name, model in (("original", loaded.module), ("chunked", chunked)):
        model.mix.register_forward_hook(lambda m, args, out, name=name: kept.__setitem__(name, out))
    # the example's length, and one short enough to run as one chunk (NOTE [One chunk])
    for x in (*loaded.inputs, loaded.inputs[0][:, :8]):
        with torch.no_grad():
            expected, actual = loaded.module(x), chunked(x)
        torch.testing.assert_close(actual, expected)
        torch.testing.assert_close(kept["chunked"], kept["original"], rtol=0, atol=0)


def test_an_output_of_another_shape_overwrites_a_value_viewed_in_it(tmp_path: Path, capsys) -> None:
    """A loop whose output has another shape than the value it reads for the last time, but the
    same bytes to each row of the loop (Swin's windows before its attention, and the attention's
    output after), writes into that value viewed in the output's shape; the estimate holds it
    one full tensor lower than a buffer of its own, and the module verifies."""
    body = (
        "g = torch.softmax(h.view(1, -1, 8, 8), dim=1)  # made before the loop, in another shape\n"
        "        return g.view(1, -1, 64) + self.down(torch.relu(self.up(self.norm(g.view(1, -1, 64)))))"
    )
    source, planned, line = _emit(tmp_path, capsys, body)
    assert "add = g.view(1, seq, 64) if chunk < seq else None" in " ".join(source.split()), source
    planned_text = line.split("estimated peak ", 1)[1].split(" for ", 1)[0].split(" -> ")[1]
    assert line.split("measured ", 1)[1].split(" -> ")[1].startswith(planned_text + " "), line
    import analysis.loops

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(analysis.loops, "_reuses", lambda *args: ())
        (tmp_path / "out" / "model.py").unlink()
        _, buffered, _ = _emit(tmp_path, capsys, body)
    assert buffered - planned == 4096 * 64 * 4, (buffered, planned)
