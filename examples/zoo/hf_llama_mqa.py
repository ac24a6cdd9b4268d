"""transformers Llama, 8 query heads sharing 1 key/value head(s) (MQA), SDPA, one 4096-token
prompt with no mask, random weights."""

import torch
from transformers import LlamaConfig, LlamaForCausalLM

SEQ = 4096


def make_model():
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=512, hidden_size=256, intermediate_size=688, num_hidden_layers=2,
        num_attention_heads=8, num_key_value_heads=1, max_position_embeddings=2 * SEQ,
        use_cache=False, bos_token_id=0, eos_token_id=0, attn_implementation="sdpa",
    )  # fmt: skip
    return LlamaForCausalLM(config).eval()


def make_inputs():
    return (torch.randint(0, 512, (1, SEQ), generator=torch.Generator().manual_seed(0)),)


def dynamic_shapes():
    return {"input_ids": {1: torch.export.Dim("seq", min=2, max=2 * SEQ)}}
