"""Decode attention against the float64 reference: mixed lengths per row, GQA, splits, paging.

Inputs are fresh random values; outputs come from NaN-poisoned buffers (conftest), so an
element a kernel never writes fails. The reference cuts each row's keys at its length and runs
the dense attention reference with bottom-right causal alignment, independently of the
kernels' split arithmetic.
"""

from __future__ import annotations

import functools

import pytest
import torch

import fastformer
from fastformer import reference
from fastformer.kernels import decode as decode_kernels

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
DTYPE_IDS = ["fp32", "fp16", "bf16"]


def _lengths(values, device):
    return torch.tensor(values, dtype=torch.int32, device=device)


def _inputs(batch, n_heads, n_kv_heads, seqlen_q, capacity, head_dim, dtype, device):
    q = torch.randn(batch, n_heads, seqlen_q, head_dim, device=device).to(dtype)
    k_cache = torch.randn(batch, n_kv_heads, capacity, head_dim, device=device).to(dtype)
    v_cache = torch.randn(batch, n_kv_heads, capacity, head_dim, device=device).to(dtype)
    return q, k_cache, v_cache


def _check_decode(check, q, k_cache, v_cache, lengths, **kwargs):
    """Output and log-sum-exp within the tolerance rule of the float64 reference."""
    kwargs.setdefault("return_lse", True)
    check(
        functools.partial(fastformer.decode_attention, cache_seqlens=lengths, **kwargs),
        functools.partial(reference.decode_attention, cache_seqlens=lengths, **kwargs),
        [q, k_cache, v_cache],
        names=["q", "k_cache", "v_cache"],
    )


@pytest.mark.parametrize("seqlen_q", [1, 4], ids=["q1", "q4"])
@pytest.mark.parametrize(
    ("n_heads", "n_kv_heads"), [(9, 3), (8, 1), (2, 2)], ids=["gqa3", "mqa8", "mha"]
)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_matches_reference(check, device, dtype, n_heads, n_kv_heads, seqlen_q):
    """A different length per row, a row of 0, rows shorter than seqlen_q (queries before the
    first key give 0), rows that end at the cache's capacity."""
    q, k_cache, v_cache = _inputs(4, n_heads, n_kv_heads, seqlen_q, 80, 32, dtype, device)
    lengths = _lengths([0, 3, 37, 80], device)
    _check_decode(check, q, k_cache, v_cache, lengths)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_long_and_short_rows_in_one_call(check, device, dtype):
    """Lengths 1, 37 and 5000 together (SmolLM2's 9:3 grouping), on the heuristic's splits and
    on many splits."""
    q, k_cache, v_cache = _inputs(3, 9, 3, 1, 5000, 16, dtype, device)
    lengths = _lengths([1, 37, 5000], device)
    _check_decode(check, q, k_cache, v_cache, lengths)
    if dtype == torch.float32:
        _check_decode(check, q, k_cache, v_cache, lengths, num_splits=13)


SPLIT_CASES = [
    (torch.float32, 2, 3),
    (torch.float16, 2, 7),
    (torch.bfloat16, 2, 40),
    (torch.float32, 1, decode_kernels.MAX_SPLITS),
]


@pytest.mark.parametrize(
    ("dtype", "batch", "num_splits"), SPLIT_CASES, ids=lambda v: str(v).removeprefix("torch.")
)
def test_split_combine_matches_single_pass(check, device, dtype, batch, num_splits):
    """Splitting the keys and merging by log-sum-exp gives the single pass's result: within
    fp32 rounding of it before the final cast, and within the rule of the reference. Splits of
    one key or none (more splits than key tiles) included."""
    q, k_cache, v_cache = _inputs(batch, 6, 2, 3, 300, 32, dtype, device)
    lengths = _lengths([300, 2][:batch], device)
    single, lse_single = fastformer.decode_attention(
        q, k_cache, v_cache, lengths, num_splits=1, return_lse=True
    )
    split, lse_split = fastformer.decode_attention(
        q, k_cache, v_cache, lengths, num_splits=num_splits, return_lse=True
    )
    ulp = torch.finfo(dtype).eps
    torch.testing.assert_close(split.float(), single.float(), atol=2 * ulp, rtol=2 * ulp)
    torch.testing.assert_close(lse_split, lse_single, atol=1e-5, rtol=1e-6)
    _check_decode(check, q, k_cache, v_cache, lengths, num_splits=num_splits)


@pytest.mark.parametrize("num_splits", [1, 4])
def test_empty_rows_give_zero_and_minus_inf(device, num_splits):
    """Length-0 rows (and queries before the first key) give exactly 0, log-sum-exp -inf."""
    q, k_cache, v_cache = _inputs(3, 4, 2, 2, 64, 16, torch.float16, device)
    lengths = _lengths([0, 1, 0], device)
    out, lse = fastformer.decode_attention(
        q, k_cache, v_cache, lengths, num_splits=num_splits, return_lse=True
    )
    assert torch.equal(out[0], torch.zeros_like(out[0]))
    assert torch.equal(out[2], torch.zeros_like(out[2]))
    assert torch.equal(out[1, :, 0], torch.zeros_like(out[1, :, 0]))  # before the only key
    assert torch.isneginf(lse[0]).all() and torch.isneginf(lse[1, :, 0]).all()
    assert torch.isfinite(lse[1, :, 1]).all()
    # The one visible key of row 1: its value, for every head of its group.
    expected = v_cache[1, :, 0].repeat_interleave(2, dim=0)  # (n_heads, head_dim)
    torch.testing.assert_close(out[1, :, 1], expected, atol=0, rtol=0)


@pytest.mark.parametrize("head_dim", [16, 64, 80, 128, 256])
def test_head_dims(check, device, head_dim):
    q, k_cache, v_cache = _inputs(2, 4, 2, 2, 40, head_dim, torch.float16, device)
    _check_decode(check, q, k_cache, v_cache, _lengths([40, 17], device), num_splits=2)


@pytest.mark.parametrize(("n_heads", "seqlen_q"), [(32, 4), (16, 16)], ids=["mqa32_q4", "q16"])
def test_groups_past_one_tile(check, device, n_heads, seqlen_q):
    """Group heads x queries above MAX_BLOCK_M rows take several row blocks."""
    assert n_heads * seqlen_q > decode_kernels.MAX_BLOCK_M
    q, k_cache, v_cache = _inputs(2, n_heads, 1, seqlen_q, 50, 16, torch.float16, device)
    _check_decode(check, q, k_cache, v_cache, _lengths([50, 21], device), num_splits=2)


def test_strided_views_read_in_place(check, device):
    """q from a (batch, seq, heads, dim) projection, the cache in HF's (batch, seq, heads, dim)
    storage seen through transpose, a scale: same as the reference on those views."""
    batch, n_heads, n_kv_heads, seqlen_q, capacity, head_dim = 2, 6, 2, 3, 70, 32
    q = torch.randn(batch, seqlen_q, n_heads, head_dim, device=device).half().transpose(1, 2)
    storage = torch.randn(batch, capacity, 2 * n_kv_heads, head_dim, device=device).half()
    k_cache = storage[:, :, :n_kv_heads].transpose(1, 2)  # (B, H_kv, S, D) with odd strides
    v_cache = storage[:, :, n_kv_heads:].transpose(1, 2)
    lengths = _lengths([70, 9], device)
    _check_decode(check, q, k_cache, v_cache, lengths, scale=0.3, num_splits=3)


@pytest.mark.parametrize("block_size", [16, 5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_paged_cache_matches_dense(check, device, dtype, block_size):
    """A paged cache (blocks in shuffled order, unused table entries out of range) gives the
    dense cache's result, and the reference's."""
    batch, n_kv_heads, head_dim, max_blocks = 3, 2, 32, 8
    capacity = max_blocks * block_size
    q, k_dense, v_dense = _inputs(batch, 6, n_kv_heads, 2, capacity, head_dim, dtype, device)
    lengths = _lengths([capacity, 1, 2 * block_size + 3], device)
    n_blocks = batch * max_blocks + 3
    order = torch.randperm(n_blocks, device=device)[: batch * max_blocks]
    table = order.view(batch, max_blocks).to(torch.int32)
    k_pages = torch.randn(n_blocks, block_size, n_kv_heads, head_dim, device=device).to(dtype)
    v_pages = torch.randn_like(k_pages)
    for b in range(batch):
        for i in range(max_blocks):
            rows = slice(i * block_size, (i + 1) * block_size)
            k_pages[table[b, i]] = k_dense[b, :, rows].transpose(0, 1)
            v_pages[table[b, i]] = v_dense[b, :, rows].transpose(0, 1)
    table[1, 1:] = -1  # row 1 uses one block: the rest of its table is never read
    dense = fastformer.decode_attention(q, k_dense, v_dense, lengths, num_splits=3)
    paged = fastformer.decode_attention(
        q, k_pages, v_pages, lengths, num_splits=3, block_table=table
    )
    torch.testing.assert_close(paged, dense, atol=0, rtol=0)
    _check_decode(check, q, k_pages, v_pages, lengths, block_table=table, num_splits=2)


@pytest.mark.parametrize("paged", [False, True], ids=["dense", "paged"])
def test_inputs_that_require_grad_get_gradients(check, device, paged):
    """With grad on, the call routes to the differentiable attention: every gradient comes."""
    batch, n_kv_heads, head_dim, block_size = 2, 2, 16, 8
    q, k_cache, v_cache = _inputs(batch, 4, n_kv_heads, 2, 24, head_dim, torch.float32, device)
    lengths = _lengths([24, 5], device)
    kwargs = {}
    if paged:
        k_cache = k_cache.transpose(1, 2).reshape(-1, block_size, n_kv_heads, head_dim)
        v_cache = v_cache.transpose(1, 2).reshape(-1, block_size, n_kv_heads, head_dim)
        kwargs["block_table"] = torch.arange(6, dtype=torch.int32, device=device).view(2, 3)
    leaves = [t.clone().requires_grad_() for t in (q, k_cache, v_cache)]
    _check_decode(check, *leaves, lengths, **kwargs)
    out = fastformer.decode_attention(*leaves, lengths, **kwargs)
    grads = torch.autograd.grad(out.sum(), leaves)
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_validate_false_clamps_lengths_to_the_cache(device):
    """Without the host check, a length past the cache is clamped in the kernel (no read
    outside it): the result is that of the capacity."""
    q, k_cache, v_cache = _inputs(2, 2, 1, 1, 40, 16, torch.float32, device)
    storage = torch.randn(2, 1, 64, 16, device=device)
    storage[:, :, :40] = k_cache
    storage[:, :, 40:] = float("nan")  # past the cache: must never be read
    k_view = storage[:, :, :40]
    out = fastformer.decode_attention(
        q, k_view, v_cache, _lengths([1000, 40], device), validate=False
    )
    expected = fastformer.decode_attention(q, k_cache, v_cache, _lengths([40, 40], device))
    torch.testing.assert_close(out, expected, atol=0, rtol=0)


def test_empty_shapes(device):
    """Batch 0, seqlen_q 0 and a cache of capacity 0: shaped results, no launch error."""
    q, k_cache, v_cache = _inputs(0, 4, 2, 1, 8, 16, torch.float16, device)
    out, lse = fastformer.decode_attention(
        q, k_cache, v_cache, _lengths([], device), return_lse=True
    )
    assert out.shape == (0, 4, 1, 16) and lse.shape == (0, 4, 1)
    q, k_cache, v_cache = _inputs(2, 4, 2, 0, 8, 16, torch.float16, device)
    assert fastformer.decode_attention(q, k_cache, v_cache, _lengths([3, 8], device)).shape == (
        2, 4, 0, 16,
    )  # fmt: skip
    q, k_cache, v_cache = _inputs(2, 4, 2, 1, 0, 16, torch.float16, device)
    out, lse = fastformer.decode_attention(
        q, k_cache, v_cache, _lengths([0, 0], device), return_lse=True
    )
    assert torch.equal(out, torch.zeros_like(out)) and torch.isneginf(lse).all()


@pytest.mark.parametrize(
    ("n_programs", "capacity", "target", "expected"),
    [
        (8, 4096, 264, 16),  # batch 1 x 8 KV heads on an H200: the length caps the splits
        (8, 65536, 264, 33),  # long cache: enough splits to fill 132 SMs twice
        (512, 4096, 264, 1),  # the grid alone fills the device
        (3, 100, 264, 1),  # a short cache is not split
        (1, 10**6, 264, 128),  # at most MAX_SPLITS
        (0, 4096, 264, 1),
        (8, 0, 264, 1),
    ],
)
def test_num_splits_heuristic(n_programs, capacity, target, expected):
    assert decode_kernels.num_splits_heuristic(n_programs, capacity, target) == expected
