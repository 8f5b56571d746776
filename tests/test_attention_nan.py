"""NaN inputs in attention: NaN wherever eager PyTorch gives NaN, in the float64 reference and in
the kernel (output and log-sum-exp), while rows that see no key keep 0 and -inf.

Eager here is softmax over the masked scores (``F.scaled_dot_product_attention`` where it masks
the same way: causal, float masks). Keys a row may not see take no part, NaN or not, as under
eager's causal masking. Rows untouched by the NaN must equal the run without it bit for bit.
"""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F

import fastformer
from fastformer import reference

SHAPE = (2, 2, 9, 16)  # batch, heads, seq, head_dim: one key block under the interpreter
NAN_KEY = 4  # the key made NaN, in batch 0, head 1
NAN = float("nan")


def _eager(q, k, v, *, is_causal=False, keep=None, bias=None):
    """Eager softmax attention and log-sum-exp over masked scores (no special case for rows that
    see no key: softmax gives NaN there)."""
    scores = q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5
    if bias is not None:
        scores = scores + bias
    seqlen_q, seqlen_k = scores.shape[-2:]
    allowed = torch.ones(seqlen_q, seqlen_k, dtype=torch.bool, device=q.device)
    if is_causal:
        allowed = allowed.tril()
    if keep is not None:
        allowed = allowed & keep
    scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v, torch.logsumexp(scores, dim=-1)


def _inputs(device):
    q, k, v = (torch.randn(SHAPE, device=device, dtype=torch.float64) for _ in range(3))
    return q, k, v


def _nan_rows(out):
    """(batch, heads, seq) bool: rows with a NaN anywhere."""
    return out.isnan().any(dim=-1)


@pytest.mark.parametrize("is_causal", [False, True], ids=["full", "causal"])
def test_reference_nan_key_gives_nan_where_eager_does(device, is_causal):
    """The reference once mapped every row whose log-sum-exp was NaN to 0: a kernel turning
    NaN into 0 would have passed every test."""
    q, k, v = _inputs(device)
    k[0, 1, NAN_KEY] = NAN
    out, lse = reference.scaled_dot_product_attention(q, k, v, is_causal=is_causal, return_lse=True)
    sdpa = F.scaled_dot_product_attention(q, k, v, is_causal=is_causal)
    eager_out, eager_lse = _eager(q, k, v, is_causal=is_causal)
    assert torch.equal(out.isnan(), sdpa.isnan())
    assert torch.equal(lse.isnan(), eager_lse.isnan())
    assert lse.isnan().sum() == (SHAPE[2] - NAN_KEY if is_causal else SHAPE[2])
    torch.testing.assert_close(out[~out.isnan()], eager_out[~out.isnan()], rtol=0, atol=1e-12)


@pytest.mark.parametrize("where", ["q", "v", "float-mask"])
def test_reference_nan_in_q_v_or_mask(device, where):
    q, k, v = _inputs(device)
    bias = torch.randn(SHAPE[2], SHAPE[2], device=device, dtype=torch.float64)
    {"q": q[1, 0, 3], "v": v[0, 1, NAN_KEY, 5:6], "float-mask": bias[6, 2:3]}[where].fill_(NAN)
    out, lse = reference.scaled_dot_product_attention(q, k, v, attn_mask=bias, return_lse=True)
    sdpa = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    _, eager_lse = _eager(q, k, v, bias=bias)
    assert out.isnan().any()
    assert torch.equal(out.isnan(), sdpa.isnan())
    assert torch.equal(lse.isnan(), eager_lse.isnan())


def test_reference_rows_without_keys_stay_zero_next_to_nan(device):
    """A fully masked row (bool mask, -inf float mask) gives 0 and -inf; a row whose bool mask
    hides the NaN key stays finite; the others are NaN. A float mask adds to the scores as in
    eager, so NaN + -inf stays NaN: its fully masked row is NaN where the key is NaN."""
    q, k, v = _inputs(device)
    k[0, 1, NAN_KEY] = NAN
    keep = torch.ones(SHAPE[2], SHAPE[2], dtype=torch.bool, device=device)
    keep[2] = False  # row 2 sees nothing
    keep[5, NAN_KEY] = False  # row 5 does not see the NaN key
    bias = torch.zeros(SHAPE[2], SHAPE[2], device=device, dtype=torch.float64)
    bias[7] = float("-inf")  # row 7 sees nothing either
    out, lse = reference.scaled_dot_product_attention(
        q, k, v, attn_mask=keep, return_lse=True
    )  # fmt: skip
    out_bias, lse_bias = reference.scaled_dot_product_attention(
        q, k, v, attn_mask=bias, return_lse=True
    )  # fmt: skip
    _, eager_lse = _eager(q, k, v, keep=keep)
    empty = torch.ones(SHAPE[:3], dtype=torch.bool, device=device)
    empty[0, 1] = False  # the (batch, head) with the NaN key
    for o, lse_o, row in ((out, lse, 2), (out_bias, lse_bias, 7)):
        zeros, minus_inf = o[:, :, row][empty[:, :, row]], lse_o[:, :, row][empty[:, :, row]]
        assert torch.equal(zeros, torch.zeros_like(zeros))
        assert torch.equal(minus_inf, torch.full_like(minus_inf, float("-inf")))
    assert torch.equal(out[0, 1, 2], torch.zeros_like(out[0, 1, 2]))
    expected_nan = eager_lse.isnan()
    expected_nan[:, :, 2] = False
    assert torch.equal(_nan_rows(out), expected_nan)
    assert not out[0, 1, 5].isnan().any()
    sdpa = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    assert torch.equal(out_bias.isnan(), sdpa.isnan())
    assert _nan_rows(out_bias)[0, 1].all() and lse_bias[0, 1].isnan().all()


def test_reference_decode_nan_key_inside_the_length_only(device):
    """The decode reference goes through the attention reference: a NaN key inside a row's
    length gives NaN output and log-sum-exp; NaN past the length takes no part."""
    q = torch.randn(2, 2, 1, 16, device=device, dtype=torch.float64)
    k_cache = torch.randn(2, 2, 12, 16, device=device, dtype=torch.float64)
    v_cache = torch.randn_like(k_cache)
    k_cache[0, 1, 3] = NAN
    k_cache[:, :, 10:] = NAN
    lengths = torch.tensor([10, 6], device=device, dtype=torch.int32)
    out, lse = reference.decode_attention(q, k_cache, v_cache, lengths, return_lse=True)
    assert lse[:, :, 0].isnan().tolist() == [[False, True], [False, False]]
    assert _nan_rows(out)[:, :, 0].tolist() == [[False, True], [False, False]]


def _check_nan_rows(out, lse, clean_out, clean_lse, expected_nan):
    """NaN rows of the output and the log-sum-exp exactly as expected; every other row equal
    to the run without the NaN, bit for bit."""
    assert expected_nan.any() and not expected_nan.all()
    assert torch.equal(_nan_rows(out), expected_nan)
    assert torch.equal(out.isnan().all(dim=-1), expected_nan)  # the whole row, as eager
    assert torch.equal(lse.isnan(), expected_nan)
    assert torch.equal(out[~expected_nan], clean_out[~expected_nan])
    assert torch.equal(lse[~expected_nan], clean_lse[~expected_nan])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("is_causal", [False, True], ids=["full", "causal"])
def test_kernel_nan_key_gives_nan_output_and_lse(check, device, is_causal, dtype):
    """NaN in one key of one (batch, head): the kernel's log-sum-exp was -inf ("no key seen")
    there, with a NaN output; a caller merging partial attentions by their lse would drop it."""
    q, k, v = (t.to(dtype) for t in _inputs(device))
    clean_out, clean_lse = fastformer.scaled_dot_product_attention(
        q, k, v, is_causal=is_causal, return_lse=True
    )  # fmt: skip
    k[0, 1, NAN_KEY] = NAN
    out, lse = fastformer.scaled_dot_product_attention(
        q, k, v, is_causal=is_causal, return_lse=True
    )  # fmt: skip
    expected_nan = _nan_rows(F.scaled_dot_product_attention(q, k, v, is_causal=is_causal))
    _check_nan_rows(out, lse, clean_out, clean_lse, expected_nan)
    kwargs = dict(is_causal=is_causal, return_lse=True)
    check(
        functools.partial(fastformer.scaled_dot_product_attention, **kwargs),
        functools.partial(reference.scaled_dot_product_attention, **kwargs),
        [t.requires_grad_() for t in (q, k, v)],
    )


def test_kernel_row_whose_only_key_is_nan(device):
    """Causal row 0 sees key 0 alone, and it is NaN: its log-sum-exp is NaN, not -inf (on the
    GPU the running max skips NaN and stays -inf there, which once read as "no key")."""
    q, k, v = (t.float() for t in _inputs(device))
    clean_out, clean_lse = fastformer.scaled_dot_product_attention(
        q, k, v, is_causal=True, return_lse=True
    )  # fmt: skip
    k[0, 1, 0] = NAN
    out, lse = fastformer.scaled_dot_product_attention(q, k, v, is_causal=True, return_lse=True)
    expected_nan = torch.zeros(SHAPE[:3], dtype=torch.bool, device=device)
    expected_nan[0, 1] = True
    _check_nan_rows(out, lse, clean_out, clean_lse, expected_nan)


def test_kernel_bool_mask_hides_the_nan_key_and_empty_rows_stay_zero(check, device):
    q, k, v = (t.float() for t in _inputs(device))
    keep = torch.ones(SHAPE[2], SHAPE[2], dtype=torch.bool, device=device)
    keep[2] = False
    keep[5, NAN_KEY] = False
    clean_out, clean_lse = fastformer.scaled_dot_product_attention(
        q, k, v, attn_mask=keep, return_lse=True
    )  # fmt: skip
    k[0, 1, NAN_KEY] = NAN
    out, lse = fastformer.scaled_dot_product_attention(q, k, v, attn_mask=keep, return_lse=True)
    expected_nan = torch.zeros(SHAPE[:3], dtype=torch.bool, device=device)
    expected_nan[0, 1] = keep[:, NAN_KEY]
    _check_nan_rows(out, lse, clean_out, clean_lse, expected_nan)
    assert torch.equal(out[:, :, 2], torch.zeros_like(out[:, :, 2]))
    assert torch.equal(lse[:, :, 2], torch.full_like(lse[:, :, 2], float("-inf")))
    kwargs = dict(attn_mask=keep, return_lse=True)
    check(
        functools.partial(fastformer.scaled_dot_product_attention, **kwargs),
        functools.partial(reference.scaled_dot_product_attention, **kwargs),
        [t.requires_grad_() for t in (q, k, v)],
    )


def test_kernel_nan_float_mask_entry(device):
    q, k, v = (t.float() for t in _inputs(device))
    bias = torch.randn(SHAPE[2], SHAPE[2], device=device)
    clean_out, clean_lse = fastformer.scaled_dot_product_attention(
        q, k, v, attn_mask=bias, return_lse=True
    )  # fmt: skip
    bias[6, 2] = NAN
    out, lse = fastformer.scaled_dot_product_attention(q, k, v, attn_mask=bias, return_lse=True)
    expected_nan = _nan_rows(F.scaled_dot_product_attention(q, k, v, attn_mask=bias))
    _check_nan_rows(out, lse, clean_out, clean_lse, expected_nan)


def test_kernel_varlen_nan_key(check, device):
    """Packed causal sequences: the NaN key of sequence 1 reaches its rows from that key on,
    and no other sequence."""
    lengths = [5, 7, 3]
    cu = torch.tensor([0, 5, 12, 15], device=device)
    q, k, v = (torch.randn(15, 2, 16, device=device) for _ in range(3))
    kwargs = dict(cu_seqlens_q=cu, cu_seqlens_k=cu, is_causal=True, return_lse=True)
    clean_out, clean_lse = fastformer.varlen_attention(q, k, v, **kwargs)
    k[5 + 2, 0] = NAN  # sequence 1, its key 2, head 0
    out, lse = fastformer.varlen_attention(q, k, v, **kwargs)
    expected_nan = torch.zeros(15, 2, dtype=torch.bool, device=device)
    expected_nan[5 + 2 : 5 + lengths[1], 0] = True
    _check_nan_rows(out, lse, clean_out, clean_lse, expected_nan)
    check(
        functools.partial(fastformer.varlen_attention, **kwargs),
        functools.partial(reference.varlen_attention, **kwargs),
        [t.requires_grad_() for t in (q, k, v)],
    )
