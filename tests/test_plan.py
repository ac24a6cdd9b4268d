"""Search and selection on small models, and `plan --json` (Contract 2)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch

from analysis.capture import capture
from analysis.dimflow import tensor_inputs
from analysis.ops import dim_rule
from analysis.loader import load_model_file
from analysis.memory import estimate_graph
from analysis.select import Target, make_plan
from codegen.cli import main
from analysis.lower import lower
from codegen.emit import emit_module
from codegen.plot import timelines
from codegen.verify import verify

ATTENTION = """
    import torch
    from torch import nn

    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv = nn.Linear(32, 96)
            self.proj = nn.Linear(32, 32)

        def forward(self, x):
            q, k, v = self.qkv(x).split(32, dim=-1)
            q = q.view(1, -1, 4, 8).transpose(1, 2)
            k = k.view(1, -1, 4, 8).transpose(1, 2)
            v = v.view(1, -1, 4, 8).transpose(1, 2)
            att = (q @ k.transpose(-1, -2)) * 0.35
            att = att.softmax(dim=-1)
            y = (att @ v).transpose(1, 2).reshape(1, -1, 32)
            return {TAIL}

    def make_model():
        torch.manual_seed(0)
        return Attention()

    def make_inputs():
        return (torch.randn(1, 256, 32, generator=torch.Generator().manual_seed(0)),)
"""


def _write(tmp_path: Path, tail: str = "self.proj(y)") -> Path:
    path = tmp_path / "attention.py"
    path.write_text(textwrap.dedent(ATTENTION).replace("{TAIL}", tail))
    return path


def _plan(path: Path, target: Target):
    loaded = load_model_file(path)
    graph = capture(loaded)
    return loaded, graph, make_plan(graph, target)


def test_attention_is_chunked_along_heads_or_queries(tmp_path: Path) -> None:
    loaded, graph, plan = _plan(_write(tmp_path), Target(ratio=0.3))
    assert plan.met and plan.regions
    (region,) = plan.regions
    loop = dict(region.loop)
    softmax = next(n.name for n in graph.ops() if n.target == torch.ops.aten.softmax.int)
    # [1, heads, query, key]: by heads or by query rows, never across the softmax's keys
    assert loop[softmax] in (1, 2)
    assert region.extent == (4 if loop[softmax] == 1 else 256)
    emitted = emit_module(graph, plan, loaded.module, "test", "test", lower(graph, plan))
    verify(emitted.source, loaded.module, loaded.inputs)


def test_no_loop_cuts_through_an_op_that_mixes_its_dim(tmp_path: Path) -> None:
    # cumsum along the query rows has no rule: it mixes every dim, so the loop must stop before it
    path = _write(tmp_path, tail="self.proj(y).cumsum(dim=1)")
    loaded, graph, plan = _plan(path, Target(ratio=0.3))
    cumsum = next(n.name for n in graph.ops() if "cumsum" in str(n.target))
    assert all(cumsum not in dict(r.loop) for r in plan.regions)
    emitted = emit_module(graph, plan, loaded.module, "test", "test", lower(graph, plan))
    verify(emitted.source, loaded.module, loaded.inputs)


def test_every_loop_node_keeps_its_chunked_dim_unmixed(gpt_generated) -> None:
    planned, _ = gpt_generated
    graph = planned.graph
    for region in planned.plan.regions:
        loop = dict(region.loop)
        sliced = dict(region.slices)
        for name, dim in region.loop:
            rule = dim_rule(graph[name], graph)
            assert rule is not None and rule.produces(dim), name
            for slot, source in enumerate(tensor_inputs(graph[name], graph)):
                want = rule.input_dim(dim, slot)
                have = loop.get(source, sliced.get(source))
                assert want == have, (name, source, want, have)


def test_unreachable_target_gives_best_plan_and_says_by_how_much(tmp_path: Path, capsys) -> None:
    path = _write(tmp_path)
    code = main(["plan", str(path), "--memory-budget", "1"])
    assert code == 0
    assert "target missed" in capsys.readouterr().out
    out = tmp_path / "out"
    assert main(["emit", str(path), "--out", str(out), "--memory-budget", "1"]) == 0
    line = capsys.readouterr().out
    assert "for a target of 1 B, missing the target by" in line, line  # the target, printed
    assert (out / "attention.py").exists()


def test_plan_json_has_the_contract_fields(tmp_path: Path, capsys) -> None:
    path = _write(tmp_path)
    assert main(["plan", str(path), "--json", "--memory-ratio", "0.3"]) == 0
    data = json.loads(capsys.readouterr().out)
    for key in ("original_peak_bytes", "planned_peak_bytes", "budget_bytes", "regions"):
        assert key in data
    assert data["planned_peak_bytes"] <= data["budget_bytes"] < data["original_peak_bytes"]
    (region,) = data["regions"]
    assert {"dim", "chunk_size", "n_chunks", "nodes", "estimated_peak_bytes"} <= set(region)
    assert set(region["dim"]) >= {"input", "axis"}
    assert region["n_chunks"] == -(-region["dim"]["size"] // region["chunk_size"])
    assert "softmax" in region["nodes"]


def test_memory_budget_sizes_are_parsed(tmp_path: Path, capsys) -> None:
    path = _write(tmp_path)
    for flag, expected in (("512MB", 512 * 10**6), ("2GiB", 2 * 2**30), ("123456", 123456)):
        assert main(["plan", str(path), "--json", "--memory-budget", flag]) == 0
        assert json.loads(capsys.readouterr().out)["budget_bytes"] == expected


def test_a_model_already_under_target_gets_no_loops(tmp_path: Path) -> None:
    loaded, graph, plan = _plan(_write(tmp_path), Target(budget_bytes=10**9))
    assert plan.regions == () and plan.met
    assert plan.planned_peak_bytes == estimate_graph(graph).peak


def test_plan_plot_writes_the_memory_timeline(tmp_path: Path, capsys) -> None:
    pytest.importorskip("matplotlib")
    path = _write(tmp_path)
    png = tmp_path / "figs" / "plan.png"
    assert main(["plan", str(path), "--plot", str(png), "--memory-ratio", "0.3"]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "region 1" in capsys.readouterr().out
    assert [p.name for p in png.parent.iterdir()] == ["plan.png"]  # no temp file left


def test_plot_timelines_follow_the_plan(tmp_path: Path) -> None:
    loaded, graph, plan = _plan(_write(tmp_path), Target(ratio=0.3))
    original, planned = timelines(graph, plan)
    assert len(original) == len(planned) == len(list(graph.ops()))
    assert max(original) == plan.original_peak_bytes
    assert max(planned) == plan.planned_peak_bytes


WIDE_MLP = """
    import torch
    from torch import nn

    class Mlp(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(64, 16384)
            self.act = nn.GELU()
            self.fc2 = nn.Linear(16384, 64)

        def forward(self, x):
            return self.fc2(self.act(self.fc1(x)))

    def make_model():
        torch.manual_seed(0)
        return Mlp()

    def make_inputs():
        return (torch.randn(1, 1, 64, generator=torch.Generator().manual_seed(0)),)
"""


@pytest.mark.parametrize(
    "path, called",
    [
        ("blocks.0.mlp.fc1", "fc1"),
        ("encoder.layers.encoder_layer_0.mlp.0", "mlp.0"),  # torchvision's MLP, a Sequential
        ("features.3.1", "features.3.1"),
        ("fc", "fc"),
    ],
)
def test_a_layer_in_a_sequential_is_named_with_its_container(path: str, called: str) -> None:
    """A loop over `mlp.0`'s output features says so, not "0's output features"."""
    from analysis.plan import _layer_called

    assert _layer_called(path) == called


def test_a_value_a_loop_slices_is_named_as_the_model_code_calls_it(tmp_path: Path) -> None:
    """A loop dim is named by the value it slices in the model's terms: the name its line
    assigns in the module whose forward holds the line, a layer's result, or what a module
    returns; not by graph names (`permute_1`, `add`) the reviewer finds nowhere."""
    from analysis.plan import value_words

    path = tmp_path / "model.py"
    path.write_text(textwrap.dedent(CLASSIFIER))
    graph = capture(load_model_file(path))
    attention = next(n for n in graph.nodes if n.name.startswith("scaled_dot_product"))
    assert value_words(attention.args[0].name, graph) == "blocks.0's q"
    out = next(n for n in graph.nodes if n.module_path == "blocks.0.out")
    assert value_words(out.name, graph) == "blocks.0.out's output"
    returned = next(u for u in graph.users(out.name))
    assert value_words(returned, graph) == "blocks.0's output"
    assert value_words("x", graph) == "x"  # an input keeps its name


def test_a_loop_over_a_layers_features_is_named_after_the_layer(tmp_path: Path, capsys) -> None:
    """One token and 16384 hidden features: the loop walks fc1's output features, and `plan`
    and `emit` say so in those words, not by the weight's graph name."""
    path = tmp_path / "mlp.py"
    path.write_text(textwrap.dedent(WIDE_MLP))
    assert main(["plan", str(path), "--memory-ratio", "0.6"]) == 0
    out = capsys.readouterr().out
    assert "(fc1's output features)" in out and "weight" not in out, out
    assert main(["emit", str(path), "--out", str(tmp_path / "out"), "--memory-ratio", "0.6"]) == 0
    line = capsys.readouterr().out
    assert "for a target of" in line and "(met)" in line, line
    header = (tmp_path / "out" / "mlp.py").read_text().split('"""', 2)[1]
    assert "fc1's output features" in header, header


SORTED = """
    import torch
    from torch import nn

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(64, 256)

        def forward(self, x):
            y = self.proj(x)
            return y.sort(dim=1).values.sum(1)  # sorts over every token: no loop cuts it

    def make_model():
        torch.manual_seed(0)
        return Model()

    def make_inputs():
        return (torch.randn(1, 4096, 64, generator=torch.Generator().manual_seed(0)),)
"""


@pytest.mark.parametrize(
    "ratio, says",
    [
        (0.00005, "the model's floor: its outputs alone are 1.0 KiB"),
        (0.1, "the tool's limit: the peak is at model.py:12 in forward:"),
    ],
    ids=["floor", "tool"],
)
def test_a_missed_target_says_whose_limit_it_is(tmp_path: Path, capsys, ratio, says) -> None:
    """NOTE [Whose limit]: below the outputs' own size it is the model's floor; above it, the
    sort at the peak, which no loop cuts through, is the tool's limit, named with its line."""
    path = tmp_path / "model.py"
    path.write_text(textwrap.dedent(SORTED))
    assert main(["plan", str(path), "--memory-ratio", str(ratio)]) == 0
    out = capsys.readouterr().out
    assert f"(target missed: {says}" in out, out
    assert (
        main(["emit", str(path), "--out", str(tmp_path / "out"), "--memory-ratio", str(ratio)]) == 0
    )
    line = capsys.readouterr().out
    assert "missing the target by" in line and says in line, line


ENCODER = """
    import torch
    from torch import nn
    import torch.nn.functional as F

    class Model(nn.Module):
        def __init__(self, vocab):
            super().__init__()
            self.first, self.qkv = nn.Linear(64, 192), nn.Linear(64, 192)
            self.out = nn.Linear(64, 64)
            self.up, self.down = nn.Linear(64, 512), nn.Linear(512, 64)
            self.head = nn.Linear(64, vocab) if vocab else nn.Identity()

        def forward(self, x):
            q, k, v = self.first(x).view(1, -1, 3, 4, 16).permute(2, 0, 3, 1, 4)
            x = x + F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(1, -1, 64)
            q, k, v = self.qkv(x).view(1, -1, 3, 4, 16).permute(2, 0, 3, 1, 4)
            # arange >= 0: how transformers builds an encoder's mask when none is given
            keep = (torch.arange(x.shape[1]) >= 0)[None, None, None, :]
            a = F.scaled_dot_product_attention(q, k, v, keep.expand(1, 1, x.shape[1], -1))
            h = x + self.out(a.transpose(1, 2).reshape(1, -1, 64))
            h = h + self.down(torch.relu(self.up(h)))
            return self.head(h)

    def make_model():
        torch.manual_seed(0)
        return Model(VOCAB).eval()

    def make_inputs():
        return (torch.randn(1, 2048, 64, generator=torch.Generator().manual_seed(0)),)
"""


@pytest.mark.parametrize(
    "vocab, says",
    [
        (0, "the attention at model.py:20 holds its keys and values, or what they are made from "
         "(768.0 KiB), with the rows it has made (512.0 KiB): 1.2 MiB"),
        (1024, "its output, head's result (8.0 MiB), with the 512.0 KiB it is made from is "
         "8.5 MiB"),
    ],
    ids=["encoder", "head"],
)  # fmt: skip
def test_the_models_floor_counts_keys_values_and_what_an_output_is_made_from(
    tmp_path: Path, capsys, vocab: int, says: str
) -> None:
    """NOTE [Whose limit]: an encoder's floor is its last attention's: the hidden states its
    keys and values are made from, with one head's keys and values (NOTE [One head's keys]) and
    the rows it has made; a language-model head's, its logits with the hidden states under
    them. No plan goes under it, however small the target, and a plan above it says whose limit
    holds the rest."""
    path = tmp_path / "model.py"
    path.write_text(textwrap.dedent(ENCODER).replace("VOCAB", str(vocab)))
    assert main(["plan", str(path), "--memory-ratio", "0.01", "--json"]) == 0
    planned = json.loads(capsys.readouterr().out)
    assert main(["plan", str(path), "--memory-ratio", "0.01"]) == 0
    out = capsys.readouterr().out
    assert f"(target missed: the model's floor: {says}, " in out, out
    floor = float(says.rsplit(" ", 2)[-2]) * 2**20
    assert planned["planned_peak_bytes"] >= floor, planned
    if planned["planned_peak_bytes"] > floor * 1.1:
        assert "above the target; the plan holds " in out and "more, the tool's limit: " in out


HELD_LONGER = """
    import torch
    from torch import nn

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.up, self.gate = nn.Linear(64, 1024), nn.Linear(64, 1024)
            self.down = nn.Linear(1024, 64)

        def forward(self, x):
            a = self.up(x)
            scale = a.sum(-1, keepdim=True)  # the graph frees `a` here; eager holds it on
            if EXPORT_ONLY and torch.compiler.is_exporting():  # a mask only export builds
                scale = scale * torch.ones(1024, 8192).amax(-1, keepdim=True)
                del a
            return self.down(self.gate(x) * scale)

    def make_model():
        torch.manual_seed(0)
        return Model().eval()

    def make_inputs():
        return (torch.randn(1, 1024, 64, generator=torch.Generator().manual_seed(0)),)
"""


@pytest.mark.parametrize(
    "export_only, says",
    [
        (False, "the original measured 4.0 MiB above its estimate: eager peaks at model.py:17 "
         "in forward: return self.down(self.gate(x) * scale), holding values longer"),
        (True, "below its estimate: the graph export captured peaks at model.py:15 in forward: "
         "scale = scale * torch.ones(1024, 8192)"),
    ],
    ids=["held longer", "export only"],
)  # fmt: skip
def test_an_original_measured_off_its_estimate_says_why(
    tmp_path: Path, capsys, export_only: bool, says: str
) -> None:
    """The emit line explains an original that measures off its estimate, citing eager's peak
    or the graph's (`estimate_gap`)."""
    path = tmp_path / "model.py"
    path.write_text(textwrap.dedent(HELD_LONGER).replace("EXPORT_ONLY", str(export_only)))
    assert main(["emit", str(path), "--out", str(tmp_path / "out")]) == 0
    line = capsys.readouterr().out
    assert says in line, line


CLASSIFIER = """
    import torch
    from torch import nn
    import torch.nn.functional as F

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv, self.out = nn.Linear(64, 192), nn.Linear(64, 64)

        def forward(self, x):
            q, k, v = self.qkv(x).view(1, x.shape[1], 3, 4, 16).permute(2, 0, 3, 1, 4)
            a = F.scaled_dot_product_attention(q, k, v)
            return x + self.out(a.transpose(1, 2).reshape(1, -1, 64))

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.Sequential(Block(), Block())
            self.head = nn.Linear(64, 10)

        def forward(self, x):
            return self.head(self.blocks(x)[:, 0])  # the first token alone is classified

    def make_model():
        torch.manual_seed(0)
        return Model().eval()

    def make_inputs():
        return (torch.randn(1, 2048, 64, generator=torch.Generator().manual_seed(0)),)
"""


DYNAMIC = """
    def dynamic_shapes():
        return {"x": {1: torch.export.Dim("seq", min=2, max=2048)}}
"""


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
def test_an_attention_before_another_keeps_every_row_it_made_in_its_floor(
    tmp_path: Path, dynamic: bool
) -> None:
    """The classifier reads one token of the last block, so the last attention's made rows may
    be one row; the first attention's rows are read by the second, which reads every row, so
    they count whole (512 KiB). Keys and values count as the least a plan holds of them: the
    second block's hidden states (512 KiB), from which a loop over heads makes each head's, not
    the 1 MiB of both, with the head it runs (256 KiB: NOTE [One head's keys]); for the first
    block's, made from the input itself, that head alone. With a dynamic length the views'
    sizes are read off the input, which does not make the keys depend on it. The second
    attention's output is added to the first block's, which is held meanwhile and which the
    rows it makes could at best be added into; but it is what that head's keys are remade from,
    so it counts once (NOTE [Products made once]): the second block's floor is its hidden
    states, one head's keys and values and the one row it makes."""
    from analysis.shortfall import _Facts, floor

    path = tmp_path / "model.py"
    path.write_text(textwrap.dedent(CLASSIFIER) + (textwrap.dedent(DYNAMIC) if dynamic else ""))
    graph = capture(load_model_file(path))
    facts = _Facts(graph)
    first, second = (node for node in graph.nodes if facts.attends_all(node))
    assert facts.rows(first.name) == 512 * 1024 and facts.rows(second.name) == 40
    assert facts.keys_and_values(first) == 256 * 1024
    assert facts.keys_and_values(second) == 768 * 1024
    assert facts.attention_floor(first) == (256 * 1024, 512 * 1024, False)
    assert facts.attention_floor(second) == (768 * 1024, 40, False)
    found = floor(graph)
    assert found.bytes == 768 * 1024 + 40, found
    assert found.words == (
        "the attention at model.py:13 holds its keys and values, or what they are made from "
        "(768.0 KiB), with the rows it has made (40 B): 768.0 KiB"
    ), found


def test_keys_made_through_a_patch_embedding_are_not_remade_from_the_image(tmp_path: Path) -> None:
    """NOTE [Products made once]: with a patch embedding (a linear here) before the first
    block, a loop over its heads cannot remake each head's keys and values from the input
    without running the embedding again: it holds the embeddings (512 KiB) with the head it
    runs (256 KiB), and the rows it makes (512 KiB), which the embeddings, its residual, are
    not summed into while the heads still read them. Without the embedding, that head alone."""
    from analysis.shortfall import _Facts, floor

    embedded = (
        textwrap.dedent(CLASSIFIER)
        .replace(
            "self.head = nn.Linear(64, 10)",
            "self.head, self.embed = nn.Linear(64, 10), nn.Linear(64, 64)",
        )
        .replace("self.blocks(x)", "self.blocks(self.embed(x))")
    )
    path = tmp_path / "model.py"
    path.write_text(embedded)
    graph = capture(load_model_file(path))
    facts = _Facts(graph)
    first, second = (node for node in graph.nodes if facts.attends_all(node))
    assert facts.attention_floor(first) == (768 * 1024, 512 * 1024, False)
    assert facts.attention_floor(second) == (768 * 1024, 40, False)
    assert floor(graph).bytes == 1280 * 1024


def test_a_time_limit_the_unlimited_plan_fits_costs_no_memory() -> None:
    """NOTE [Aiming lower than reachable]: under a time limit, DistilBERT's feed-forward loops
    sized for a target out of reach used to spend the limit's room, so the heads loops after
    them were turned away (5.0 MiB, against 3.0 MiB without the limit). A limit the unlimited
    plan's own estimated time fits must give a plan as low."""
    pytest.importorskip("transformers")
    from dataclasses import replace

    from analysis.fastpath import eager_attention

    path = Path(__file__).resolve().parent.parent / "examples" / "zoo" / "hf_distilbert.py"
    captured = eager_attention(capture(load_model_file(path)))
    layers = frozenset({"transformer", "transformer.layer.0", "transformer.layer.1"})
    graph = replace(captured, inline_calls=layers, memo={}, before=captured.captured)
    free = make_plan(graph, Target(ratio=0.2))
    limited = make_plan(graph, Target(ratio=0.2, max_slowdown=free.time_ratio + 0.01))
    assert not free.met and limited.time_ratio <= free.time_ratio + 0.01
    assert limited.planned_peak_bytes <= free.planned_peak_bytes < limited.original_peak_bytes // 3
