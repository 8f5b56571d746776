"""Adversarial cases for the decode ops (decode_attention, kv_cache_append_, rotate_queries)
found by a reviewer: the differentiable route (inputs that require grad) must compute what the
kernel route computes on the same arguments, and every refusal must name what the caller
passed. Small shapes; the float64 reference is ``fastformer.reference``."""

from __future__ import annotations

import functools

import pytest
import torch

import fastformer
from fastformer import reference
from fastformer.testing import compare

META = torch.device("meta")
BATCH, N_HEADS, N_KV_HEADS, HEAD_DIM = 2, 4, 2, 16


def _lengths(values, device):
    return torch.tensor(values, dtype=torch.int32, device=device)


def _paged(device, block_size=4, n_blocks=6):
    k_pages = torch.randn(n_blocks, block_size, N_KV_HEADS, HEAD_DIM, device=device)
    return k_pages, torch.randn_like(k_pages)


@pytest.mark.parametrize("sentinel", [-1, 2**30], ids=["minus_one", "large"])
def test_grad_route_ignores_unused_block_table_entries(check, device, sentinel):
    """Entries past a row's length are never read by the kernel (and not validated): the
    differentiable route must not index with them either (it raised IndexError)."""
    k_pages, v_pages = _paged(device)
    table = torch.tensor([[0, 1, 2], [3, sentinel, sentinel]], dtype=torch.int32, device=device)
    lengths = _lengths([10, 3], device)
    q = torch.randn(BATCH, N_HEADS, 1, HEAD_DIM, device=device)
    kernel = fastformer.decode_attention(q, k_pages, v_pages, lengths, block_table=table)
    leaves = [t.clone().requires_grad_() for t in (q, k_pages, v_pages)]
    routed = fastformer.decode_attention(*leaves, lengths, block_table=table)
    torch.testing.assert_close(routed, kernel)
    clean = table.clamp(0, k_pages.shape[0] - 1)  # what the reference can index
    check(
        functools.partial(fastformer.decode_attention, cache_seqlens=lengths, block_table=table),
        functools.partial(reference.decode_attention, cache_seqlens=lengths, block_table=clean),
        leaves,
        names=["q", "k_cache", "v_cache"],
    )


def test_grad_route_clamps_lengths_past_the_cache_like_the_kernel(device):
    """With validate=False a length past the capacity is clamped by the kernel; the
    differentiable route gave another answer for seqlen_q > 1 (its query positions were not
    clamped)."""
    capacity, seqlen_q = 8, 3
    q = torch.randn(1, N_HEADS, seqlen_q, HEAD_DIM, device=device)
    k_cache = torch.randn(1, N_KV_HEADS, capacity, HEAD_DIM, device=device)
    v_cache = torch.randn_like(k_cache)
    at_capacity = fastformer.decode_attention(q, k_cache, v_cache, _lengths([capacity], device))
    past = _lengths([capacity + 12], device)
    kernel = fastformer.decode_attention(q, k_cache, v_cache, past, validate=False)
    routed = fastformer.decode_attention(
        q.clone().requires_grad_(), k_cache, v_cache, past, validate=False
    )
    torch.testing.assert_close(kernel, at_capacity, atol=0, rtol=0)
    torch.testing.assert_close(routed, at_capacity)


def test_rotate_queries_names_the_lengths_on_another_device():
    """The error named ``position_ids``, an argument the caller never passed."""
    q = torch.randn(BATCH, N_HEADS, 1, HEAD_DIM)
    lengths = torch.zeros(BATCH, dtype=torch.int32, device=META)
    with pytest.raises(ValueError, match="cache_seqlens is on meta but q is on cpu"):
        fastformer.rotate_queries(q, torch.ones(HEAD_DIM // 2), lengths)


def test_rotate_queries_refuses_a_list_of_lengths():
    q = torch.randn(BATCH, N_HEADS, 1, HEAD_DIM)
    with pytest.raises(TypeError, match="cache_seqlens must be a torch.Tensor"):
        fastformer.rotate_queries(q, torch.ones(HEAD_DIM // 2), [1, 2])


@pytest.mark.parametrize(
    ("op", "error"),
    [("decode_attention", TypeError), ("kv_cache_append_", TypeError)],
)
def test_int64_lengths_are_refused_before_any_write(device, op, error):
    """int64 lengths (what ``torch.tensor([3, 5])`` gives) are refused with the dtype named,
    and the cache is left untouched."""
    k_cache = torch.randn(BATCH, N_KV_HEADS, 8, HEAD_DIM, device=device)
    v_cache = torch.randn_like(k_cache)
    before = k_cache.clone()
    lengths = torch.tensor([3, 5], device=device)
    with pytest.raises(error, match=r"cache_seqlens.dtype=torch.int64; expected torch.int32"):
        if op == "decode_attention":
            q = torch.randn(BATCH, N_HEADS, 1, HEAD_DIM, device=device)
            fastformer.decode_attention(q, k_cache, v_cache, lengths)
        else:
            new = torch.randn(BATCH, N_KV_HEADS, 1, HEAD_DIM, device=device)
            fastformer.kv_cache_append_(k_cache, v_cache, new, new.clone(), lengths)
    assert torch.equal(k_cache, before)


def test_queries_longer_than_the_rows_and_rows_at_capacity(check, device):
    """seqlen_q 4 over rows of 0, 2 (queries before the first key give 0) and the full cache,
    the cache an expanded (stride-0 batch) view: the float64 reference's result."""
    capacity = 8
    q = torch.randn(3, N_HEADS, 4, HEAD_DIM, device=device)
    k_cache = torch.randn(1, N_KV_HEADS, capacity, HEAD_DIM, device=device).expand(3, -1, -1, -1)
    v_cache = torch.randn(1, N_KV_HEADS, capacity, HEAD_DIM, device=device).expand(3, -1, -1, -1)
    lengths = _lengths([0, 2, capacity], device)
    check(
        functools.partial(fastformer.decode_attention, cache_seqlens=lengths, return_lse=True),
        functools.partial(reference.decode_attention, cache_seqlens=lengths, return_lse=True),
        [q, k_cache, v_cache],
    )
    out = fastformer.decode_attention(q, k_cache, v_cache, lengths)
    assert torch.equal(out[0], torch.zeros_like(out[0]))
    assert torch.equal(out[1, :, :2], torch.zeros_like(out[1, :, :2]))


@pytest.mark.parametrize(
    ("head_dim", "dtype"),
    [(64, torch.float16), (32, torch.float32), (64, torch.float32), (16, torch.bfloat16)],
    ids=["d64-fp16", "d32-fp32", "d64-fp32", "d16-bf16"],
)
def test_calls_in_a_row_with_other_head_dims_and_dtypes(check, device, head_dim, dtype):
    """I2: the same op with another head dim or dtype right after (parametrized in sequence
    in one process): every call correct."""
    q = torch.randn(BATCH, 2, 1, head_dim, device=device).to(dtype)
    k_cache = torch.randn(BATCH, 1, 20, head_dim, device=device).to(dtype)
    v_cache = torch.randn_like(k_cache)
    lengths = _lengths([20, 7], device)
    check(
        functools.partial(fastformer.decode_attention, cache_seqlens=lengths),
        functools.partial(reference.decode_attention, cache_seqlens=lengths),
        [q, k_cache, v_cache],
    )


@pytest.mark.parametrize("num_splits", [1, 3], ids=["one-split", "split"])
def test_nan_scores_give_a_nan_log_sum_exp(device, num_splits):
    """A NaN key inside a row's length: eager gives NaN output and NaN log-sum-exp. The kernel
    gave NaN output with a log-sum-exp of -inf ("no key seen"; one split) or a finite one
    (split): a caller merging partial attentions by their lse would drop the NaN silently.
    Keys past the length (NaN or inf there) still take no part. (The float64 reference maps a
    NaN row to 0, so eager PyTorch is the reference here.)"""
    q = torch.randn(BATCH, N_HEADS, 1, HEAD_DIM, device=device)
    k_cache = torch.randn(BATCH, N_KV_HEADS, 24, HEAD_DIM, device=device)
    v_cache = torch.randn_like(k_cache)
    k_cache[0, 0, 3] = float("nan")  # row 0, KV head 0: query heads 0 and 1
    k_cache[:, :, 20:] = float("inf")  # past both lengths
    v_cache[:, :, 20:] = float("nan")
    lengths = _lengths([20, 9], device)
    out, lse = fastformer.decode_attention(
        q, k_cache, v_cache, lengths, return_lse=True, num_splits=num_splits
    )
    scores = torch.einsum("bhd,bhkd->bhk", q[:, :, 0], k_cache.repeat_interleave(2, dim=1))
    keys = torch.arange(24, device=device)
    scores = scores.masked_fill(keys >= lengths[:, None, None], float("-inf"))
    expected_lse = torch.logsumexp(scores / HEAD_DIM**0.5, dim=-1)  # (B, H)
    assert torch.equal(lse[:, :, 0].isnan(), expected_lse.isnan())
    assert expected_lse.isnan().sum() == 2
    assert torch.equal(out.isnan().any(-1)[:, :, 0], expected_lse.isnan())
    finite = ~expected_lse.isnan()
    torch.testing.assert_close(lse[:, :, 0][finite], expected_lse[finite])


def test_rotation_at_offsets_past_a_model_context_and_per_row(check, device):
    """R1/R2: rows at lengths 4090 and 5 (a model built for 4096 positions decoding past it,
    another row just started): queries and appended keys are rotated at ``length + t`` of
    their own row, as the float64 rotation at those positions; the same q at two lengths
    gives two different results (nothing keyed on the length alone)."""
    inv_freq = 1.0 / 10000.0 ** (torch.arange(0, HEAD_DIM, 2, device=device).float() / HEAD_DIM)
    lengths = _lengths([4090, 5], device)
    q = torch.randn(BATCH, N_HEADS, 16, HEAD_DIM, device=device, requires_grad=True)
    positions = fastformer.decode_positions(lengths, 16)

    def expected(q):
        rotated, _ = reference.apply_rotary(
            q, q[:, :0], inv_freq.to(q.dtype), position_ids=positions, layout="bhsd"
        )
        return rotated

    check(lambda q: fastformer.rotate_queries(q, inv_freq, lengths), expected, [q])
    same = q.detach()[:1].expand(2, -1, -1, -1)
    both = fastformer.rotate_queries(same, inv_freq, _lengths([0, 5], device))
    assert not torch.allclose(both[0], both[1])
    k_cache = torch.zeros(BATCH, N_KV_HEADS, 4106, HEAD_DIM, device=device)
    v_cache = torch.zeros_like(k_cache)
    k_new = torch.randn(BATCH, N_KV_HEADS, 16, HEAD_DIM, device=device)
    fastformer.kv_cache_append_(k_cache, v_cache, k_new, k_new.clone(), lengths, inv_freq=inv_freq)
    got = torch.stack([k_cache[0, :, 4090:], k_cache[1, :, 5:21]])
    result = compare("appended keys", got, expected(k_new.double()), expected(k_new))
    assert result.ok, str(result)
