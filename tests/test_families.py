"""The four benchmark families at small sizes: the plan meets a 10% target, the module matches
the original, and the estimates are within 5% of measurement for both.

The original is measured as the exported graph runs (each value freed after its last use, the
execution the estimate models) and as the eager module runs: eager Python keeps values bound to
locals until the function returns, which weighs more at small sizes, so eager gets 10% here (the
benchmark holds 5% at full size).

Small inputs leave less to gain than the benchmark sizes (the residual stream weighs more), so
the target here is 30% of the original; the benchmark holds the 10% target at full size.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch

from analysis.capture import export
from codegen.measure import measure_peak
from analysis.select import Target
from codegen.generate import generate
from codegen.verify import compare, import_source, instantiate
from tests.conftest import EXAMPLES

#: per family: how to build a small model and small inputs from the example file's module
SMALL = {
    "gpt": (
        "family.GPT(depth=2)",
        "(torch.randint(0, family.VOCAB, (1, 512), generator=g),)",
    ),
    "vit": (
        "family.ViT(image=320, depth=2)",
        "(torch.randn(1, 3, 320, 320, generator=g),)",
    ),
    "evoformer": (
        "family.Evoformer(depth=1)",
        "(torch.randn(16, 96, family.C_M, generator=g), torch.randn(96, 96, family.C_Z, generator=g))",
    ),
    "unet": (
        "family.UNet()",
        "(torch.randn(1, 4, 40, 40, generator=g), torch.tensor([500.0]),"
        " torch.randn(1, 77, family.CONTEXT_WIDTH, generator=g))",
    ),
}

TEMPLATE = """
    import importlib.util
    import torch

    _spec = importlib.util.spec_from_file_location("family_{name}", {path!r})
    family = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(family)

    def make_model():
        torch.manual_seed(0)
        return {model}

    def make_inputs():
        g = torch.Generator().manual_seed(0)
        return {inputs}
"""


@pytest.mark.parametrize("name", sorted(SMALL))
def test_family_at_small_size(name: str, tmp_path: Path) -> None:
    model, inputs = SMALL[name]
    path = tmp_path / f"small_{name}.py"
    source = TEMPLATE.format(
        name=name, path=str(EXAMPLES / f"{name}.py"), model=model, inputs=inputs
    )
    path.write_text(textwrap.dedent(source))
    planned, emitted = generate(path, Target(ratio=0.3), "--memory-ratio 0.3")
    loaded, plan = planned.loaded, planned.plan
    assert plan.regions and plan.met, (plan.planned_peak_bytes, plan.budget_bytes)
    module, _ = import_source(emitted.source)
    chunked = instantiate(module, loaded.module)
    with torch.no_grad():
        assert compare(loaded.module(*loaded.inputs), chunked(*loaded.inputs)) is None
    eager = measure_peak(loaded.module, loaded.inputs)
    graph_run = measure_peak(export(loaded).module(), loaded.inputs)
    after = measure_peak(chunked, loaded.inputs)
    assert abs(plan.original_peak_bytes - graph_run) <= 0.05 * graph_run, (
        plan.original_peak_bytes,
        graph_run,
    )
    assert abs(plan.original_peak_bytes - eager) <= 0.10 * eager, (plan.original_peak_bytes, eager)
    assert abs(plan.planned_peak_bytes - after) <= 0.05 * after, (plan.planned_peak_bytes, after)
    assert after <= 0.3 * 1.05 * eager
