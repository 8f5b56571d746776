"""NaN inputs in attention: NaN wherever eager PyTorch gives NaN, in the float64 reference
(output and log-sum-exp), while rows that see no key keep 0 and -inf.

Eager here is softmax over the masked scores (``F.scaled_dot_product_attention`` where it masks
the same way: causal, float masks). Keys a row may not see take no part, NaN or not, as under
eager's causal masking. Rows untouched by the NaN must equal the run without it bit for bit.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

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
