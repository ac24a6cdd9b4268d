"""Bad input to `python -m codegen emit|plan`: one `error:` line, exit 1 (2 for usage), no output.

Every case is a model file written into tmp_path from the table below. A line marked `# <- here`
is the model line the error must name (`bad_model.py:LINE: ...`). Most cases call `main()` in
process (fast); a few run the real CLI in a subprocess to prove that nothing else, torch's own
logging and partial-graph dumps included, reaches the terminal.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from codegen.cli import main

ROOT = Path(__file__).resolve().parent.parent
MODEL = "bad_model.py"
MARK = "# <- here"
KEPT = b"# hand-written, must survive a failed emit\n"


def case(name: str, source: str | None, *fragments: str) -> object:
    """Return one table row: the model source (None: no file) and what the message must say."""
    return pytest.param(source, fragments, id=name)


CASES = [
    case("missing-file", None, "no such model file"),
    case(
        "syntax-error",
        """
        import torch

        def make_model(:  # <- here
            return torch.nn.Linear(8, 4)
        """,
        "syntax error",
    ),
    case(
        "import-error",
        """
        import torch
        import not_a_module  # <- here
        """,
        "not_a_module",
    ),
    case(
        "no-make-model",
        """
        import torch

        def make_inputs():
            return (torch.randn(2, 8),)
        """,
        "make_model",
    ),
    case(
        "make-model-raises",
        """
        import torch

        def make_model():
            raise ValueError("no weights for this size")  # <- here

        def make_inputs():
            return (torch.randn(2, 8),)
        """,
        "make_model",
        "ValueError",
        "no weights for this size",
    ),
    case(
        "make-model-not-a-module",
        """
        import torch

        def make_model():
            return "linear"

        def make_inputs():
            return (torch.randn(2, 8),)
        """,
        "make_model",
        "str",
        "torch.nn.Module",
    ),
    case(
        "no-make-inputs",
        """
        import torch

        def make_model():
            return torch.nn.Linear(8, 4)
        """,
        "make_inputs",
    ),
    case(
        "make-inputs-string",
        """
        import torch

        def make_model():
            return torch.nn.Linear(8, 4)

        def make_inputs():
            return "x"
        """,
        "make_inputs",
        "str",
    ),
    case(
        "make-inputs-ints",
        """
        import torch

        def make_model():
            return torch.nn.Linear(8, 4)

        def make_inputs():
            return (2, 8)
        """,
        "make_inputs",
        "tensor",
    ),
    case(
        "shape-rejected-in-forward",
        """
        import torch

        class Model(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.proj = torch.nn.Linear(8, 4)

            def forward(self, x):
                return self.proj(x)  # <- here

        def make_model():
            return Model()

        def make_inputs():
            return (torch.randn(2, 5),)
        """,
        "[2, 5]",
    ),
    case(
        # The model is torch's own Linear: no line of the model file ran, so only the file is named.
        "shape-rejected-by-bare-linear",
        """
        import torch

        def make_model():
            return torch.nn.Linear(8, 4)

        def make_inputs():
            return (torch.randn(2, 5),)
        """,
        "[2, 5]",
    ),
    case(
        "data-dependent-branch",
        """
        import torch

        class Model(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.proj = torch.nn.Linear(8, 4)

            def forward(self, x):
                y = self.proj(x)
                if y.sum() > 0:  # <- here
                    return y * 2
                return y

        def make_model():
            return Model()

        def make_inputs():
            return (torch.randn(2, 8),)
        """,
        "data-dependent",
    ),
    case(
        "large-tensor-constant",
        """
        import torch

        class Model(torch.nn.Module):
            def forward(self, x):
                table = torch.tensor([float(i) for i in range(4096)])  # <- here
                return x + table[: x.shape[-1]]

        def make_model():
            return Model()

        def make_inputs():
            return (torch.randn(2, 8),)
        """,
        "4096 elements",
        "register it as a buffer",
    ),
    case(  # export's own explanation: the guard the Dim's range breaks, and its suggested fix
        "dim-constraint-violated",
        """
        import torch

        class Model(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.proj = torch.nn.Linear(64, 64)

            def forward(self, x):
                b, t, c = x.shape
                return self.proj(x.reshape(b, t // 2, 2 * c))

        def make_model():
            return Model()

        def make_inputs():
            return (torch.randn(1, 512, 32),)

        def dynamic_shapes():
            return {"x": {1: torch.export.Dim("seq", min=2, max=4096)}}
        """,
        "Constraints violated (seq): the declared range breaks the guard",
        "seq // 2",
        "export suggests: _seq = Dim('_seq', min=1, max=2048); seq = 2*_seq",
    ),
]

GOOD_MODEL = """
    import torch

    def make_model():
        return torch.nn.Linear(8, 4)

    def make_inputs():
        return (torch.randn(2, 8),)
    """

USAGE = [
    pytest.param(["--memory-budget", "1MB", "--memory-ratio", "0.5"], id="budget-and-ratio"),
    pytest.param(["--memory-budget", "12 parsecs"], id="unparsable-budget"),
    pytest.param(["--memory-ratio", "1.5"], id="ratio-above-one"),
    pytest.param(["--memory-ratio", "half"], id="ratio-not-a-number"),
]


def write_model(directory: Path, source: str | None) -> tuple[Path, int | None]:
    """Write the model file (unless source is None); return its path and the marked line."""
    path = directory / MODEL
    if source is None:
        return path, None
    text = textwrap.dedent(source).lstrip("\n")
    directory.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    marked = [n for n, line in enumerate(text.splitlines(), 1) if line.endswith(MARK)]
    return path, (marked[0] if marked else None)


def prepare_out(tmp_path: Path, occupied: bool) -> Path:
    """Return an out dir: absent, or holding a file named like the one emit would write."""
    out = tmp_path / "out"
    if occupied:
        out.mkdir()
        (out / f"{Path(MODEL).stem}.py").write_bytes(KEPT)
    return out


def snapshot(directory: Path) -> dict[str, bytes] | None:
    """Return every file and folder under `directory` (hidden ones too), or None if it is absent."""
    if not directory.exists():
        return None
    found: dict[str, bytes] = {}
    for parent, folders, files in os.walk(directory):
        for name in folders:
            found[os.path.relpath(os.path.join(parent, name), directory) + "/"] = b""
        for name in files:
            full = os.path.join(parent, name)
            found[os.path.relpath(full, directory)] = Path(full).read_bytes()
    return found


def run_in_process(argv: list[str], capfd: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Call `main(argv)`; return its exit code, stdout and stderr (captured at the fd level)."""
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse exits on bad usage
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capfd.readouterr()
    return code, out, err


def run_subprocess(argv: list[str]) -> tuple[int, str, str]:
    """Run `python -m codegen argv` from the repository root; return exit code, stdout, stderr."""
    done = subprocess.run(
        [sys.executable, "-m", "codegen", *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done.returncode, done.stdout, done.stderr


def argv_for(mode: str, model: Path, out: Path) -> list[str]:
    """Return the command line for a mode: `plan`, or `emit` into `out`."""
    if mode == "plan":
        return ["plan", str(model)]
    return ["emit", str(model), "--out", str(out)]


def check_user_error(
    code: int, out: str, err: str, line: int | None, fragments: tuple[str, ...]
) -> None:
    """Assert exit 1, empty stdout, and one `error: FILE[:LINE]: ...` line on stderr."""
    assert code == 1, err
    assert "Traceback" not in err, err
    assert out == "", out
    lines = err.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{err}"
    message = lines[0]
    where = rf"{re.escape(MODEL)}:{line}" if line is not None else re.escape(MODEL)
    assert re.match(rf"error: (\S*/)?{where}: ", message), message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


@pytest.mark.parametrize("mode", ["plan", "emit-new-dir", "emit-occupied-dir"])
@pytest.mark.parametrize("source, fragments", CASES)
def test_bad_model_file(
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
    source: str | None,
    fragments: tuple[str, ...],
    mode: str,
) -> None:
    model, line = write_model(tmp_path / "models", source)
    out = prepare_out(tmp_path, occupied=mode == "emit-occupied-dir")
    before = snapshot(out)
    code, stdout, stderr = run_in_process(argv_for(mode, model, out), capfd)
    check_user_error(code, stdout, stderr, line, fragments)
    assert snapshot(out) == before


SUBPROCESS_CASES = {
    "syntax-error": "emit-new-dir",
    "shape-rejected-in-forward": "emit-occupied-dir",
    "data-dependent-branch": "emit-occupied-dir",
}


@pytest.mark.parametrize("name, mode", sorted(SUBPROCESS_CASES.items()))
def test_bad_model_file_in_subprocess(tmp_path: Path, name: str, mode: str) -> None:
    (row,) = [row for row in CASES if row.id == name]
    source, fragments = row.values
    model, line = write_model(tmp_path / "models", source)
    out = prepare_out(tmp_path, occupied=mode == "emit-occupied-dir")
    before = snapshot(out)
    code, stdout, stderr = run_subprocess(argv_for(mode, model, out))
    check_user_error(code, stdout, stderr, line, fragments)
    assert snapshot(out) == before


@pytest.mark.parametrize("occupied", [False, True], ids=["new-dir", "occupied-dir"])
@pytest.mark.parametrize("flags", USAGE)
def test_bad_usage(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], flags: list[str], occupied: bool
) -> None:
    model, _ = write_model(tmp_path / "models", GOOD_MODEL)
    out = prepare_out(tmp_path, occupied)
    before = snapshot(out)
    code, stdout, stderr = run_in_process(["emit", str(model), "--out", str(out), *flags], capfd)
    assert code == 2, stderr
    assert "Traceback" not in stderr
    assert stderr.splitlines()[-1].startswith("python -m codegen emit: error: "), stderr
    assert stdout == ""
    assert snapshot(out) == before


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["plan", MODEL, "--memory-budget", "12 parsecs"], id="plan-bad-budget"),
        pytest.param(["emit", MODEL], id="emit-without-out"),
        pytest.param(["compile", MODEL], id="unknown-command"),
        pytest.param([], id="no-command"),
    ],
)
def test_bad_usage_plan_and_commands(capfd: pytest.CaptureFixture[str], argv: list[str]) -> None:
    code, stdout, stderr = run_in_process(argv, capfd)
    assert code == 2, stderr
    assert "Traceback" not in stderr
    assert "error: " in stderr.splitlines()[-1], stderr
    assert stdout == ""


def test_bad_usage_in_subprocess(tmp_path: Path) -> None:
    model, _ = write_model(tmp_path / "models", GOOD_MODEL)
    out = prepare_out(tmp_path, occupied=True)
    before = snapshot(out)
    code, stdout, stderr = run_subprocess(
        ["emit", str(model), "--out", str(out), "--memory-budget", "12 parsecs"]
    )
    assert code == 2, stderr
    assert "Traceback" not in stderr
    assert "12 parsecs" in stderr.splitlines()[-1], stderr
    assert stdout == ""
    assert snapshot(out) == before


def test_emit_never_writes_over_its_own_model_file(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """`--out` naming the model's own directory would replace the model by its chunked module."""
    model, _ = write_model(tmp_path / "models", GOOD_MODEL)
    before = model.read_text()
    code, stdout, stderr = run_in_process(["emit", str(model), "--out", str(model.parent)], capfd)
    check_user_error(code, stdout, stderr, None, ("would write over the model file itself",))
    assert model.read_text() == before
