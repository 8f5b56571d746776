"""The in-place KV-cache append (with fused rotary) against the float64 reference, and a short
generation loop (append + decode attention) against dense causal attention over the sequence.

Each test checks the written positions and that nothing else of the cache changed.
"""

from __future__ import annotations

import pytest
import torch

import fastformer
from fastformer import reference
from fastformer.testing import assert_against_reference, compare

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
DTYPE_IDS = ["fp32", "fp16", "bf16"]
ROTARY = {
    "none": None,
    "neox": dict(rotary_dim=32, interleaved=False),
    "gptj": dict(rotary_dim=32, interleaved=True),
    "partial": dict(rotary_dim=12, interleaved=False),
}


def _inv_freq(rotary_dim, device, base=10000.0):
    return 1.0 / base ** (torch.arange(0, rotary_dim, 2, device=device).float() / rotary_dim)


def _lengths(values, device):
    return torch.tensor(values, dtype=torch.int32, device=device)


def _append_both(k_cache, v_cache, k_new, v_new, lengths, **kwargs):
    """(kernel caches, reference float64 caches, kernel lengths, reference lengths)."""
    k_ref, v_ref = k_cache.double(), v_cache.double()
    new_ref = reference.kv_cache_append_(
        k_ref, v_ref, k_new.double(), v_new.double(), lengths, **kwargs
    )
    new = fastformer.kv_cache_append_(k_cache, v_cache, k_new, v_new, lengths, **kwargs)
    return new, new_ref, k_ref, v_ref


def _check_append(k_cache, v_cache, k_new, v_new, lengths, **kwargs):
    """The rule of fastformer.testing on the whole caches: written positions against the
    float64 reference (and eager's error in the dtype), the rest unchanged."""
    k_before, v_before = k_cache.clone(), v_cache.clone()

    def run(appender, k_c, v_c, k_n, v_n):
        appender(k_c, v_c, k_n, v_n, lengths, **kwargs)
        return k_c, v_c

    assert_against_reference(
        lambda k_c, v_c, k_n, v_n: run(fastformer.kv_cache_append_, k_c, v_c, k_n, v_n),
        lambda k_c, v_c, k_n, v_n: run(reference.kv_cache_append_, k_c, v_c, k_n, v_n),
        [k_cache, v_cache, k_new, v_new],
    )
    new = fastformer.kv_cache_append_(k_cache, v_cache, k_new, v_new, lengths, **kwargs)
    counts = kwargs.get("new_seqlens")
    expected = lengths + (counts if counts is not None else k_new.shape[2])
    assert torch.equal(new, expected) and new.dtype == torch.int32
    return k_before, v_before


def _written(lengths, counts, capacity):
    """(batch, capacity) bool: the positions an append of ``counts`` tokens writes."""
    positions = torch.arange(capacity, device=lengths.device)
    start = lengths.long()[:, None]
    return (positions >= start) & (positions < start + counts.long()[:, None])


@pytest.mark.parametrize("rotary", list(ROTARY), ids=list(ROTARY))
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_append_matches_reference(device, dtype, rotary):
    """Rows of their own lengths (empty, middle, filling the cache to the end); new tokens from
    a (batch, seq, heads, dim) projection; the cache unchanged outside the new positions."""
    batch, n_kv_heads, capacity, head_dim, seqlen_new = 3, 3, 40, 32, 4
    k_cache = torch.randn(batch, n_kv_heads, capacity, head_dim, device=device).to(dtype)
    v_cache = torch.randn_like(k_cache)
    k_new = torch.randn(batch, seqlen_new, n_kv_heads, head_dim, device=device).to(dtype)
    k_new = k_new.transpose(1, 2)  # (B, H_kv, S_new, D) with strides of (B, S, H, D)
    v_new = torch.randn(batch, n_kv_heads, seqlen_new, head_dim, device=device).to(dtype)
    lengths = _lengths([0, 17, capacity - seqlen_new], device)
    kwargs = {}
    if ROTARY[rotary] is not None:
        kwargs = dict(
            inv_freq=_inv_freq(ROTARY[rotary]["rotary_dim"], device),
            interleaved=ROTARY[rotary]["interleaved"],
        )
    k_before, v_before = _check_append(k_cache, v_cache, k_new, v_new, lengths, **kwargs)
    untouched = ~_written(lengths, torch.full_like(lengths, seqlen_new), capacity)
    untouched = untouched[:, None, :, None].expand_as(k_cache)
    assert torch.equal(k_cache[untouched], k_before[untouched])
    assert torch.equal(v_cache[untouched], v_before[untouched])


@pytest.mark.parametrize("interleaved", [False, True], ids=["neox", "gptj"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_rotation_is_apply_rotary_at_the_positions(device, dtype, interleaved):
    """The keys written are apply_rotary's at positions ``length + t`` (same fp32 angles, same
    rounding: bit for bit), and rotate_queries rotates q at those positions."""
    batch, n_kv_heads, capacity, head_dim, seqlen_new = 2, 2, 3000, 32, 3
    k_cache = torch.randn(batch, n_kv_heads, capacity, head_dim, device=device).to(dtype)
    v_cache = torch.randn_like(k_cache)
    k_new = torch.randn(batch, n_kv_heads, seqlen_new, head_dim, device=device).to(dtype)
    q = torch.randn(batch, 6, seqlen_new, head_dim, device=device).to(dtype)
    lengths = _lengths([2990, 5], device)  # large offsets: angles far from 0
    inv_freq = _inv_freq(head_dim, device)
    options = dict(interleaved=interleaved, attention_scaling=1.25)
    fastformer.kv_cache_append_(
        k_cache, v_cache, k_new, k_new, lengths, inv_freq=inv_freq, **options
    )
    positions = fastformer.decode_positions(lengths, seqlen_new)
    q_rot, k_rot = fastformer.apply_rotary(
        q, k_new, inv_freq, position_ids=positions, layout="bhsd", **options
    )
    for b, start in enumerate(lengths.tolist()):
        assert torch.equal(k_cache[b, :, start : start + seqlen_new], k_rot[b])
    assert torch.equal(fastformer.rotate_queries(q, inv_freq, lengths, **options), q_rot)
    q_ref, _ = reference.apply_rotary(
        q.double(), k_new[:, :0].double(), inv_freq, position_ids=positions, layout="bhsd",
        **options,
    )  # fmt: skip
    q_eager, _ = reference.apply_rotary(
        q, k_new[:, :0], inv_freq, position_ids=positions, layout="bhsd", **options
    )
    error = (q_rot.double() - q_ref).abs().max().item()
    eager_error = (q_eager.double() - q_ref).abs().max().item()
    assert error <= 3 * eager_error + 2 * torch.finfo(dtype).eps * q_ref.abs().max().item()


def test_ragged_new_tokens(device):
    """new_seqlens: only the first n of each row's new tokens are written; lengths grow by n."""
    batch, n_kv_heads, capacity, head_dim, seqlen_new = 3, 2, 24, 16, 5
    k_cache = torch.randn(batch, n_kv_heads, capacity, head_dim, device=device).half()
    v_cache = torch.randn_like(k_cache)
    k_new = torch.randn(batch, n_kv_heads, seqlen_new, head_dim, device=device).half()
    v_new = torch.randn_like(k_new)
    lengths = _lengths([0, 3, 19], device)
    counts = _lengths([5, 0, 2], device)
    inv_freq = _inv_freq(16, device)
    k_before, v_before = _check_append(
        k_cache, v_cache, k_new, v_new, lengths, new_seqlens=counts, inv_freq=inv_freq
    )
    untouched = ~_written(lengths, counts, capacity)[:, None, :, None].expand_as(k_cache)
    assert torch.equal(k_cache[untouched], k_before[untouched])
    assert torch.equal(v_cache[untouched], v_before[untouched])


@pytest.mark.parametrize("block_size", [8, 5])
def test_paged_append_matches_reference(device, block_size):
    """Writes land in the pages the block table names, across page boundaries."""
    batch, n_kv_heads, head_dim, seqlen_new, max_blocks = 3, 2, 32, 6, 4
    n_blocks = batch * max_blocks + 2
    k_pages = torch.randn(n_blocks, block_size, n_kv_heads, head_dim, device=device).bfloat16()
    v_pages = torch.randn_like(k_pages)
    table = torch.randperm(n_blocks, device=device)[: batch * max_blocks].view(batch, -1)
    table = table.to(torch.int32)
    k_new = torch.randn(batch, n_kv_heads, seqlen_new, head_dim, device=device).bfloat16()
    v_new = torch.randn_like(k_new)
    lengths = _lengths([0, block_size - 2, max_blocks * block_size - seqlen_new], device)
    _check_append(
        k_pages, v_pages, k_new, v_new, lengths, block_table=table,
        inv_freq=_inv_freq(head_dim, device),
    )  # fmt: skip


def test_validate_false_never_writes_outside_the_cache(device):
    """Overflowing rows without the host check: tokens past the cache are dropped, memory past
    it (here the rest of a larger buffer) is untouched, tokens inside are written."""
    storage = torch.randn(2, 1, 20, 16, device=device)
    before = storage.clone()
    k_cache = storage[:, :, :10]  # capacity 10 inside a buffer of 20
    v_cache = torch.randn(2, 1, 10, 16, device=device)
    k_new = torch.randn(2, 1, 4, 16, device=device)
    new = fastformer.kv_cache_append_(
        k_cache, v_cache, k_new, k_new, _lengths([8, 30], device), validate=False
    )
    assert torch.equal(new, _lengths([12, 34], device))
    assert torch.equal(storage[:, :, 10:], before[:, :, 10:])
    assert torch.equal(k_cache[0, :, 8:10], k_new[0, :, :2])
    assert torch.equal(k_cache[1], before[1, :, :10])


def test_empty_appends_are_no_ops(device):
    k_cache = torch.randn(2, 2, 8, 16, device=device)
    before = k_cache.clone()
    k_new = torch.randn(2, 2, 0, 16, device=device)
    new = fastformer.kv_cache_append_(
        k_cache, k_cache.clone(), k_new, k_new, _lengths([3, 8], device)
    )
    assert torch.equal(new, _lengths([3, 8], device)) and torch.equal(k_cache, before)


@pytest.mark.parametrize("paged", [False, True], ids=["dense", "paged"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_generation_loop_matches_causal_attention(device, dtype, paged):
    """A prompt appended at once, then single tokens: each step's decode attention equals
    dense causal attention (the float64 reference) over the rotated sequence so far."""
    batch, n_heads, n_kv_heads, head_dim, prompt, steps = 2, 6, 2, 32, 5, 3
    total = prompt + steps
    block_size, max_blocks = 4, 3
    capacity = block_size * max_blocks
    q_all = torch.randn(batch, n_heads, total, head_dim, device=device).to(dtype)
    k_all = torch.randn(batch, n_kv_heads, total, head_dim, device=device).to(dtype)
    v_all = torch.randn(batch, n_kv_heads, total, head_dim, device=device).to(dtype)
    inv_freq = _inv_freq(head_dim, device)
    kwargs = {}
    if paged:
        k_cache = torch.randn(batch * max_blocks, block_size, n_kv_heads, head_dim).to(dtype)
        table = torch.arange(batch * max_blocks, device=device).flip(0).view(batch, -1)
        kwargs["block_table"] = table.to(torch.int32)
    else:
        k_cache = torch.randn(batch, n_kv_heads, capacity, head_dim, device=device).to(dtype)
    v_cache = torch.randn_like(k_cache)
    lengths = _lengths([0] * batch, device)
    positions = torch.arange(total, device=device).expand(batch, -1)

    def dense_attention(dtype_):  # causal attention over the whole rotated sequence
        q_rot, k_rot = reference.apply_rotary(
            q_all.to(dtype_), k_all.to(dtype_), inv_freq, position_ids=positions, layout="bhsd"
        )
        return reference.scaled_dot_product_attention(
            q_rot, k_rot, v_all.to(dtype_), is_causal=True, enable_gqa=True
        )

    expected, eager = dense_attention(torch.float64), dense_attention(dtype)
    start = 0
    for stop in [prompt] + list(range(prompt + 1, total + 1)):
        chunk = slice(start, stop)
        q = fastformer.rotate_queries(q_all[:, :, chunk], inv_freq, lengths)
        lengths = fastformer.kv_cache_append_(
            k_cache, v_cache, k_all[:, :, chunk], v_all[:, :, chunk], lengths,
            inv_freq=inv_freq, **kwargs,
        )  # fmt: skip
        out = fastformer.decode_attention(q, k_cache, v_cache, lengths, **kwargs)
        result = compare(f"step to {stop}", out, expected[:, :, chunk], eager[:, :, chunk])
        assert result.ok, str(result)
        start = stop
    assert lengths.tolist() == [total] * batch
