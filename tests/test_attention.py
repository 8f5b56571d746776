"""Fused attention against the float64 reference: outputs and dq, dk, dv."""

from __future__ import annotations

import functools

import pytest
import torch

import fastformer
from fastformer import reference

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
DTYPE_IDS = ["fp32", "fp16", "bf16"]


def _qkv(batch, n_heads, n_kv_heads, seqlen_q, seqlen_k, head_dim, dtype, device):
    def make(heads, seq):
        return torch.randn(batch, heads, seq, head_dim, device=device).to(dtype).requires_grad_()

    return make(n_heads, seqlen_q), make(n_kv_heads, seqlen_k), make(n_kv_heads, seqlen_k)


def _check_attention(check, q, k, v, **kwargs):
    kwargs.setdefault("enable_gqa", q.shape[-3] != k.shape[-3])
    check(
        functools.partial(fastformer.scaled_dot_product_attention, **kwargs),
        functools.partial(reference.scaled_dot_product_attention, **kwargs),
        [q, k, v],
        names=["q", "k", "v"],
    )


SEQ_PAIRS = [(1, 1), (17, 17), (63, 65), (65, 63), (127, 127), (129, 129), (5, 2), (2, 5)]


@pytest.mark.parametrize("is_causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("seqs", SEQ_PAIRS, ids=lambda s: f"q{s[0]}_k{s[1]}")
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_matches_reference(check, device, dtype, seqs, is_causal):
    """CASES A1 and A8: causal with seqlen_q != seqlen_k is aligned top-left, as SDPA does."""
    q, k, v = _qkv(2, 2, 2, *seqs, 32, dtype, device)
    _check_attention(check, q, k, v, is_causal=is_causal)


@pytest.mark.parametrize("seqs", [(5, 2), (2, 5), (17, 40), (40, 17)], ids=str)
def test_bottom_right_causal(check, device, seqs):
    """CASES A1: bottom-right alignment (KV-cache prefill); rows before any key give 0."""
    q, k, v = _qkv(1, 2, 2, *seqs, 32, torch.float16, device)
    _check_attention(check, q, k, v, is_causal=True, causal_alignment="bottom_right")


@pytest.mark.parametrize("head_dim", [16, 32, 64, 128, 256, 72, 80, 96, 160])
def test_head_dims(check, device, head_dim):
    """CASES A7: powers of two and not, up to 256."""
    q, k, v = _qkv(1, 2, 2, 19, 23, head_dim, torch.float16, device)
    _check_attention(check, q, k, v, is_causal=True)


@pytest.mark.parametrize(
    ("n_heads", "n_kv_heads"),
    [(4, 2), (16, 2), (8, 1), (6, 3)],
    ids=["gqa2", "gqa8", "mqa8", "gqa3"],
)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_grouped_query_attention(check, device, dtype, n_heads, n_kv_heads):
    """GQA and MQA: dk and dv summed over each group of query heads."""
    q, k, v = _qkv(2, n_heads, n_kv_heads, 20, 24, 32, dtype, device)
    _check_attention(check, q, k, v, is_causal=True)


MASK_SHAPES = {
    "key_padding": lambda b, h, sq, sk: (b, 1, 1, sk),
    "shared": lambda b, h, sq, sk: (1, 1, sq, sk),
    "full": lambda b, h, sq, sk: (b, h, sq, sk),
    "2d": lambda b, h, sq, sk: (sq, sk),
}


@pytest.mark.parametrize("kind", ["bool", "float"])
@pytest.mark.parametrize("shape", list(MASK_SHAPES))
def test_masks(check, device, kind, shape):
    q, k, v = _qkv(2, 3, 3, 13, 21, 32, torch.float16, device)
    mask_shape = MASK_SHAPES[shape](2, 3, 13, 21)
    if kind == "bool":
        mask = torch.rand(mask_shape, device=device) > 0.3
    else:
        mask = torch.randn(mask_shape, device=device).to(torch.float16)
    _check_attention(check, q, k, v, attn_mask=mask)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_all_false_mask_row_gives_zero_and_finite_grads(check, device, dtype):
    """CASES A3: a row that may see no key is 0, and no gradient is NaN."""
    q, k, v = _qkv(1, 2, 2, 9, 12, 32, dtype, device)
    mask = torch.rand(1, 1, 9, 12, device=device) > 0.4
    mask[..., 4, :] = False
    _check_attention(check, q, k, v, attn_mask=mask)
    out = fastformer.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert torch.equal(out[:, :, 4], torch.zeros_like(out[:, :, 4]))
    grads = torch.autograd.grad(out, (q, k, v), torch.randn_like(out))
    assert all(torch.isfinite(grad).all() for grad in grads)
    assert torch.equal(grads[0][:, :, 4], torch.zeros_like(grads[0][:, :, 4]))


@pytest.mark.parametrize("shape", ["full", "shared", "key_padding"])
def test_trainable_float_mask_gets_its_gradient(check, device, shape):
    """A learned position bias: the mask's gradient, summed over its broadcast dims."""
    q, k, v = _qkv(2, 3, 3, 11, 14, 32, torch.float32, device)
    bias = torch.randn(MASK_SHAPES[shape](2, 3, 11, 14), device=device, requires_grad=True)
    check(
        lambda q, k, v, bias: fastformer.scaled_dot_product_attention(
            q, k, v, attn_mask=bias, is_causal=True
        ),
        lambda q, k, v, bias: reference.scaled_dot_product_attention(
            q, k, v, attn_mask=bias, is_causal=True
        ),
        [q, k, v, bias],
        names=["q", "k", "v", "bias"],
    )


def test_float_mask_with_minus_inf_rows(check, device):
    q, k, v = _qkv(1, 2, 2, 7, 10, 32, torch.float32, device)
    mask = torch.randn(7, 10, device=device)
    mask[2] = float("-inf")
    mask[:, 3] = float("-inf")
    _check_attention(check, q, k, v, attn_mask=mask, is_causal=True)


def test_causal_rows_without_keys_have_zero_dq(device):
    """CASES A2 (dense form): bottom-right causal with seqlen_q > seqlen_k."""
    q, k, v = _qkv(1, 2, 2, 6, 2, 16, torch.float32, device)
    out = fastformer.scaled_dot_product_attention(
        q, k, v, is_causal=True, causal_alignment="bottom_right"
    )
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), torch.randn_like(out))
    assert torch.equal(out[:, :, :4], torch.zeros_like(out[:, :, :4]))
    assert torch.equal(dq[:, :, :4], torch.zeros_like(dq[:, :, :4]))
    assert all(torch.isfinite(g).all() for g in (dq, dk, dv))


def test_single_token_fp16(check, device):
    """CASES A4: seq_q = seq_k = 1, head_dim 16, fp16."""
    q, k, v = _qkv(3, 2, 2, 1, 1, 16, torch.float16, device)
    _check_attention(check, q, k, v, is_causal=True)


def test_return_lse(device):
    q, k, v = _qkv(2, 2, 2, 9, 14, 32, torch.float32, device)
    mask = torch.ones(9, 14, dtype=torch.bool, device=device)
    mask[3] = False
    out, lse = fastformer.scaled_dot_product_attention(q, k, v, attn_mask=mask, return_lse=True)
    ref_out, ref_lse = reference.scaled_dot_product_attention(
        q.double(), k.double(), v.double(), attn_mask=mask, return_lse=True
    )
    torch.testing.assert_close(out.double(), ref_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse.double(), ref_lse, atol=1e-5, rtol=1e-5)
    assert torch.isneginf(lse[:, :, 3]).all()


def test_unbatched_inputs(check, device):
    q, k, v = (
        t.detach()[0].requires_grad_() for t in _qkv(1, 2, 2, 7, 9, 32, torch.float32, device)
    )
    _check_attention(check, q, k, v, is_causal=True)


@pytest.mark.gpu
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_realistic_sizes_on_gpu(check, device, dtype, head_dim):
    q, k, v = _qkv(4, 16, 4, 1024, 1024, head_dim, dtype, device)
    _check_attention(check, q, k, v, is_causal=True)


@pytest.mark.parametrize(
    # (1, 0) and (17, 2) put a band's last query row at the start of a 16-row block, where an
    # off-by-one in the backward's row range would drop it.
    "window",
    [(4, 0), (3, 5), (0, 0), (-1, 2), (6, -1), (1, 0), (17, 2)],
    ids=lambda w: f"l{w[0]}_r{w[1]}",
)
@pytest.mark.parametrize("seqs", [(70, 70), (17, 50), (50, 17)], ids=str)
def test_sliding_window(check, device, seqs, window):
    """Sliding window (left, right) around the diagonal; key blocks outside it are skipped."""
    q, k, v = _qkv(1, 2, 2, *seqs, 32, torch.float16, device)
    _check_attention(check, q, k, v, window=window, causal_alignment="bottom_right")


def test_sliding_window_with_causal_and_packed(check, device):
    q, k, v = _qkv(1, 2, 2, 45, 45, 32, torch.float32, device)
    _check_attention(check, q, k, v, window=(7, 3), is_causal=True)
    packed = [t.detach()[0].transpose(0, 1).contiguous().requires_grad_() for t in (q, k, v)]
    cu = torch.tensor([0, 20, 45], device=device)
    check(
        functools.partial(
            fastformer.varlen_attention, cu_seqlens_q=cu, cu_seqlens_k=cu, window=(5, 0)
        ),
        functools.partial(
            reference.varlen_attention, cu_seqlens_q=cu, cu_seqlens_k=cu, window=(5, 0)
        ),
        packed,
    )
