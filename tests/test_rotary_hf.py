"""Rotary embeddings against transformers: the rope initialisation functions (every scaling type)
and the models' own apply_rotary_pos_emb (LLaMA, GPT-NeoX partial rotary, GPT-J interleaved);
and ``fastformer.nn.RotaryEmbedding`` at any position (CASES R1, R2)."""

from __future__ import annotations

import functools

import pytest
import torch
from transformers import Gemma3TextConfig, GPTJConfig, GPTNeoXConfig, LlamaConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.models.gemma3 import modeling_gemma3 as hf_gemma3
from transformers.models.gpt_neox import modeling_gpt_neox as hf_neox
from transformers.models.gptj import modeling_gptj as hf_gptj
from transformers.models.llama import modeling_llama as hf_llama

import fastformer
from fastformer import reference
from fastformer.functional.rope_scaling import RopeParameters, rope_init
from fastformer.nn import RotaryEmbedding

LLAMA3 = dict(
    rope_type="llama3",
    factor=8.0,
    low_freq_factor=1.0,
    high_freq_factor=4.0,
    original_max_position_embeddings=1024,
)
SCALINGS = {
    "default": dict(rope_type="default"),
    "linear": dict(rope_type="linear", factor=4.0),
    "dynamic": dict(rope_type="dynamic", factor=2.0),
    "llama3": LLAMA3,
    "yarn": dict(rope_type="yarn", factor=4.0, original_max_position_embeddings=1024),
    "yarn_mscale": dict(
        rope_type="yarn",
        factor=8.0,
        original_max_position_embeddings=512,
        mscale=0.707,
        mscale_all_dim=1.0,
        beta_fast=16.0,
        beta_slow=2.0,
    ),
    "yarn_untruncated": dict(
        rope_type="yarn", factor=2.0, original_max_position_embeddings=1024, truncate=False
    ),
    "yarn_attention_factor": dict(
        rope_type="yarn", factor=4.0, original_max_position_embeddings=1024, attention_factor=1.5
    ),
}
MAX_POSITIONS = 4096


def _llama_config(scaling, head_dim=64, theta=500000.0):
    return LlamaConfig(
        hidden_size=4 * head_dim,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=MAX_POSITIONS,
        rope_parameters={**scaling, "rope_theta": theta},
    )


def _hf_init(config, seq_len=None):
    rope_type = config.rope_parameters["rope_type"]
    if rope_type == "default":
        return hf_llama.LlamaRotaryEmbedding.compute_default_rope_parameters(config)
    return ROPE_INIT_FUNCTIONS[rope_type](config, None, seq_len=seq_len)


@pytest.mark.parametrize("seq_len", [None, 100, 9000], ids=["init", "short", "long"])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("name", list(SCALINGS))
def test_rope_init_matches_transformers(name, head_dim, seq_len):
    """The same inv_freq bits and attention factor as ROPE_INIT_FUNCTIONS, for the same config."""
    config = _llama_config(SCALINGS[name], head_dim)
    expected, expected_factor = _hf_init(config, seq_len)
    inv_freq, factor = rope_init(RopeParameters.from_config(config), seq_len=seq_len)
    assert inv_freq.dtype == torch.float32
    assert torch.equal(inv_freq, expected)
    assert factor == expected_factor


def test_partial_rotary_init_matches_gpt_neox():
    config = GPTNeoXConfig(hidden_size=256, num_attention_heads=4, rotary_pct=0.25)
    expected, _ = hf_neox.GPTNeoXRotaryEmbedding.compute_default_rope_parameters(config)
    params = RopeParameters.from_config(config)
    assert params.rotary_dim == 16
    assert torch.equal(rope_init(params)[0], expected)


def _positions(device, batch, seqlen, high):
    return torch.sort(torch.randint(0, high, (batch, seqlen), device=device), dim=1).values


@pytest.mark.parametrize("name", list(SCALINGS))
def test_llama_apply_rotary_pos_emb(device, name):
    """LLaMA's rotary module and apply_rotary_pos_emb, (B, H, S, D), GQA 2:1; dynamic NTK with
    positions past max_position_embeddings (it rescales)."""
    config = _llama_config(SCALINGS[name], head_dim=32)
    hf_rope = hf_llama.LlamaRotaryEmbedding(config).to(device)
    ours = RotaryEmbedding.from_config(config, device=device)
    q = torch.randn(2, 4, 6, 32, device=device)
    k = torch.randn(2, 2, 6, 32, device=device)
    position_ids = _positions(device, 2, 6, 2 * MAX_POSITIONS)
    cos, sin = hf_rope(q, position_ids)
    expected = hf_llama.apply_rotary_pos_emb(q, k, cos, sin)
    got = ours(q, k, position_ids, layout="bhsd")
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b)


def test_gpt_neox_partial_rotary(device):
    """GPT-NeoX: rotary_pct 0.25 of head_dim 32, NeoX style, the rest passed through."""
    config = GPTNeoXConfig(hidden_size=128, num_attention_heads=4, rotary_pct=0.25)
    hf_rope = hf_neox.GPTNeoXRotaryEmbedding(config).to(device)
    ours = RotaryEmbedding.from_config(config, device=device)
    q = torch.randn(2, 4, 5, 32, device=device)
    k = torch.randn(2, 4, 5, 32, device=device)
    position_ids = _positions(device, 2, 5, 3000)
    cos, sin = hf_rope(q, position_ids)
    expected = hf_neox.apply_rotary_pos_emb(q, k, cos, sin)
    got = ours(q, k, position_ids, layout="bhsd")
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b)


def test_gptj_interleaved_partial_rotary(device):
    """GPT-J: rotary_dim 8 of head_dim 16, interleaved pairs, (B, S, H, D)."""
    config = GPTJConfig(n_embd=64, n_head=4, rotary_dim=8, n_positions=128)
    hf_rope = hf_gptj.GPTJRotaryEmbedding(config).to(device)
    ours = RotaryEmbedding(config.rotary_dim, config.max_position_embeddings, interleaved=True)
    q = torch.randn(2, 5, 4, 16, device=device)
    k = torch.randn(2, 5, 4, 16, device=device)
    position_ids = _positions(device, 2, 5, 128)
    sin, cos = hf_rope(q, position_ids)
    rd = config.rotary_dim
    expected = [
        torch.cat([hf_gptj.apply_rotary_pos_emb(x[..., :rd], sin, cos), x[..., rd:]], dim=-1)
        for x in (q, k)
    ]
    got = ours.to(device)(q, k, position_ids)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b)


def test_from_config_gptj_rotary_dim(device):
    """GPT-J's config.rotary_dim: 64 of head_dim 128 rotated, as GPT-J's own code does."""
    config = GPTJConfig(n_embd=256, n_head=2, rotary_dim=64, n_positions=128)
    module = RotaryEmbedding.from_config(config, interleaved=True, device=device)
    assert module.params.rotary_dim == 64 and module.inv_freq.shape == (32,)
    hf_rope = hf_gptj.GPTJRotaryEmbedding(config).to(device)
    q = torch.randn(2, 5, 2, 128, device=device)
    k = torch.randn(2, 5, 2, 128, device=device)
    position_ids = _positions(device, 2, 5, 128)
    sin, cos = hf_rope(q, position_ids)
    expected = [
        torch.cat([hf_gptj.apply_rotary_pos_emb(x[..., :64], sin, cos), x[..., 64:]], dim=-1)
        for x in (q, k)
    ]
    for a, b in zip(module(q, k, position_ids), expected, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize(
    "config",
    [
        GPTNeoXConfig(hidden_size=256, num_attention_heads=4, rotary_pct=0.25),
        LlamaConfig(hidden_size=256, num_attention_heads=4, partial_rotary_factor=0.5),
        LlamaConfig(hidden_size=256, num_attention_heads=4, head_dim=32),
    ],
    ids=["rotary_pct", "partial_rotary_factor", "head_dim"],
)
def test_from_config_partial_rotary_spellings(config):
    head_dim = getattr(config, "head_dim", None) or 64
    partial = getattr(config, "partial_rotary_factor", None) or getattr(config, "rotary_pct", 1)
    partial = config.rope_parameters.get("partial_rotary_factor", partial)
    module = RotaryEmbedding.from_config(config)
    assert module.inv_freq.shape == (int(head_dim * partial) // 2,)


GEMMA3_ROPE = {
    "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
    "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0},
}


@pytest.mark.parametrize("layer_type", list(GEMMA3_ROPE))
def test_from_config_per_layer_rope_parameters(layer_type):
    """Gemma 3's per-layer rope_parameters: layer_type picks the entry, as Gemma 3 does."""
    config = Gemma3TextConfig(head_dim=64, rope_parameters=GEMMA3_ROPE)
    hf_rope = hf_gemma3.Gemma3RotaryEmbedding(config)
    module = RotaryEmbedding.from_config(config, layer_type=layer_type)
    assert module.params.rope_type == GEMMA3_ROPE[layer_type]["rope_type"]
    expected = getattr(hf_rope, f"{layer_type}_inv_freq")
    torch.testing.assert_close(module.inv_freq, expected, rtol=0, atol=0)
    assert module.attention_scaling == getattr(hf_rope, f"{layer_type}_attention_scaling")


def test_meta_init_then_to_empty_recomputes_inv_freq(device):
    """Built on the meta device then materialised with to_empty(): inv_freq is computed, not
    left as uninitialised memory."""
    expected = RotaryEmbedding(32, base=500000.0).inv_freq.to(device)
    with torch.device("meta"):
        module = RotaryEmbedding(32, base=500000.0)
    assert module.inv_freq.is_meta
    module = module.to_empty(device=device)
    torch.testing.assert_close(module.inv_freq, expected, rtol=0, atol=0)
    module.inv_freq.fill_(float("nan"))
    module.reset_parameters()
    torch.testing.assert_close(module.inv_freq, expected, rtol=0, atol=0)


def _module_check(check, module, dtype, device, seqlen, **kwargs):
    """``module``'s call against the float64 reference on fp32 frequencies computed afresh."""
    inv_freq, scale = rope_init(module.params, device=device)
    leaves = [
        torch.randn(1, seqlen, 2, module.params.head_dim, device=device).to(dtype),
        torch.randn(1, seqlen, 1, module.params.head_dim, device=device).to(dtype),
    ]
    check(
        functools.partial(module, **kwargs),
        functools.partial(reference.apply_rotary, inv_freq=inv_freq, attention_scaling=scale,
                          interleaved=module.interleaved, **kwargs),
        leaves,
    )  # fmt: skip


def test_any_position_r1(check, device):
    """CASES R1: built for 4096 positions, called with 5000, then 16 tokens at offset 4090."""
    module = RotaryEmbedding(8, max_position_embeddings=4096).to(device)
    _module_check(check, module, torch.float32, device, 5000)
    _module_check(check, module, torch.float32, device, 16, offset=4090)


def test_offset_zero_then_five_r2(check, device):
    """CASES R2: no cache keyed on length: offset 5 after offset 0 differs, and both are right."""
    module = RotaryEmbedding(16).to(device)
    q = torch.randn(1, 8, 2, 16, device=device)
    k = torch.randn(1, 8, 1, 16, device=device)
    first, second = module(q, k, offset=0), module(q, k, offset=5)
    assert not torch.allclose(first[0], second[0]) and not torch.allclose(first[1], second[1])
    _module_check(check, module, torch.float32, device, 8, offset=0)
    _module_check(check, module, torch.float32, device, 8, offset=5)


@pytest.mark.parametrize("cast", ["to_bf16", "bfloat16", "half"])
def test_module_cast_keeps_fp32_frequencies(check, device, cast):
    """Positions past 8192 in a module cast to bf16: inv_freq stays fp32, angles stay right."""
    module = RotaryEmbedding(32, max_position_embeddings=4096, base=500000.0).to(device)
    before = module.inv_freq.clone()
    module = module.to(torch.bfloat16) if cast == "to_bf16" else getattr(module, cast)()
    assert module.inv_freq.dtype == torch.float32 and torch.equal(module.inv_freq, before)
    dtype = torch.float16 if cast == "half" else torch.bfloat16
    position_ids = _positions(device, 1, 8, 40000) + 8192
    _module_check(check, module, dtype, device, 8, position_ids=position_ids)
    _module_check(check, module, dtype, device, 4, offset=9000)


def test_module_state_dict_is_empty_as_in_transformers(device):
    """inv_freq is a non-persistent buffer, as in transformers: checkpoints are unaffected."""
    hf_rope = hf_llama.LlamaRotaryEmbedding(_llama_config(SCALINGS["default"]))
    assert dict(RotaryEmbedding(64).state_dict()) == dict(hf_rope.state_dict()) == {}
    assert [name for name, _ in RotaryEmbedding(64).named_buffers()] == ["inv_freq"]


def test_module_packed_and_gradients(check, device):
    module = RotaryEmbedding(12, rope_type="linear", factor=2.0, interleaved=True).to(device)
    inv_freq, _ = rope_init(module.params, device=device)
    cu_seqlens = torch.tensor([0, 2, 7], device=device)
    leaves = [
        torch.randn(7, 3, 16, device=device, requires_grad=True),
        torch.randn(7, 1, 16, device=device, requires_grad=True),
    ]
    check(
        functools.partial(module, cu_seqlens=cu_seqlens, layout="thd"),
        functools.partial(
            reference.apply_rotary, inv_freq=inv_freq, interleaved=True,
            cu_seqlens=cu_seqlens, layout="thd",
        ),
        leaves,
    )  # fmt: skip


def test_public_names():
    assert fastformer.apply_rotary is fastformer.functional.apply_rotary
    assert fastformer.nn.RotaryEmbedding is RotaryEmbedding
    assert reference.apply_rotary is not None


def test_torch_compile_of_a_module_matches_eager(device):
    """CASES A13/I1: torch.compile around a module that scales q in bf16, then rotates: the
    same outputs and gradients as eager (the op runs eagerly inside the compiled graph)."""
    module = RotaryEmbedding(16).to(device)

    def block(q, k, position_ids):
        return module(q * 2, k, position_ids)

    compiled = torch.compile(block, backend="aot_eager")
    q = torch.randn(1, 4, 2, 16, device=device, dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(1, 4, 1, 16, device=device, dtype=torch.bfloat16, requires_grad=True)
    position_ids = torch.arange(4, device=device)[None] + 7
    grads = []
    for fn in (block, compiled):
        outputs = fn(q, k, position_ids)
        grads.append(torch.autograd.grad(outputs, (q, k), [torch.ones_like(o) for o in outputs]))
        grads[-1] = (*outputs, *grads[-1])
    for eager, traced in zip(*grads, strict=True):
        assert torch.equal(eager, traced)
