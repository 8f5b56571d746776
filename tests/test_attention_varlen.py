"""Packed (variable-length) attention against the per-sequence float64 reference."""

from __future__ import annotations

import functools

import pytest
import torch

import fastformer
from fastformer import reference


def _cu(lengths, device):
    return torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], device=device)


def _packed(lengths_q, lengths_k, n_heads, n_kv_heads, head_dim, dtype, device):
    def make(total, heads):
        return torch.randn(total, heads, head_dim, device=device).to(dtype).requires_grad_()

    q = make(sum(lengths_q), n_heads)
    k, v = make(sum(lengths_k), n_kv_heads), make(sum(lengths_k), n_kv_heads)
    return q, k, v, _cu(lengths_q, device), _cu(lengths_k, device)


def _check_varlen(check, q, k, v, cu_q, cu_k, **kwargs):
    check(
        functools.partial(
            fastformer.varlen_attention, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, **kwargs
        ),
        functools.partial(
            reference.varlen_attention, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, **kwargs
        ),
        [q, k, v],
        names=["q", "k", "v"],
    )


@pytest.mark.parametrize("alignment", ["top_left", "bottom_right"])
@pytest.mark.parametrize("is_causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize(
    "dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"]
)
def test_matches_reference(check, device, dtype, is_causal, alignment):
    lengths_q, lengths_k = [5, 0, 37, 1, 9], [5, 3, 20, 1, 40]
    q, k, v, cu_q, cu_k = _packed(lengths_q, lengths_k, 4, 2, 32, dtype, device)
    _check_varlen(check, q, k, v, cu_q, cu_k, is_causal=is_causal, causal_alignment=alignment)


def test_empty_sequences_gqa_and_single_query_rows(check, device):
    """CASES A6: empty sequences, GQA 3:1, max_seqlen_q = 1."""
    q, k, v, cu_q, cu_k = _packed([1, 0, 1, 1], [7, 0, 0, 30], 6, 2, 64, torch.float16, device)
    _check_varlen(check, q, k, v, cu_q, cu_k, max_seqlen_q=1, is_causal=True)
    out = fastformer.varlen_attention(q, k, v, cu_q, cu_k)
    assert torch.equal(out[1], torch.zeros_like(out[1]))  # row 1: its sequence has no key


def test_one_key_many_queries_backward(device):
    """CASES A2: causal (bottom-right) packed backward, sequences with 1 key and many queries:
    every gradient finite, and dq of the rows that see no key exactly 0."""
    q, k, v, cu_q, cu_k = _packed([6, 4], [1, 1], 2, 2, 16, torch.float32, device)
    out = fastformer.varlen_attention(
        q, k, v, cu_q, cu_k, is_causal=True, causal_alignment="bottom_right"
    )
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), torch.randn_like(out))
    assert all(torch.isfinite(g).all() for g in (dq, dk, dv))
    blind = torch.tensor([0, 1, 2, 3, 4, 6, 7, 8])  # all but each sequence's last row
    assert torch.equal(dq[blind], torch.zeros_like(dq[blind]))
    assert torch.equal(out[blind], torch.zeros_like(out[blind]))


def test_sdpa_dispatches_packed_inputs(check, device):
    q, k, v, cu_q, cu_k = _packed([3, 8], [3, 8], 2, 2, 32, torch.float32, device)
    got = fastformer.scaled_dot_product_attention(
        q, k, v, is_causal=True, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k
    )
    want = fastformer.varlen_attention(q, k, v, cu_q, cu_k, is_causal=True)
    assert torch.equal(got, want)


def test_packed_equals_padded_dense(device):
    """The padding-free path gives what a padded batch with a key-padding mask gives."""
    lengths = [7, 3, 12]
    q, k, v, cu_q, _ = _packed(lengths, lengths, 2, 2, 32, torch.float32, device)
    packed = fastformer.varlen_attention(q, k, v, cu_q, cu_q)
    dense = torch.zeros(3, 2, 12, 32, device=device)
    qd, kd, vd = dense.clone(), dense.clone(), dense.clone()
    for b, (start, n) in enumerate(zip(cu_q.tolist(), lengths, strict=False)):
        qd[b, :, :n] = q[start : start + n].detach().transpose(0, 1)
        kd[b, :, :n] = k[start : start + n].detach().transpose(0, 1)
        vd[b, :, :n] = v[start : start + n].detach().transpose(0, 1)
    mask = torch.arange(12, device=device)[None, :] < torch.tensor(lengths, device=device)[:, None]
    out = fastformer.scaled_dot_product_attention(qd, kd, vd, attn_mask=mask[:, None, None, :])
    for b, (start, n) in enumerate(zip(cu_q.tolist(), lengths, strict=False)):
        torch.testing.assert_close(packed[start : start + n], out[b, :, :n].transpose(0, 1))


def _qkv():
    return torch.randn(10, 2, 16), torch.randn(10, 2, 16), torch.randn(10, 2, 16)


VARLEN = fastformer.varlen_attention
GOOD = torch.tensor([0, 4, 10])
CASES = {
    "not_from_zero": (
        lambda: VARLEN(*_qkv(), torch.tensor([1, 4, 10]), GOOD),
        ValueError,
        "cu_seqlens_q=[1, 4, 10]",
    ),
    "decreasing": (
        lambda: VARLEN(*_qkv(), GOOD, torch.tensor([0, 6, 5, 10])),
        ValueError,
        "cu_seqlens_k=[0, 6, 5, 10]",
    ),
    "short_total": (
        lambda: VARLEN(*_qkv(), torch.tensor([0, 4, 9]), GOOD),
        ValueError,
        "packed length 10",
    ),
    "float_offsets": (
        lambda: VARLEN(*_qkv(), GOOD.float(), GOOD),
        TypeError,
        "cu_seqlens_q must be a 1-D int32",
    ),
    "count_mismatch": (
        lambda: VARLEN(*_qkv(), GOOD, torch.tensor([0, 10])),
        ValueError,
        "cu_seqlens_q has 3 offsets",
    ),
    "max_too_small": (
        lambda: VARLEN(*_qkv(), GOOD, GOOD, 5),
        ValueError,
        "the longest sequence has 6 rows",
    ),
    "dense_inputs": (
        lambda: VARLEN(torch.randn(1, 10, 2, 16), *_qkv()[1:], GOOD, GOOD),
        ValueError,
        "expected packed",
    ),
    "mask": (
        lambda: fastformer.scaled_dot_product_attention(
            *_qkv(),
            attn_mask=torch.ones(10, 10, dtype=torch.bool),
            cu_seqlens_q=GOOD,
            cu_seqlens_k=GOOD,
        ),
        NotImplementedError,
        "attn_mask with packed sequences",
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_rejects_bad_input(name):
    call, error, message = CASES[name]
    with pytest.raises(error, match=message.replace("[", r"\[").replace("]", r"\]")):
        call()
