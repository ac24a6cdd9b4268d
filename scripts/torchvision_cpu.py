"""Make the registry's torchvision wheel importable beside the CPU build of torch.

python scripts/torchvision_cpu.py

The torchvision wheel on the package registry is built against the CUDA build of torch. Beside
the CPU build this machine installs, its compiled ops (`torchvision._C`: nms, roi_align, ...)
cannot load, and `import torchvision` then fails while registering fake kernels for two of them
("operator torchvision::nms does not exist"). Every model in torchvision is plain Python and
needs none of those ops, and transformers and timm import torchvision whenever it is installed,
so that one failure breaks them all.

When `import torchvision` fails that way, this script installs a small import hook in
site-packages (a `.pth` file and the module below): the first `import torchvision` in a process
declares the two missing operator schemas, with no kernels, before torchvision loads. Calling
those ops still fails, loudly. Nothing is installed where torchvision already imports, and the
script checks the result in a fresh interpreter.
"""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

NAME = "autochunk_torchvision_cpu"

HOOK = '''"""Installed by AutoChunk's scripts/torchvision_cpu.py: declare the torchvision operators a
CUDA-built torchvision wheel registers fake kernels for, when its compiled ops cannot load."""

import importlib.abc
import sys


class _Declare(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != "torchvision":
            return None
        sys.meta_path.remove(self)
        import torch

        if not hasattr(torch.ops.torchvision, "nms"):
            library = torch.library.Library("torchvision", "FRAGMENT")
            for op in ("nms", "qnms"):
                library.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
            _libraries.append(library)  # kept alive: the schemas go when it is collected
        return None


_libraries = []
sys.meta_path.insert(0, _Declare())
'''


def imports() -> subprocess.CompletedProcess:
    """Try `import torchvision` in a fresh interpreter."""
    return subprocess.run(
        [sys.executable, "-c", "import torchvision.models"], capture_output=True, text=True
    )


def main() -> int:
    first = imports()
    if first.returncode == 0:
        print("torchvision imports as it is; nothing installed")
        return 0
    if "torchvision::nms does not exist" not in first.stderr:
        print(first.stderr.strip().splitlines()[-1], file=sys.stderr)
        return 1
    site = Path(sysconfig.get_paths()["purelib"])
    (site / f"{NAME}.py").write_text(HOOK)
    (site / f"{NAME}.pth").write_text(f"import {NAME}\n")
    second = imports()
    if second.returncode != 0:
        print(second.stderr.strip().splitlines()[-1], file=sys.stderr)
        return 1
    print(f"installed {site / NAME}.pth: torchvision imports without its compiled ops")
    return 0


if __name__ == "__main__":
    sys.exit(main())
