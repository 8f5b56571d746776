"""fastformer.nn.MultiHeadAttention against an eager composition written with torch ops.

The reference below is the textbook computation (projections, rotate-half rotary, repeated KV
heads, softmax of masked scores) written independently of the module, run in float64 (the
truth) and in the tested dtype (eager's own error). The module runs with its parameters passed
as leaves (``torch.func.functional_call``), so the output, the inputs' gradients and every
parameter's gradient are held to the tolerance rule.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from module_reference import reference_attention

import fastformer.nn
from fastformer.functional.attention import draw_seed
from fastformer.kernels import attention_common
from fastformer.nn.attention import MultiHeadAttention

HIDDEN, HEADS, MEMORY_WIDTH = 32, 4, 24
BATCH, SEQ_Q, SEQ_K = 2, 5, 7
ROTARY_DIM = 6  # partial rotary: 6 of head_dim=8 features rotated

# name -> MultiHeadAttention keyword arguments (besides hidden size and heads) and what the
# call passes: padding mask, additive bias, explicit rotary positions.
CASES = {
    "self_fused": dict(),
    "self_separate": dict(fused_qkv=False),
    "causal": dict(is_causal=True),
    "no_bias": dict(bias=False, fused_qkv=False),
    "gqa_fused": dict(n_kv_heads=2, is_causal=True),
    "gqa_separate": dict(n_kv_heads=1, fused_qkv=False),
    "padding": dict(padding=True),
    "padding_causal_bias": dict(is_causal=True, padding=True, bias_input=True),
    "bias": dict(bias_input=True, n_kv_heads=2),
    "rotary": dict(rotary=True, is_causal=True),
    "rotary_gqa_separate_positions": dict(
        rotary=True, n_kv_heads=2, fused_qkv=False, positions=True
    ),
    "cross_fused": dict(is_cross_attention=True),
    "cross_separate_gqa_padding": dict(
        is_cross_attention=True, fused_qkv=False, n_kv_heads=2, padding=True
    ),
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# fp16 is as cheap as the others here but adds little over bf16: run it on a few cases.
FP16_CASES = ("self_fused", "gqa_fused", "cross_fused", "rotary")


def _build(case: dict, device, dtype) -> MultiHeadAttention:
    kwargs = {k: v for k, v in case.items() if k not in ("padding", "bias_input", "positions")}
    if kwargs.pop("rotary", False):
        kwargs["rotary"] = fastformer.nn.RotaryEmbedding(ROTARY_DIM, device=device)
    if kwargs.get("is_cross_attention"):
        kwargs["kv_hidden_size"] = MEMORY_WIDTH
    module = MultiHeadAttention(HIDDEN, HEADS, device=device, **kwargs)
    with torch.no_grad():  # biases away from zero, so their gradients mean something
        for param in module.parameters():
            param.copy_(torch.randn_like(param) / math.sqrt(param.shape[-1]))
    return module.to(dtype)


def _check_module(check, module, case, device, dtype):
    cross = case.get("is_cross_attention", False)
    seq_k = SEQ_K if cross else SEQ_Q
    x = torch.randn(BATCH, SEQ_Q, HIDDEN, device=device, dtype=dtype, requires_grad=True)
    leaves, labels = [x], ["x"]
    memory = bias = padding = positions = None
    if cross:
        memory = torch.randn(BATCH, seq_k, MEMORY_WIDTH, device=device, dtype=dtype)
        leaves.append(memory.requires_grad_())
        labels.append("memory")
    if case.get("bias_input"):
        bias = torch.randn(1, HEADS, SEQ_Q, seq_k, device=device, dtype=dtype)
        leaves.append(bias.requires_grad_())
        labels.append("attn_bias")
    if case.get("padding"):
        padding = torch.ones(BATCH, seq_k, dtype=torch.bool, device=device)
        padding[1, seq_k - 2 :] = False
    if case.get("positions"):
        positions = torch.randint(0, 50, (BATCH, SEQ_Q), device=device)
    names = [name for name, _ in module.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in module.parameters()]
    n_inputs = len(leaves)

    def run_ours(*args):
        inputs = dict(zip(labels, args[:n_inputs], strict=True))
        weights = dict(zip(names, args[n_inputs:], strict=True))
        kwargs = dict(
            key_padding_mask=padding, attn_bias=inputs.get("attn_bias"), position_ids=positions
        )
        return torch.func.functional_call(
            module, weights, (inputs["x"], inputs.get("memory")), kwargs
        )

    def run_reference(*args):
        inputs = dict(zip(labels, args[:n_inputs], strict=True))
        weights = dict(zip(names, args[n_inputs:], strict=True))
        return reference_attention(
            module, weights, inputs["x"], inputs.get("memory"), padding,
            inputs.get("attn_bias"), positions,
        )  # fmt: skip

    check(run_ours, run_reference, leaves + params, names=labels + names)


@pytest.mark.parametrize("dtype", list(DTYPES.values()), ids=list(DTYPES))
@pytest.mark.parametrize("name", list(CASES))
def test_matches_reference(check, device, name, dtype):
    if dtype == torch.float16 and name not in FP16_CASES:
        pytest.skip(f"fp16 runs on {FP16_CASES} only (bf16 covers the rest)")
    module = _build(CASES[name], device, dtype)
    _check_module(check, module, CASES[name], device, dtype)


def test_fused_and_separate_projections_agree(device):
    """The same weights, fused (one GEMM) or split into q/k/v: the same result."""
    fused = _build(dict(n_kv_heads=2), device, torch.float32)
    separate = MultiHeadAttention(HIDDEN, HEADS, 2, fused_qkv=False, device=device)
    q, k, v = fused.qkv_proj.weight.detach().split([HIDDEN, 16, 16])
    qb, kb, vb = fused.qkv_proj.bias.detach().split([HIDDEN, 16, 16])
    separate.load_state_dict(
        {
            "q_proj.weight": q, "q_proj.bias": qb, "k_proj.weight": k, "k_proj.bias": kb,
            "v_proj.weight": v, "v_proj.bias": vb, **{
                f"o_proj.{n}": p for n, p in fused.o_proj.named_parameters()
            },
        }
    )  # fmt: skip
    x = torch.randn(BATCH, SEQ_Q, HIDDEN, device=device)
    torch.testing.assert_close(fused(x), separate(x), rtol=1e-5, atol=1e-5)


def test_loads_llama_attention_state_dict(device):
    """Separate projections carry LLaMA's parameter names (o_proj included)."""
    transformers = pytest.importorskip("transformers")
    from transformers.models.llama.modeling_llama import LlamaAttention

    config = transformers.LlamaConfig(
        hidden_size=HIDDEN, num_attention_heads=HEADS, num_key_value_heads=2
    )
    theirs = LlamaAttention(config, layer_idx=0)
    ours = MultiHeadAttention(HIDDEN, HEADS, 2, fused_qkv=False, bias=False, device=device)
    assert ours.load_state_dict(theirs.state_dict()) is not None
    assert sorted(ours.state_dict()) == sorted(theirs.state_dict())


RATE = 0.25


def test_dropout_in_training_only(check, device):
    """Training: the kernel's dropout, whose keep mask (rebuilt from the same seed) makes the
    reference agree; eval(): no dropout."""
    module = _build(dict(n_kv_heads=2, is_causal=True), device, torch.float32)
    module.dropout = RATE
    x = torch.randn(BATCH, SEQ_Q, HIDDEN, device=device)
    module.eval()
    no_dropout = module(x)
    module.train()
    torch.manual_seed(1234)
    trained = module(x)
    torch.manual_seed(1234)
    problem = attention_common.Problem(BATCH, HEADS, 2, SEQ_Q, SEQ_Q, module.head_dim)
    keep = attention_common.dropout_mask(draw_seed(), problem, RATE, device)
    assert not torch.allclose(trained, no_dropout)

    params = dict(module.named_parameters())

    def reference(x):
        heads, head_dim = HEADS, module.head_dim
        q, k, v = F.linear(x, params["qkv_proj.weight"], params["qkv_proj.bias"]).split(
            [HIDDEN, 16, 16], dim=-1
        )
        q = q.reshape(BATCH, SEQ_Q, heads, head_dim).transpose(1, 2)
        k = k.reshape(BATCH, SEQ_Q, 2, head_dim).transpose(1, 2).repeat_interleave(2, 1)
        v = v.reshape(BATCH, SEQ_Q, 2, head_dim).transpose(1, 2).repeat_interleave(2, 1)
        scores = q @ k.transpose(-1, -2) / math.sqrt(head_dim)
        scores = scores.masked_fill(torch.ones(SEQ_Q, SEQ_Q).bool().triu(1), float("-inf"))
        probs = torch.softmax(scores, -1) * keep / (1 - RATE)
        out = (probs @ v).transpose(1, 2).reshape(BATCH, SEQ_Q, HIDDEN)
        return F.linear(out, params["o_proj.weight"], params["o_proj.bias"])

    torch.testing.assert_close(trained, reference(x), rtol=1e-5, atol=1e-5)


def test_padding_with_bias_gives_bias_gradient_zero_at_padding(device):
    """Folding the padding into the bias as -inf: padded keys get no bias gradient."""
    module = _build(dict(), device, torch.float32)
    x = torch.randn(BATCH, SEQ_Q, HIDDEN, device=device)
    bias = torch.randn(BATCH, HEADS, SEQ_Q, SEQ_Q, device=device, requires_grad=True)
    padding = torch.ones(BATCH, SEQ_Q, dtype=torch.bool, device=device)
    padding[0, -2:] = False
    module(x, key_padding_mask=padding, attn_bias=bias).square().sum().backward()
    assert torch.all(bias.grad[0, :, :, -2:] == 0)
    assert torch.all(bias.grad[0, :, :, :-2].abs().sum(-1) > 0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(hidden_size=30, n_heads=4), "hidden_size=30 is not divisible by n_heads=4"),
        (dict(n_heads=4, n_kv_heads=3), "n_heads=4 is not divisible by n_kv_heads=3"),
        (dict(hidden_size=1040, n_heads=2), "head_dim=hidden_size/n_heads=1040/2=520"),
        (dict(n_heads=0), "n_heads=0"),
        (dict(n_kv_heads=0), "n_kv_heads=0"),
        (dict(dropout=1.0), "dropout=1.0"),
        (dict(rotary=True, is_cross_attention=True), "rotary is for self-attention"),
        (dict(rotary=64), "rotary dim=64 exceeds head_dim=8"),
    ],
    ids=["hidden_heads", "heads_kv", "head_dim", "zero_heads", "zero_kv", "dropout",
         "rotary_cross", "rotary_dim"],
)  # fmt: skip
def test_bad_config(kwargs, message):
    kwargs = {"hidden_size": HIDDEN, "n_heads": HEADS, **kwargs}
    rotary = kwargs.pop("rotary", None)
    if rotary is not None:
        kwargs["rotary"] = fastformer.nn.RotaryEmbedding(ROTARY_DIM if rotary is True else rotary)
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        MultiHeadAttention(**kwargs)


def test_bad_call(device):
    self_attn = MultiHeadAttention(HIDDEN, HEADS, device=device)
    cross = MultiHeadAttention(HIDDEN, HEADS, is_cross_attention=True, device=device)
    x = torch.randn(BATCH, SEQ_Q, HIDDEN, device=device)
    with pytest.raises(ValueError, match="is_cross_attention=False but key_value_states"):
        self_attn(x, x)
    with pytest.raises(ValueError, match="is_cross_attention=True but key_value_states"):
        cross(x)
    with pytest.raises(ValueError, match=r"hidden_states.shape=\(2, 5, 16\)"):
        self_attn(x[..., :16])
    with pytest.raises(ValueError, match="key_padding_mask: dtype=torch.int64"):
        self_attn(x, key_padding_mask=torch.ones(BATCH, SEQ_Q, dtype=torch.long))
    with pytest.raises(ValueError, match="attn_bias.dtype=torch.int64"):
        self_attn(x, attn_bias=torch.ones(1, HEADS, SEQ_Q, SEQ_Q, dtype=torch.long))
