"""Measure activation memory: a dispatch-level live-storage tracker on CPU, allocator stats on CUDA.

Activation memory is the peak bytes of tensor storage allocated during a call and alive at the
same time. Storages that exist before the call (parameters, buffers, inputs) are not counted;
the outputs are. A view shares its base's storage and an in-place op allocates nothing.
"""

from __future__ import annotations

import linecache
import sys
from typing import Any, Callable

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class LiveStorageTracker(TorchDispatchMode):
    """Count the bytes of storages created under this mode that are still alive, and the peak."""

    def __init__(self, sites: bool = False) -> None:
        super().__init__()
        #: with `sites`, the Python frames (file, line, function) running when the peak was set
        self.sites = sites
        self.peak_frames: list[tuple[str, int, str]] = []
        #: storages created under the mode and not yet freed, with their sizes
        self.live: dict[StorageWeakRef, int] = {}
        #: storages that existed before the mode: never counted
        self.live_bytes = 0
        self.peak_bytes = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        self._sweep()
        seen_inputs = {
            StorageWeakRef(t.untyped_storage())
            for t in tree_leaves((args, kwargs))
            if isinstance(t, torch.Tensor)
        }
        for t in tree_leaves(out):
            if not isinstance(t, torch.Tensor) or t.device.type == "meta":
                continue
            ref = StorageWeakRef(t.untyped_storage())
            if ref in seen_inputs or ref in self.live:
                continue
            nbytes = t.untyped_storage().nbytes()
            self.live[ref] = nbytes
            self.live_bytes += nbytes
        if self.live_bytes > self.peak_bytes:
            self.peak_bytes = self.live_bytes
            if self.sites:
                self.peak_frames = _frames()
        return out

    def _sweep(self) -> None:
        dead = [ref for ref in self.live if ref.expired()]
        for ref in dead:
            self.live_bytes -= self.live.pop(ref)


def _frames() -> list[tuple[str, int, str]]:
    """The Python frames running now, outermost first (cheap: no source lines read)."""
    found = []
    frame = sys._getframe(2)
    while frame is not None:
        found.append((frame.f_code.co_filename, frame.f_lineno, frame.f_code.co_name))
        frame = frame.f_back
    return found[::-1]


def peak_stack(fn: Callable[..., Any], inputs: tuple[Any, ...]) -> tuple[int, str]:
    """The activation peak of `fn(*inputs)` on CPU and the Python stack that set it, written as
    a traceback (`File "f.py", line 3, in forward` and the line), outermost first."""
    tracker = LiveStorageTracker(sites=True)
    with tracker:
        out = _call(fn, inputs)
    del out
    lines = []
    for file, line, function in tracker.peak_frames:
        code = linecache.getline(file, line).strip()
        lines.append(f'  File "{file}", line {line}, in {function}\n    {code}\n')
    return tracker.peak_bytes, "".join(lines)


def _call(fn: Callable[..., Any], inputs: tuple[Any, ...]) -> Any:
    with torch.no_grad():
        return fn(*inputs)


def measure_peak(fn: Callable[..., Any], inputs: tuple[Any, ...]) -> int:
    """Return the activation memory of `fn(*inputs)` in bytes, outputs included."""
    device = next((t.device for t in tree_leaves(inputs) if isinstance(t, torch.Tensor)), None)
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        out = _call(fn, inputs)
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - before
        del out
        return int(peak)
    tracker = LiveStorageTracker()
    with tracker:
        out = _call(fn, inputs)
    del out
    return tracker.peak_bytes


__all__ = ["LiveStorageTracker", "measure_peak", "peak_stack"]
