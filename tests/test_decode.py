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


@pytest.mark.parametrize("head_dim", [8, 16, 64, 80, 128, 256])
def test_head_dims(check, device, head_dim):
    q, k_cache, v_cache = _inputs(2, 4, 2, 2, 40, head_dim, torch.float16, device)
    _check_decode(check, q, k_cache, v_cache, _lengths([40, 17], device), num_splits=2)


@pytest.mark.parametrize(("n_heads", "seqlen_q"), [(32, 4), (16, 16)], ids=["mqa32_q4", "q16"])
def test_groups_past_one_tile(check, device, n_heads, seqlen_q):
    """Group heads x queries above MAX_BLOCK_M rows take several row blocks."""
    assert n_heads * seqlen_q > decode_kernels.MAX_BLOCK_M
    q, k_cache, v_cache = _inputs(2, n_heads, 1, seqlen_q, 50, 16, torch.float16, device)
    _check_decode(check, q, k_cache, v_cache, _lengths([50, 21], device), num_splits=2)


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
