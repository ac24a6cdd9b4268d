"""Measure this machine for the planner's cost model and write analysis/calibration.json.

    python scripts/calibrate.py

Measures the float32 matmul rate, the bandwidth of an elementwise op (and of a softmax, whose
exponentials make it slower and more cache-sensitive) at working sets from in-cache to far beyond
it, the page faults of writing a fresh large tensor, and the fixed cost of dispatching one small
op.
"""

from __future__ import annotations

import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "analysis" / "calibration.json"


def _median_time(fn, repeats: int = 7) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    torch.set_grad_enabled(False)
    a = torch.randn(1024, 1024)
    b = torch.randn(1024, 1024)
    flops = 2 * 1024**3 / _median_time(lambda: a @ b)
    # Into an output written before: the page faults of a fresh large tensor are measured on
    # their own below (NOTE [Fresh pages] in analysis/cost.py).
    bandwidth = []
    for mib in (0.25, 1, 4, 16, 64, 256):
        n = int(mib * 2**20 / 4)
        x, y, out = torch.randn(n), torch.randn(n), torch.empty(n)
        seconds = _median_time(lambda: torch.add(x, y, out=out), repeats=9)
        bandwidth.append([int(3 * n * 4), 3 * n * 4 / seconds])  # two reads, one write
    transcendental = []  # softmax, exp, gelu: arithmetic-heavy and cache-sensitive
    for mib in (0.25, 1, 4, 16, 64, 256):
        n = int(mib * 2**20 / 4)
        x = torch.randn(n // 1024, 1024)  # attention rows are long
        out = torch.empty_like(x)
        seconds = _median_time(lambda: torch.softmax(x, dim=-1, out=out), repeats=9)
        transcendental.append([int(2 * n * 4), 2 * n * 4 / seconds])  # one read, one write
    # A fresh tensor of 64 MiB is mapped from the system: writing it faults in every page.
    n = 64 * 2**20 // 4
    written = torch.empty(n)
    fresh = _median_time(lambda: torch.empty(n).fill_(1.0)) - _median_time(
        lambda: written.fill_(1.0)
    )
    fault = max(fresh, 0.0) / (4 * n)
    # A matrix product of m rows runs at m / (m + m0) of the full rate: t(m) = a * (m + m0),
    # so m0 is the intercept of time against rows over the slope.
    weight = torch.randn(512, 512)
    rows = [8, 16, 32, 64, 128, 256, 512, 1024]
    times = []
    for m in rows:
        x = torch.randn(m, 512)
        times.append(_median_time(lambda: [x @ weight for _ in range(20)], repeats=9) / 20)
    mean_m, mean_t = statistics.fmean(rows), statistics.fmean(times)
    slope = sum((m - mean_m) * (t - mean_t) for m, t in zip(rows, times)) / sum(
        (m - mean_m) ** 2 for m in rows
    )
    half_rows = max(0.0, (mean_t - slope * mean_m) / slope)
    tiny = torch.randn(4)
    overhead = _median_time(lambda: [torch.add(tiny, tiny) for _ in range(1000)]) / 1000
    data = {
        "machine": f"{platform.machine()} {platform.processor()}".strip(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "matmul_flops_per_s": flops,
        "bandwidth": bandwidth,
        "transcendental_bandwidth": transcendental,
        "op_overhead_s": overhead,
        "gemm_half_rows": half_rows,
        "page_fault_s_per_byte": fault,
        "fresh_allocation_bytes": 32 << 20,  # glibc's largest mmap threshold on 64-bit
    }
    OUT.write_text(json.dumps(data, indent=2) + "\n")
    print(json.dumps(data, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
