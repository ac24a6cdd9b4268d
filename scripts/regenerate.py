"""Regenerate every module in generated/ from examples/, verified, with the default target, as
the cost model plans it: a plan made without the default time limit is not timed
(`codegen.generate.TIME_UNLIMITED`), so the files do not depend on the machine's load.

python scripts/regenerate.py
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from codegen import generate  # noqa: E402
from codegen.cli import main  # noqa: E402


def examples() -> list[Path]:
    """Return the example model files, in a stable order."""
    return sorted((ROOT / "examples").glob("*.py"))


def regenerate() -> int:
    generate.TIME_UNLIMITED = False
    for path in examples():
        code = main(["emit", str(path), "--out", str(ROOT / "generated")])
        if code:
            return code
    return 0


if __name__ == "__main__":
    sys.exit(regenerate())
