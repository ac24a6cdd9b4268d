"""Tensor parallelism applies to the generated module by the original's names: the MLP's
Linears are real `nn.Linear` layers called as modules, so `ColwiseParallel` and
`RowwiseParallel` shard them, and two CPU processes over gloo give the original's output."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

ROOT = Path(__file__).resolve().parent.parent
WORLD = 2


def _run(rank: int, init: str, out: str) -> None:
    sys.path.insert(0, str(ROOT))
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.parallel import (
        ColwiseParallel,
        RowwiseParallel,
        parallelize_module,
    )

    from analysis.loader import load_model_file
    from codegen.verify import compare, import_source, instantiate

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=WORLD)
    try:
        torch.set_grad_enabled(False)
        loaded = load_model_file(ROOT / "examples" / "gpt.py")
        module, _ = import_source((ROOT / "generated" / "gpt.py").read_text())
        chunked = instantiate(module, loaded.module)
        ids = torch.randint(0, 512, (1, 200), generator=torch.Generator().manual_seed(0))
        expected = loaded.module(ids)
        plan = {}
        for block in range(len(loaded.module.blocks)):
            plan[f"blocks.{block}.mlp.fc"] = ColwiseParallel()
            plan[f"blocks.{block}.mlp.out"] = RowwiseParallel()
        parallelize_module(chunked, init_device_mesh("cpu", (WORLD,)), plan)
        shard = tuple(chunked.blocks[0].mlp.fc.weight.to_local().shape)
        problem = compare(expected, chunked(ids))
        Path(f"{out}.{rank}").write_text(f"{shard}|{problem}")
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not built")
def test_tensor_parallel_plan_by_the_originals_names(tmp_path: Path) -> None:
    out = str(tmp_path / "result")
    mp.spawn(_run, args=(f"file://{tmp_path / 'init'}", out), nprocs=WORLD)
    for rank in range(WORLD):
        shard, problem = Path(f"{out}.{rank}").read_text().split("|")
        assert shard == "(512, 256)"  # each process holds half of the feed-forward's rows
        assert problem == "None", problem
