"""The decoder presets compute what the models they are named after compute.

Small GPT-2 and LLaMA models from transformers (random weights) are copied into fastformer
Transformers built from the ``gpt2_small`` and ``llama`` presets (sizes overridden): the key
maps below are the whole difference (GPT-2's Conv1D weights transposed). Outputs and every
parameter's gradient are held to the tolerance rule against transformers in float64 (truth)
and fp32 (eager's error), with right padding.
"""

from __future__ import annotations

import copy
import re

import pytest
import torch

from fastformer import testing
from fastformer.models import Transformer, TransformerConfig

transformers = pytest.importorskip("transformers")

VOCAB, HIDDEN, HEADS, FFN, LAYERS, POSITIONS = 97, 32, 4, 48, 2, 16
BATCH, SEQ = 2, 7


def _gpt2_key(key: str) -> tuple[str, bool]:
    """fastformer's name of a GPT2Model key, and whether the tensor is Conv1D (transposed)."""
    top = {"wte.weight": "embeddings.word_embeddings.weight",
           "wpe.weight": "embeddings.position_embeddings.weight"}  # fmt: skip
    if key in top:
        return top[key], False
    if key.startswith("ln_f."):
        return "decoder.final_norm." + key.removeprefix("ln_f."), False
    index, part = re.fullmatch(r"h\.(\d+)\.(.+)", key).groups()
    parts = {"ln_1": "self_attn_norm", "ln_2": "ffn_norm", "attn.c_attn": "self_attn.qkv_proj",
             "attn.c_proj": "self_attn.o_proj", "mlp.c_fc": "ffn.c_fc",
             "mlp.c_proj": "ffn.c_proj"}  # fmt: skip
    module, kind = part.rsplit(".", 1)
    return f"decoder.layers.{index}.{parts[module]}.{kind}", kind == "weight" and "ln" not in module


def _llama_key(key: str) -> tuple[str, bool]:
    if key == "embed_tokens.weight":
        return "embeddings.word_embeddings.weight", False
    if key == "norm.weight":
        return "decoder.final_norm.weight", False
    index, part = re.fullmatch(r"layers\.(\d+)\.(.+)", key).groups()
    part = part.replace("mlp.", "ffn.").replace("input_layernorm", "self_attn_norm")
    return f"decoder.layers.{index}.{part.replace('post_attention_layernorm', 'ffn_norm')}", False


def _convert(tensors: dict, key_map) -> dict:
    out = {}
    for key, value in tensors.items():
        name, transposed = key_map(key)
        out[name] = value.T if transposed else value
    return out


def _randomize(model):
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() == 1 and ("ln" in name or "norm" in name) and "weight" in name:
                param.copy_(1 + 0.1 * torch.randn_like(param))
            elif param.dim() == 1:
                param.copy_(0.1 * torch.randn_like(param))
            else:
                param.copy_(torch.randn_like(param) / min(param.shape) ** 0.5)
    return model


def _gpt2():
    config = transformers.GPT2Config(
        vocab_size=VOCAB, n_positions=POSITIONS, n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS,
        n_inner=FFN, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0,
        eos_token_id=0,
    )  # fmt: skip
    ours = TransformerConfig.from_preset(
        "gpt2_small", vocab_size=VOCAB, max_positions=POSITIONS, hidden_size=HIDDEN,
        n_layers=LAYERS, n_heads=HEADS, ffn_size=FFN, dropout=0.0, attention_dropout=0.0,
    )  # fmt: skip
    return transformers.GPT2Model(config), ours, _gpt2_key


def _llama():
    config = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=FFN, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=2, max_position_embeddings=POSITIONS,
    )  # fmt: skip
    ours = TransformerConfig.from_preset(
        "llama", vocab_size=VOCAB, hidden_size=HIDDEN, ffn_size=FFN, n_layers=LAYERS,
        n_heads=HEADS, n_kv_heads=2, max_positions=POSITIONS, rope_theta=10000.0,
        norm_eps=config.rms_norm_eps, fused_qkv=False,
    )  # fmt: skip
    return transformers.LlamaModel(config), ours, _llama_key


@pytest.mark.parametrize("build", [_gpt2, _llama], ids=["gpt2", "llama"])
def test_decoder_preset_matches_transformers(build):
    theirs, config, key_map = build()
    theirs = _randomize(theirs).eval()
    ours = Transformer(config).eval()
    result = ours.load_state_dict(_convert(theirs.state_dict(), key_map))
    assert not result.missing_keys and not result.unexpected_keys
    theirs64 = copy.deepcopy(theirs).double()
    ids = torch.randint(0, VOCAB, (BATCH, SEQ))
    mask = torch.ones(BATCH, SEQ, dtype=torch.long)
    mask[1, SEQ - 2 :] = 0
    grad_out = torch.randn(BATCH, SEQ, HIDDEN, dtype=torch.float64)

    def run(model, is_ours):
        model.zero_grad()
        hidden = (
            model(ids, mask).last_hidden_state
            if is_ours
            else model(input_ids=ids, attention_mask=mask).last_hidden_state
        )
        (hidden * grad_out.to(hidden.dtype)).sum().backward()
        grads = {name: p.grad for name, p in model.named_parameters()}
        return hidden.detach(), grads if is_ours else _convert(grads, key_map)

    hidden, grads = run(ours, True)
    hidden64, grads64 = run(theirs64, False)
    hidden32, grads32 = run(theirs, False)
    assert sorted(grads) == sorted(grads64)
    # The padded rows of row 1 are compared too: they attend causally to the real keys before
    # them in both models.
    triples = [("last_hidden_state", hidden, hidden64, hidden32)]
    triples += [(f"grad {n}", grads[n], grads64[n], grads32[n]) for n in sorted(grads)]
    scale = max(float(ref.abs().max()) for _, _, ref, _ in triples)
    failed = [str(r) for r in (testing.compare(*t, scale) for t in triples) if not r.ok]
    assert not failed, "; ".join(failed)
