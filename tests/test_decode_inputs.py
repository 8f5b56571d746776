"""Decode attention on other inputs: strided views, a paged cache, inputs that require grad
(routed to the differentiable attention), lengths past the cache without the host check, empty
shapes. Same reference and rule as tests/test_decode.py."""

from __future__ import annotations

import pytest
import torch
from test_decode import _check_decode, _inputs, _lengths

import fastformer


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
