"""Compare the memory estimate with measurement node by node, to find where they disagree.

    python scripts/memtrace.py MODEL.py [--top N]

Runs the exported graph under torch.fx's Interpreter (values freed after their last use, like
the estimate assumes) inside the live-storage tracker, and prints the nodes where the measured
peak during the node differs most from the estimated footprint.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from analysis.capture import build_graph, export  # noqa: E402
from analysis.loader import load_model_file  # noqa: E402
from codegen.measure import LiveStorageTracker, measure_peak  # noqa: E402
from analysis.memory import estimate_graph  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args(argv)
    torch.set_grad_enabled(False)
    loaded = load_model_file(args.model)
    ep = export(loaded)
    graph = build_graph(ep, loaded)
    estimate = estimate_graph(graph)
    estimated = dict(zip(estimate.labels, estimate.footprint))
    module = ep.module()
    tracker = LiveStorageTracker()
    measured: dict[str, int] = {}

    class Probe(torch.fx.Interpreter):
        def run_node(self, n: torch.fx.Node):  # noqa: ANN201
            before = tracker.peak_bytes
            tracker.peak_bytes = tracker.live_bytes
            result = super().run_node(n)
            measured[n.name] = tracker.peak_bytes
            tracker.peak_bytes = max(before, tracker.peak_bytes)
            return result

    with tracker:
        Probe(module).run(*loaded.inputs)
    eager = measure_peak(loaded.module, loaded.inputs)
    mib = 2**20
    print(
        f"estimate {estimate.peak / mib:.1f} MiB; graph run {tracker.peak_bytes / mib:.1f} MiB; "
        f"eager module {eager / mib:.1f} MiB"
    )
    rows = [(measured[name] - estimated[name], name) for name in estimated if name in measured]
    rows.sort(key=lambda r: -abs(r[0]))
    for diff, name in rows[: args.top]:
        print(
            f"{name:40s} est {estimated[name] / mib:8.2f}  meas {measured[name] / mib:8.2f}  "
            f"diff {diff / mib:+8.2f} MiB"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
