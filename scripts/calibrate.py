"""Measure this machine for the planner's cost model and write analysis/calibration.json.

    python scripts/calibrate.py

Measures the float32 matmul rate, the bandwidth of an elementwise op (and of a softmax, whose
exponentials make it slower and more cache-sensitive) at working sets from in-cache to far beyond
it, and the fixed cost of dispatching one small op.
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
    bandwidth = []
    for mib in (0.25, 1, 4, 16, 64, 256):
        n = int(mib * 2**20 / 4)
        x, y = torch.randn(n), torch.randn(n)
        seconds = _median_time(lambda: torch.add(x, y), repeats=9)
        bandwidth.append([int(3 * n * 4), 3 * n * 4 / seconds])  # two reads, one write
    transcendental = []  # softmax, exp, gelu: arithmetic-heavy and cache-sensitive
    for mib in (0.25, 1, 4, 16, 64, 256):
        n = int(mib * 2**20 / 4)
        x = torch.randn(n // 1024, 1024)  # attention rows are long
        seconds = _median_time(lambda: torch.softmax(x, dim=-1), repeats=9)
        transcendental.append([int(2 * n * 4), 2 * n * 4 / seconds])  # one read, one write
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
    }
    OUT.write_text(json.dumps(data, indent=2) + "\n")
    print(json.dumps(data, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
