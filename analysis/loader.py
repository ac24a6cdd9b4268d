"""Load a model file (Contract 1): `make_model()`, `make_inputs()`, optional `dynamic_shapes()`."""

from __future__ import annotations

import importlib.util
import sys
import traceback
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

import torch

from analysis.errors import UserError


@dataclass(frozen=True)
class LoadedModel:
    """A model file's module in eval mode, its example inputs and dynamic-shape spec."""

    #: the model file, resolved
    path: Path
    #: `make_model()` in eval mode
    module: torch.nn.Module
    #: `make_inputs()`, positional
    inputs: tuple[Any, ...]
    #: `dynamic_shapes()`, or None when the file declares no dynamic dims
    dynamic_shapes: Any
    #: the path as the user gave it, for messages
    shown: Path | None = None


def model_frame(exc: BaseException, path: Path) -> str | None:
    """Return "file:line" of the deepest traceback frame inside `path`, if any."""
    where = None
    for frame in traceback.extract_tb(exc.__traceback__):
        if Path(frame.filename).resolve() == path.resolve():
            where = f"{path}:{frame.lineno}"
    return where


def describe(exc: BaseException) -> str:
    """Return the first line of an exception's message, with its type."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


#: the name under which a model file is imported, followed by a unique suffix
MODEL_MODULE_PREFIX = "_autochunk_model_"


def _import(path: Path) -> ModuleType:
    if not path.is_file():
        raise UserError(f"{path}: no such model file")
    name = f"{MODEL_MODULE_PREFIX}{uuid.uuid4().hex}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise UserError(f"{path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    bytecode, sys.dont_write_bytecode = sys.dont_write_bytecode, True  # leave no __pycache__
    try:
        spec.loader.exec_module(module)
    except SyntaxError as exc:
        raise UserError(f"{path}:{exc.lineno}: syntax error: {exc.msg}") from None
    except Exception as exc:  # the user's import-time code raised
        where = model_frame(exc, path) or str(path)
        raise UserError(f"{where}: error while importing the model file: {describe(exc)}") from None
    finally:
        sys.dont_write_bytecode = bytecode
    return module


def _call(module: ModuleType, path: Path, name: str, required: bool) -> Any:
    fn: Callable[[], Any] | None = getattr(module, name, None)
    if fn is None:
        if required:
            raise UserError(f"{path}: defines no {name}() (see Contract 1 in DESIGN.md)")
        return None
    if not callable(fn):
        raise UserError(f"{path}: {name} is not a function")
    try:
        return fn()
    except Exception as exc:
        where = model_frame(exc, path) or str(path)
        raise UserError(f"{where}: {name}() raised {describe(exc)}") from None


def load_model_file(path: str | Path) -> LoadedModel:
    """Import a model file and call its factories, turning every failure into a UserError."""
    path = Path(path)
    module = _import(path)
    model = _call(module, path, "make_model", required=True)
    if not isinstance(model, torch.nn.Module):
        raise UserError(
            f"{path}: make_model() returned {type(model).__name__}, not a torch.nn.Module"
        )
    inputs = _call(module, path, "make_inputs", required=True)
    if isinstance(inputs, list):
        inputs = tuple(inputs)
    if not isinstance(inputs, tuple):
        raise UserError(f"{path}: make_inputs() must return a tuple, not {type(inputs).__name__}")
    if not any(isinstance(x, torch.Tensor) for x in inputs):
        raise UserError(f"{path}: make_inputs() returned no tensor among its inputs")
    dynamic = _call(module, path, "dynamic_shapes", required=False)
    return LoadedModel(
        path=path.resolve(), module=model.eval(), inputs=inputs, dynamic_shapes=dynamic, shown=path
    )


__all__ = ["LoadedModel", "MODEL_MODULE_PREFIX", "describe", "load_model_file", "model_frame"]
