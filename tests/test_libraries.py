"""Real models from the libraries people use, built from configs with random weights (no
downloads), emitted with the defaults a new user gets and verified against the original.

Small sizes keep these quick; `scripts/bench.py examples/libraries/*.py` measures the same
models at benchmark sizes. They need the `libs` extra (`pip install -e ".[test,libs]"`).
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest
import torch

from analysis.loader import load_model_file
from codegen.measure import measure_peak
from codegen import cli
from codegen.verify import compare, import_source, instantiate

GPT2 = """
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    def make_model():
        torch.manual_seed(0)
        config = GPT2Config(
            vocab_size=128, n_positions=1024, n_embd=64, n_layer=2, n_head=4, use_cache=False,
            bos_token_id=0, eos_token_id=0, attn_implementation="eager",
        )
        return GPT2LMHeadModel(config)

    def make_inputs():
        return (torch.randint(0, 128, (1, 384), generator=torch.Generator().manual_seed(0)),)

    def dynamic_shapes():
        return {"input_ids": {1: torch.export.Dim("seq", min=2, max=1024)}}
"""

LLAMA = """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    def make_model():
        torch.manual_seed(0)
        config = LlamaConfig(
            vocab_size=128, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
            use_cache=False, bos_token_id=0, eos_token_id=0, attn_implementation="sdpa",
        )
        return LlamaForCausalLM(config)

    def make_inputs():
        ids = torch.randint(0, 128, (1, 384), generator=torch.Generator().manual_seed(0))
        mask = torch.ones(1, 384, dtype=torch.long)
        mask[:, :8] = 0  # left padding: transformers builds a seq x seq mask for SDPA
        return (ids, mask)
"""

BERT = """
    import torch
    from transformers import BertConfig, BertModel

    def make_model():
        torch.manual_seed(0)
        config = BertConfig(
            vocab_size=128, hidden_size=64, intermediate_size=256, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=1024, attn_implementation="eager",
        )
        return BertModel(config)

    def make_inputs():
        ids = torch.randint(0, 128, (1, 384), generator=torch.Generator().manual_seed(0))
        mask = torch.ones(1, 384, dtype=torch.long)
        mask[:, -16:] = 0
        return (ids, mask, (torch.arange(384) >= 192).long()[None])
"""

T5 = """
    import torch
    from transformers import T5Config, T5EncoderModel

    def make_model():
        torch.manual_seed(0)
        config = T5Config(vocab_size=128, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4)
        return T5EncoderModel(config)

    def make_inputs():
        return (torch.randint(0, 128, (1, 384), generator=torch.Generator().manual_seed(0)),)
"""

UNET = """
    import torch
    from diffusers import UNet2DConditionModel
    from diffusers.models.attention_processor import AttnProcessor

    def make_model():
        torch.manual_seed(0)
        unet = UNet2DConditionModel(
            sample_size=32, in_channels=4, out_channels=4, block_out_channels=(32, 64),
            layers_per_block=1, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
            attention_head_dim=8, norm_num_groups=8,
        )
        unet.set_attn_processor(AttnProcessor())
        return unet

    def make_inputs():
        g = torch.Generator().manual_seed(0)
        return (torch.randn(1, 4, 32, 32, generator=g), torch.tensor([10]),
                torch.randn(1, 77, 32, generator=g))
"""

#: name -> (library, model file, output class, the most the chunked peak may be, as a share of
#: the original's). Llama's mask and T5's relative position bias are built once for all layers:
#: the emitted module rebuilds their rows in each layer's loop (NOTE [Recomputed values]).
CASES = {
    "gpt2": ("transformers", GPT2, "CausalLMOutputWithCrossAttentions", 0.7),
    "llama": ("transformers", LLAMA, "CausalLMOutputWithPast", 0.5),
    "bert": ("transformers", BERT, "BaseModelOutputWithPoolingAndCrossAttentions", 0.7),
    "unet": ("diffusers", UNET, "UNet2DConditionOutput", 0.7),
    "t5": ("transformers", T5, "BaseModelOutputWithPastAndCrossAttentions", 0.5),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_library_model_emits_verified_and_smaller(case: str, tmp_path: Path) -> None:
    library, text, output_class, share = CASES[case]
    pytest.importorskip(library)
    path = tmp_path / f"{case}.py"
    path.write_text(textwrap.dedent(text))
    out = tmp_path / "out"
    assert cli.main(["emit", str(path), "--out", str(out)]) == 0  # verified inside

    loaded = load_model_file(path)
    module, _ = import_source((out / f"{case}.py").read_text())
    chunked = instantiate(module, loaded.module)
    with torch.no_grad():
        expected, actual = loaded.module(*loaded.inputs), chunked(*loaded.inputs)
    assert type(actual).__name__ == output_class  # the same structure comes back
    assert compare(expected, actual) is None
    original_bytes = measure_peak(loaded.module, loaded.inputs)
    chunked_bytes = measure_peak(chunked, loaded.inputs)
    assert chunked_bytes < share * original_bytes, (chunked_bytes, original_bytes)


def test_generated_module_imports_only_torch_until_it_returns(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    path = tmp_path / "gpt2.py"
    path.write_text(textwrap.dedent(GPT2))
    assert cli.main(["emit", str(path), "--out", str(tmp_path / "out")]) == 0
    source = (tmp_path / "out" / "gpt2.py").read_text()
    imports = [line for line in source.splitlines() if line.startswith(("import ", "from "))]
    assert imports == ["import importlib", "import torch"]
    assert re.search(r"_output_class\(\s*\"transformers\.modeling_outputs\"", source)


def test_a_hook_on_a_llama_layers_down_projection_fires(tmp_path: Path) -> None:
    """At a target a loop over tokens meets, the MLP's layers stay calls (a loop summing the
    down projection over its input features would write it out: NOTE [Sums over the chunks],
    listed in the header), so a hook on one fires for every token."""
    pytest.importorskip("transformers")
    path = tmp_path / "llama.py"
    path.write_text(textwrap.dedent(LLAMA))
    out = tmp_path / "out"
    assert cli.main(["emit", str(path), "--out", str(out), "--memory-ratio", "0.35"]) == 0
    assert "mlp.down_proj:" not in (out / "llama.py").read_text().split('"""', 2)[1]
    loaded = load_model_file(path)
    module, _ = import_source((tmp_path / "out" / "llama.py").read_text())
    chunked = instantiate(module, loaded.module)
    down = chunked.model.layers[1].mlp.down_proj
    assert type(down) is torch.nn.Linear
    rows: list[int] = []
    down.register_forward_hook(lambda m, i, o: rows.append(o.shape[-2]))
    with torch.no_grad():
        chunked(*loaded.inputs)
    assert sum(rows) == loaded.inputs[0].shape[1]  # every token passed through it, chunk or not
    assert len(rows) > 1, rows  # by chunks


def test_weights_are_the_originals_own_and_tied_weights_stay_tied(tmp_path: Path) -> None:
    """GPT-2's LM head is tied to its token embedding: `from_module` hands over the original's
    tensors themselves, so the tie survives and no weight is copied."""
    pytest.importorskip("transformers")
    path = tmp_path / "gpt2.py"
    path.write_text(textwrap.dedent(GPT2))
    assert cli.main(["emit", str(path), "--out", str(tmp_path / "out")]) == 0
    loaded = load_model_file(path)
    original = loaded.module
    module, _ = import_source((tmp_path / "out" / "gpt2.py").read_text())
    chunked = instantiate(module, original)
    assert chunked.lm_head.weight is chunked.transformer.wte.weight
    count = sum(p.numel() for p in original.parameters())
    assert sum(p.numel() for p in chunked.parameters()) == count
    mine = dict(chunked.named_parameters(remove_duplicate=False))
    for name, parameter in original.named_parameters(remove_duplicate=False):
        assert mine[name] is parameter and mine[name].data_ptr() == parameter.data_ptr()
    for name, buffer in original.named_buffers(remove_duplicate=False):
        assert chunked.get_buffer(name) is buffer
    # a module built without the original is tied too, and loads the original's state strictly
    fresh = getattr(module, module.__all__[0])()
    assert fresh.lm_head.weight is fresh.transformer.wte.weight
    fresh.load_state_dict(original.state_dict(), strict=True)
    with torch.no_grad():
        assert compare(original(*loaded.inputs), fresh(*loaded.inputs)) is None


RESNET = """
    import torch
    from torchvision.models import resnet18

    def make_model():
        torch.manual_seed(0)
        return resnet18(num_classes=10).eval()

    def make_inputs():
        return (torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)),)
"""


def test_a_torchvision_resnet_keeps_its_nested_sequentials_and_layers(tmp_path: Path) -> None:
    """A ResNet is Sequentials of blocks that hold a Sequential: each container survives at its
    path, every block is called as a module, its norms and activations are layers called as
    modules (their hooks fire), and the original's state loads strictly."""
    pytest.importorskip("torchvision")
    path = tmp_path / "resnet.py"
    path.write_text(textwrap.dedent(RESNET))
    assert cli.main(["emit", str(path), "--out", str(tmp_path / "out")]) == 0  # verified inside
    source = (tmp_path / "out" / "resnet.py").read_text()
    assert "torch.ops.aten" not in source  # batch norms and pools are calls of their layers
    loaded = load_model_file(path)
    module, _ = import_source(source)
    chunked = instantiate(module, loaded.module)
    assert type(chunked.layer2) is torch.nn.Sequential
    assert type(chunked.layer2[0].downsample) is torch.nn.Sequential
    assert type(chunked.layer1[0]) is type(chunked.layer2[1])  # one class for the plain blocks
    hooked = {"layer1.0", "layer2.0.bn1", "layer2.0.downsample.0", "maxpool", "layer4.1.relu"}
    fired: set[str] = set()
    for name in hooked:
        chunked.get_submodule(name).register_forward_hook(lambda *_, n=name: fired.add(n))
    with torch.no_grad():
        assert compare(loaded.module(*loaded.inputs), chunked(*loaded.inputs)) is None
    assert fired == hooked
    fresh = getattr(module, module.__all__[0])()
    fresh.load_state_dict(loaded.module.state_dict(), strict=True)


LLAMA_PROMPT = LLAMA.replace(
    """        mask = torch.ones(1, 384, dtype=torch.long)
        mask[:, :8] = 0  # left padding: transformers builds a seq x seq mask for SDPA
        return (ids, mask)""",
    "        return (ids,)",
)

MISTRAL = """
    import torch
    from transformers import MistralConfig, MistralForCausalLM

    def make_model():
        torch.manual_seed(0)
        config = MistralConfig(
            vocab_size=128, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
            sliding_window=64, use_cache=False, bos_token_id=0, eos_token_id=0,
            attn_implementation="sdpa",
        )
        return MistralForCausalLM(config)

    def make_inputs():
        return (torch.randint(0, 128, (1, 384), generator=torch.Generator().manual_seed(0)),)
"""


def _emitted(tmp_path: Path, name: str, text: str, *flags: str) -> str:
    pytest.importorskip("transformers")
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(text))
    assert cli.main(["emit", str(path), "--out", str(tmp_path / "out"), *flags]) == 0  # verified
    return (tmp_path / "out" / f"{name}.py").read_text()


def test_an_unpadded_llama_calls_sdpa_as_eager_does(tmp_path: Path) -> None:
    """NOTE [Attention as eager runs it]: no mask, `is_causal`, the grouped keys as they are."""
    source = _emitted(tmp_path, "llama", LLAMA_PROMPT)
    forward = source.split("\ndef _causal_attention(")[0]  # the template's helper aside
    code = "\n".join(line.split("#")[0] for line in forward.splitlines())
    calls = re.findall(r"(scaled_dot_product_attention|_causal_attention)\((.*?)\)\n", code, re.S)
    assert calls and all("enable_gqa=True" in call for _, call in calls)
    assert all("is_causal=True" in call or kind == "_causal_attention" for kind, call in calls)
    assert "expand(" not in code  # neither the mask nor the repeated keys are built


def test_a_sliding_window_loop_passes_only_the_windows_keys(tmp_path: Path) -> None:
    source = _emitted(tmp_path, "mistral", MISTRAL, "--memory-ratio", "0.1")
    assert "max(start - 63, 0) : stop" in source  # black spaces a slice of expressions
    assert "Sliding window: each chunk attends only the keys" in source


def test_a_bf16_llama_on_an_unpadded_prompt_emits_and_verifies(tmp_path: Path) -> None:
    """Half precision through a library model: verified against a float32 run of the original
    (NOTE [Half-precision tolerance])."""
    text = LLAMA_PROMPT.replace(
        "return LlamaForCausalLM(config)", "return LlamaForCausalLM(config).to(torch.bfloat16)"
    )
    source = _emitted(tmp_path, "llama_bf16", text, "--memory-ratio", "0.3")
    assert "for start in range(" in source


def test_a_window_mask_is_read_as_the_comparisons_it_is(tmp_path: Path) -> None:
    """transformers' window mask (`True & (kv > q - w) & (kv <= q) & (ids[q] == ids[kv])` over
    positions gathered from the position ids) is read as the two comparisons over an arange
    it equals (NOTE [Attention as eager runs it])."""
    pytest.importorskip("transformers")
    from analysis.capture import capture
    from analysis.fastpath import eager_attention

    path = tmp_path / "mistral.py"
    path.write_text(textwrap.dedent(MISTRAL))
    graph = eager_attention(capture(load_model_file(path)))
    attention = [
        n for n in graph.ops() if n.target is torch.ops.aten.scaled_dot_product_attention.default
    ]
    mask = attention[0].args[3].name
    made_of, pending = set(), [mask]
    while pending:
        node = graph[pending.pop()]
        if node.kind == "op" and node.name not in made_of:
            made_of.add(node.name)
            pending.extend(node.refs())
    ops = {str(graph[name].target).split(".")[1] for name in made_of}
    assert ops - {"sym_size"} == {"arange", "unsqueeze", "sub", "gt", "le", "__and__"}, ops
    assert all(n.args[3].name == mask for n in attention)  # one mask for every layer
