"""Attention on odd inputs: strided views, empty tensors, repeats, compile, and every rejection."""

from __future__ import annotations

import functools

import pytest
import torch

import fastformer
from fastformer import reference

SDPA = fastformer.scaled_dot_product_attention


def _check(check, make_inputs, leaves, **kwargs):
    """Check SDPA on views built from ``leaves`` by ``make_inputs``."""

    def run(fn, *tensors):
        return fn(*make_inputs(*tensors), **kwargs)

    check(
        functools.partial(run, SDPA),
        functools.partial(run, reference.scaled_dot_product_attention),
        leaves,
    )


def test_slices_of_a_fused_qkv_buffer(check, device):
    """CASES A9: q, k, v as slices of one (batch, seq, 3 * heads * dim) projection output."""
    batch, seq, heads, dim = 2, 11, 3, 32
    qkv = torch.randn(batch, seq, 3 * heads * dim, device=device, requires_grad=True)

    def split(qkv):
        q, k, v = qkv.view(batch, seq, 3, heads, dim).unbind(dim=2)  # each (B, S, H, D)
        return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H, S, D) views

    _check(check, split, [qkv], is_causal=True)


def test_expanded_kv_and_padding_mask(check, device):
    """CASES A9: stride-0 (expanded) k and v, with a key-padding mask."""
    q = torch.randn(2, 4, 9, 32, device=device, requires_grad=True)
    k = torch.randn(2, 1, 13, 32, device=device, requires_grad=True)
    v = torch.randn(2, 1, 13, 32, device=device, requires_grad=True)
    lengths = torch.tensor([13, 6], device=device)
    mask = (torch.arange(13, device=device)[None, :] < lengths[:, None])[:, None, None, :]

    def views(q, k, v):
        return q, k.expand(2, 4, 13, 32), v.expand(2, 4, 13, 32)

    _check(check, views, [q, k, v], attn_mask=mask)


def test_transposed_head_dim_layout(check, device):
    """Head dim not contiguous: (B, H, D, S) storage read through strides."""
    q, k, v = (torch.randn(1, 2, 32, 15, device=device, requires_grad=True) for _ in range(3))
    _check(check, lambda *t: (x.transpose(-1, -2) for x in t), [q, k, v])


@pytest.mark.parametrize("layout", ["transposed", "expanded"])
def test_grad_output_layouts(check, device, layout):
    q, k, v = (torch.randn(2, 3, 10, 32, device=device, requires_grad=True) for _ in range(3))

    def grad(out):
        if layout == "transposed":
            return torch.randn(out.shape[0], out.shape[2], out.shape[1], 32).transpose(1, 2)
        return torch.randn(1, 1, 1, 32).expand(out.shape)

    check(
        functools.partial(SDPA, is_causal=True),
        functools.partial(reference.scaled_dot_product_attention, is_causal=True),
        [q, k, v],
        grad_output_fn=lambda out: grad(out).to(device=out.device, dtype=out.dtype),
    )


@pytest.mark.parametrize(
    "shape_q,shape_kv",
    [((0, 2, 5, 16), (0, 2, 5, 16)), ((2, 0, 5, 16), (2, 0, 5, 16)),
     ((2, 2, 0, 16), (2, 2, 5, 16)), ((2, 2, 5, 16), (2, 2, 0, 16))],
    ids=["batch0", "heads0", "seq_q0", "seq_k0"],
)  # fmt: skip
def test_empty_inputs(device, shape_q, shape_kv):
    """CASES A5: correctly shaped empty (or, with no keys, zero) outputs and gradients."""
    q = torch.randn(shape_q, device=device, requires_grad=True)
    k = torch.randn(shape_kv, device=device, requires_grad=True)
    v = torch.randn(shape_kv, device=device, requires_grad=True)
    out = SDPA(q, k, v)
    assert out.shape == shape_q
    assert torch.equal(out, torch.zeros_like(out))
    grads = torch.autograd.grad(out, (q, k, v), torch.randn_like(out))
    for grad, tensor in zip(grads, (q, k, v), strict=True):
        assert grad.shape == tensor.shape and torch.equal(grad, torch.zeros_like(grad))


def test_repeated_backward_is_bitwise_identical(device):
    """CASES A10: 50 backwards on the same inputs give the same bits (no atomics)."""
    q = torch.randn(1, 4, 33, 32, device=device, requires_grad=True)
    k = torch.randn(1, 2, 40, 32, device=device, requires_grad=True)
    v = torch.randn(1, 2, 40, 32, device=device, requires_grad=True)
    out = SDPA(q, k, v, is_causal=True, enable_gqa=True)
    do = torch.randn_like(out)
    first = torch.autograd.grad(out, (q, k, v), do, retain_graph=True)
    for _ in range(49):
        again = torch.autograd.grad(out, (q, k, v), do, retain_graph=True)
        assert all(torch.equal(a, b) for a, b in zip(again, first, strict=True))


def test_torch_compile_of_a_module_matches_eager(device):
    """CASES A13: a compiled module around the attention, forward and backward, bf16."""

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(32, 96)

        def forward(self, x):
            q, k, v = self.proj(x).view(2, 7, 3, 2, 16).unbind(2)
            return SDPA(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)

    module = Block().to(device=device, dtype=torch.bfloat16)
    compiled = torch.compile(module, backend="aot_eager")
    x = torch.randn(2, 7, 32, device=device, dtype=torch.bfloat16)
    out, out_compiled = module(x), compiled(x)
    torch.testing.assert_close(out_compiled, out)
    grads = torch.autograd.grad(out.float().sum(), list(module.parameters()))
    grads_c = torch.autograd.grad(compiled(x).float().sum(), list(module.parameters()))
    for a, b in zip(grads_c, grads, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.gpu
def test_batch_times_heads_past_65535(check, device):
    """CASES A11: batch x heads = 65536 launches (batch*heads is on grid axis 0)."""
    q, k, v = (torch.randn(8192, 8, 16, 64, device=device, dtype=torch.float16) for _ in range(3))
    out = SDPA(q, k, v)
    expected = reference.scaled_dot_product_attention(
        q[-4:].float(), k[-4:].float(), v[-4:].float()
    )
    torch.testing.assert_close(out[-4:].float(), expected, atol=2e-3, rtol=2e-3)


def _t(*shape, dtype=torch.float32):
    return torch.randn(*shape, dtype=dtype)


Q, K = _t(2, 4, 8, 16), _t(2, 2, 8, 16)
CASES = {
    "q_not_tensor": (lambda: SDPA([1.0], K, K), TypeError, "q must be a torch.Tensor"),
    "q_int": (lambda: SDPA(Q.int(), K, K), TypeError, "q.dtype=torch.int32"),
    "q_2d": (lambda: SDPA(_t(8, 16), K, K), ValueError, "q.shape=(8, 16)"),
    "dtype_mismatch": (lambda: SDPA(Q, K.half(), K), TypeError, "k.dtype=torch.float16"),
    "device_mismatch": (lambda: SDPA(Q, K.to("meta"), K), ValueError, "k is on meta"),
    "kv_shapes": (lambda: SDPA(Q, K, _t(2, 2, 9, 16)), ValueError, "v.shape=(2, 2, 9, 16)"),
    "k_head_dim": (lambda: SDPA(Q, _t(2, 2, 8, 32), _t(2, 2, 8, 32)), ValueError, "k head_dim=32"),
    "v_head_dim": (lambda: SDPA(Q, K, _t(2, 2, 8, 8)), NotImplementedError, "v head_dim=8"),
    "head_dim_320": (
        lambda: SDPA(_t(1, 1, 4, 320), _t(1, 1, 4, 320), _t(1, 1, 4, 320)),
        NotImplementedError,
        "head_dim=320; at most 256",
    ),
    "gqa_not_enabled": (lambda: SDPA(Q, K, K), ValueError, "pass enable_gqa=True"),
    "gqa_not_multiple": (
        lambda: SDPA(_t(2, 5, 8, 16), K, K, enable_gqa=True),
        ValueError,
        "q heads=5 must be a multiple of k/v heads=2",
    ),
    "mask_shape": (
        lambda: SDPA(Q, Q, Q, attn_mask=torch.ones(3, 8, 8, dtype=torch.bool)),
        ValueError,
        "attn_mask.shape=(3, 8, 8)",
    ),
    "mask_dtype": (
        lambda: SDPA(Q, Q, Q, attn_mask=torch.ones(8, 8, dtype=torch.int64)),
        TypeError,
        "attn_mask.dtype=torch.int64",
    ),
    "dropout_range": (lambda: SDPA(Q, Q, Q, dropout_p=1.5), ValueError, "dropout_p=1.5"),
    "alignment": (
        lambda: SDPA(Q, Q, Q, is_causal=True, causal_alignment="left"),
        ValueError,
        "causal_alignment='left'",
    ),
    "scale_nan": (lambda: SDPA(Q, Q, Q, scale=float("nan")), ValueError, "scale=nan"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_rejects_bad_input(name):
    call, error, message = CASES[name]
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        call()
