"""Verify a generated module against the original on the example inputs."""

from __future__ import annotations

import copy
import importlib.util
import sys
import tempfile
import traceback
import uuid
from pathlib import Path
from types import ModuleType
from typing import Any, Sequence

import torch
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten

from analysis.errors import InternalError
from analysis.fastpath import is_padding_check
from analysis.ir import Graph
from codegen.measure import measure_peak

#: tolerances of Contract 3 (float32)
RTOL = 1e-4
ATOL = 1e-5
#: NOTE [Half-precision tolerance]
#: A bf16 or fp16 output is compared with a float32 run of the original (its weights and
#: floating inputs converted): the chunked module's largest error against it may be at most
#: twice the original's own, plus this share (the dtype's epsilon) of the reference's largest
#: magnitude, for outputs the original gets exactly right. Summing in another order (a chunk
#: at a time) changes the rounding, never the precision; a bug shows as errors far above it.
HALF = {torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}


def import_source(source: str, directory: Path | None = None) -> tuple[ModuleType, Path]:
    """Write `source` to a temp file and import it; return the module and the file."""
    handle = tempfile.NamedTemporaryFile(
        "w", suffix=".py", prefix="autochunk_", dir=directory, delete=False
    )
    with handle:
        handle.write(source)
    path = Path(handle.name)
    name = f"_autochunk_generated_{uuid.uuid4().hex}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module, path


def instantiate(module: ModuleType, original: torch.nn.Module) -> torch.nn.Module:
    """Return the generated class built `from_module(original)`."""
    (class_name,) = module.__all__
    return getattr(module, class_name).from_module(original)


def compare(expected: Any, actual: Any, reference: Any = None) -> str | None:
    """Return why two model outputs differ, or None when they match (same structure, close:
    Contract 3's tolerances in float32; half-precision outputs against `reference`, the
    original's float32 outputs, NOTE [Half-precision tolerance])."""
    flat_e, spec_e = tree_flatten(expected)
    flat_a, spec_a = tree_flatten(actual)
    flat_r = tree_flatten(reference)[0] if reference is not None else [None] * len(flat_e)
    if spec_e != spec_a:
        return f"output structure differs: {spec_a} instead of {spec_e}"
    for index, (e, a, r) in enumerate(zip(flat_e, flat_a, flat_r)):
        if isinstance(e, torch.Tensor) and e.dtype in HALF and isinstance(r, torch.Tensor):
            problem = _half_error(e, a, r)
            if problem:
                return f"output {index} differs: {problem}"
        elif isinstance(e, torch.Tensor):
            try:
                torch.testing.assert_close(a, e, rtol=RTOL, atol=ATOL, equal_nan=True)
            except AssertionError as exc:
                first = str(exc).strip().splitlines()[0]
                return f"output {index} differs: {first}"
        elif e != a:
            return f"output {index} differs: {a!r} instead of {e!r}"
    return None


def _half_error(expected: torch.Tensor, actual: torch.Tensor, reference: torch.Tensor) -> str:
    """Why a half-precision output is further from the float32 reference than the original's
    own rounding allows, or '' when it is not."""
    if actual.shape != expected.shape or actual.dtype != expected.dtype:
        return (
            f"{actual.dtype}{list(actual.shape)} instead of {expected.dtype}{list(expected.shape)}"
        )
    reference = reference.float()
    theirs = (expected.float() - reference).abs().nan_to_num(0.0).max().item()
    ours = (actual.float() - reference).abs().nan_to_num(0.0).max().item()
    scale = reference.abs().nan_to_num(0.0).max().item()
    bound = 2 * theirs + HALF[expected.dtype] * scale
    if ours > bound:
        return (
            f"largest error against float32 {ours:.3g}, over twice the original's {theirs:.3g} "
            f"(+ {HALF[expected.dtype]:.3g} of {scale:.3g})"
        )
    return ""


def float_reference(original: torch.nn.Module, inputs: tuple[Any, ...], outputs: Any) -> Any:
    """The original's outputs in float32 (a float32 copy of it, on float32 inputs), when any
    output is in half precision; else None."""
    flat, _ = tree_flatten(outputs)
    if not any(isinstance(t, torch.Tensor) and t.dtype in HALF for t in flat):
        return None
    wide = copy.deepcopy(original).float()
    cast = tree_map(
        lambda t: t.float() if isinstance(t, torch.Tensor) and t.dtype in HALF else t, inputs
    )
    with torch.no_grad():
        return wide(*cast)


def verify(
    source: str,
    original: torch.nn.Module,
    inputs: tuple[Any, ...],
    also: Sequence[tuple[Any, ...]] = (),
) -> torch.nn.Module:
    """Return the generated module, built from `original`'s weights, once it matches on the
    inputs, and on each tuple of inputs in `also` (`checked_inputs`: the paths run-time checks
    choose); raise InternalError (keeping the source in a temp file) unless it does."""
    try:
        module, path = import_source(source)
    except Exception as exc:
        _, kept = import_source_text(source)
        raise InternalError(f"generated module does not import: {exc}", str(kept)) from exc
    try:
        generated = instantiate(module, original)
        problem = None
        for each in (inputs, *also):
            problem = problem or _mismatch(original, generated, each)
        if problem is None and "_hooked(self)" in source:  # NOTE [Outputs in place]
            with generated.register_forward_hook(lambda *args: None):  # the buffers' path
                problem = _mismatch(original, generated, inputs)
        if problem is None and " is None:  # one chunk" in source:  # NOTE [One chunk]
            problem = _one_chunk_mismatch(module, original, generated, inputs)
    except Exception as exc:
        raise InternalError(
            f"generated module failed to run: {type(exc).__name__}: {exc}{_line_in(exc, path)}",
            str(path),
        ) from exc
    if problem is not None:
        raise InternalError(f"generated module does not match the original: {problem}", str(path))
    path.unlink()
    return generated


def _one_chunk_mismatch(
    module: ModuleType, original: torch.nn.Module, generated: torch.nn.Module, inputs: Any
) -> str | None:
    """The mismatch, if any, with every loop sized at run time taking all its rows in one
    chunk, as on a device with memory to spare (NOTE [One chunk]): its output is then the
    chunk itself, a path the example's chunks do not take. None when no loop is sized at run
    time (no `_rows`): a loop of a fixed chunk over a dynamic length takes that path only on an
    input no longer than its chunk, which this check cannot force."""
    rows = getattr(module, "_rows", None)
    if rows is None:
        return None
    module._rows = lambda *args: 1 << 62
    try:
        return _mismatch(original, generated, inputs)
    finally:
        module._rows = rows


def _line_in(exc: BaseException, path: Path) -> str:
    """ ", at line N: <code>" for the last line of the generated file the error passed through."""
    found = None
    for frame in traceback.extract_tb(exc.__traceback__):
        if Path(frame.filename) == path:
            found = frame
    return f", at line {found.lineno}: {found.line}" if found is not None else ""


def _mismatch(
    original: torch.nn.Module, generated: torch.nn.Module, inputs: tuple[Any, ...]
) -> str | None:
    """Why the two modules' outputs and buffers differ after one run on `inputs`, or None."""
    with torch.no_grad():  # the two share their buffers: each runs from the same state
        before = _buffers(original)
        expected = original(*inputs)
        updated = _buffers(original)
        _restore(original, before)
        actual = generated(*inputs)
    reference = float_reference(original, inputs, expected)
    return compare(expected, actual, reference) or _compare_buffers(updated, _buffers(original))


def checked_inputs(graph: Graph, inputs: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    """The example inputs once more with every input a run-time padding check reads switched to
    the other path (NOTE [Padding checked at run time]): all ones where the example pads, and
    its first element 0 (one token of left padding) where it pads nothing. Verification runs
    both paths; [] when the graph has no such check."""
    checked = {n.args[0].name for n in graph.nodes if is_padding_check(n)}
    if not checked:
        return []
    names = [node.name for node in graph.nodes if node.kind == "input"]
    flat, spec = tree_flatten(inputs)
    if len(flat) != len(names):
        raise InternalError(f"cannot match the inputs to the graph's to check {sorted(checked)}")
    switched = [_other_path(x) if n in checked else x for n, x in zip(names, flat)]
    return [tuple(tree_unflatten(switched, spec))]


def _other_path(mask: torch.Tensor) -> torch.Tensor:
    if not bool(mask.all()):
        return torch.ones_like(mask)
    padded = mask.clone()
    padded.view(-1)[0] = 0
    return padded


def _buffers(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: buffer.clone() for name, buffer in module.named_buffers()}


def _restore(module: torch.nn.Module, saved: dict[str, torch.Tensor]) -> None:
    for name, buffer in module.named_buffers():
        buffer.copy_(saved[name])


def _compare_buffers(
    expected: dict[str, torch.Tensor], actual: dict[str, torch.Tensor]
) -> str | None:
    """Return which buffer the generated forward left in another state than the original's."""
    for name, value in expected.items():
        if compare(value, actual[name]) is not None:
            return f"buffer {name} differs after the forward"
    return None


def import_source_text(source: str) -> tuple[None, Path]:
    """Keep a source that failed to import in a temp file, for the error report."""
    handle = tempfile.NamedTemporaryFile("w", suffix=".py", prefix="autochunk_", delete=False)
    with handle:
        handle.write(source)
    return None, Path(handle.name)


def measure_pair(
    original: torch.nn.Module, generated: torch.nn.Module, inputs: tuple[Any, ...]
) -> tuple[int, int]:
    """Return the measured activation peaks of the original and the generated module."""
    return measure_peak(original, inputs), measure_peak(generated, inputs)


__all__ = ["compare", "import_source", "instantiate", "measure_pair", "verify"]
