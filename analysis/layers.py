"""Standard `torch.nn` layers of a model, and the arguments that build each one again.

The generated module builds these layers as instances of their own class (so hooks, layer
swaps and tensor-parallel plans address them as in the original) and calls them as modules
where the traced op is exactly their forward. A layer counts when its class is defined in
`torch.nn`, it has no children, and building the class again from its attributes gives the
same `extra_repr` and the same parameters and buffers (names, shapes, dtypes): anything else
stays a plain module holding its tensors.
"""

from __future__ import annotations

import ast
import inspect
from dataclasses import dataclass
from typing import Any

import torch

#: constructor arguments that are not the layer's configuration
_NOT_CONFIG = {"self", "device", "dtype", "_weight", "_freeze"}


@dataclass(frozen=True)
class Layer:
    """How to build one layer again."""

    #: the class, in `torch.nn`
    cls: type
    #: required constructor arguments, in order
    args: tuple[Any, ...]
    #: optional ones that differ from their default, in signature order
    kwargs: tuple[tuple[str, Any], ...]


def standard_layers(module: torch.nn.Module) -> dict[str, Layer]:
    """Return the model's standard `torch.nn` layers by path."""
    found = {}
    for path, child in module.named_modules(remove_duplicate=False):
        layer = _rebuildable(child) if path else None
        if layer is not None:
            found[path] = layer
    return found


def _rebuildable(child: torch.nn.Module) -> Layer | None:
    cls = type(child)
    if not cls.__module__.startswith("torch.nn.modules.") or any(True for _ in child.children()):
        return None
    if getattr(torch.nn, cls.__name__, None) is not cls:
        return None
    try:
        signature = inspect.signature(cls.__init__)
    except (TypeError, ValueError):
        return None
    args: list[Any] = []
    kwargs: list[tuple[str, Any]] = []
    for name, parameter in signature.parameters.items():
        if name in _NOT_CONFIG or parameter.kind in (
            parameter.VAR_POSITIONAL,
            parameter.VAR_KEYWORD,
        ):
            continue
        if name == "bias" and isinstance(getattr(child, "bias", None), (torch.Tensor, type(None))):
            value: Any = child.bias is not None
        elif hasattr(child, name):
            value = getattr(child, name)
        else:
            return None
        if not _writable(value):
            return None  # a tensor, or a float like inf that has no literal
        if parameter.default is parameter.empty:
            args.append(value)
        elif not _is_default(value, parameter.default):
            kwargs.append((name, value))
    dtypes = {t.dtype for t in child.parameters()}
    if len(dtypes) > 1:
        return None
    if dtypes and (dtype := dtypes.pop()) != torch.get_default_dtype():
        kwargs.append(("dtype", dtype))
    layer = Layer(cls, tuple(args), tuple(kwargs))
    return layer if _same_layer(child, layer) else None


def _writable(value: Any) -> bool:
    """Whether the value's repr is Python that gives it back (a dtype, or a plain literal)."""
    if isinstance(value, torch.dtype):
        return True
    try:
        return bool(ast.literal_eval(repr(value)) == value)
    except (ValueError, SyntaxError):
        return False


def _is_default(value: Any, default: Any) -> bool:
    """Whether a value is its argument's default, a tuple of it included (`stride=(1, 1)`)."""
    if isinstance(value, tuple) and not isinstance(default, tuple):
        return bool(value) and all(v == default for v in value)
    return bool(value == default)


def _same_layer(child: torch.nn.Module, layer: Layer) -> bool:
    """Whether building `layer` gives `child`'s configuration and tensors."""
    try:
        with torch.device("meta"):
            rebuilt = layer.cls(*layer.args, **dict(layer.kwargs))
    except Exception:  # an attribute that is not its constructor argument after all
        return False

    def tensors(m: torch.nn.Module) -> list[tuple[str, tuple[int, ...], torch.dtype]]:
        named = [*m.named_parameters(), *m.named_buffers()]
        return [(name, tuple(t.shape), t.dtype) for name, t in named]

    persistent = set(child.state_dict(keep_vars=True)) == set(rebuilt.state_dict(keep_vars=True))
    return (
        rebuilt.extra_repr() == child.extra_repr()
        and tensors(rebuilt) == tensors(child)
        and persistent
    )


__all__ = ["Layer", "standard_layers"]
