"""Eager reference of decode attention and the KV-cache append (see ``fastformer.reference``).

Independent of the kernels' block arithmetic: the paged cache is gathered into a dense one
through the block table, each row's keys are cut at its length, and the dense attention
reference runs per row with bottom-right causal alignment. The append writes row by row with
plain indexing and rotates through the rotary reference.
"""

from __future__ import annotations

import torch

from fastformer.reference.attention import scaled_dot_product_attention
from fastformer.reference.rotary import apply_rotary


def _dense(cache, block_table):
    """A (batch, n_kv_heads, max_blocks * block_size, head_dim) view or gather of the cache."""
    if block_table is None:
        return cache
    pages = cache[block_table.long()]  # (batch, max_blocks, block_size, heads, dim)
    batch, max_blocks, block_size, heads, dim = pages.shape
    return pages.reshape(batch, max_blocks * block_size, heads, dim).transpose(1, 2)


def decode_attention(
    q,
    k_cache,
    v_cache,
    cache_seqlens,
    *,
    scale=None,
    num_splits=None,
    block_table=None,
    return_lse=False,
    validate=True,
):
    """As :func:`fastformer.decode_attention` (unchecked; ``num_splits`` and ``validate`` are
    accepted and ignored)."""
    k_dense, v_dense = _dense(k_cache, block_table), _dense(v_cache, block_table)
    outs, lses = [], []
    for b, length in enumerate(cache_seqlens.tolist()):
        out, lse = scaled_dot_product_attention(
            q[b : b + 1],
            k_dense[b : b + 1, :, :length],
            v_dense[b : b + 1, :, :length],
            is_causal=True,
            scale=scale,
            causal_alignment="bottom_right",
            return_lse=True,
        )
        outs.append(out)
        lses.append(lse)
    if not outs:
        out, lse = q.new_zeros(q.shape), q.new_zeros(q.shape[:3], dtype=torch.float32)
    else:
        out, lse = torch.cat(outs), torch.cat(lses)
    return (out, lse) if return_lse else out


def decode_positions(cache_seqlens, seqlen_new):
    """(batch, seqlen_new) int64 positions of new tokens: ``cache_seqlens[b] + t``."""
    steps = torch.arange(seqlen_new, device=cache_seqlens.device)
    return cache_seqlens.long()[:, None] + steps


def kv_cache_append_(
    k_cache,
    v_cache,
    k_new,
    v_new,
    cache_seqlens,
    *,
    inv_freq=None,
    interleaved=False,
    attention_scaling=1.0,
    new_seqlens=None,
    block_table=None,
    validate=True,
):
    """As :func:`fastformer.kv_cache_append_`: writes into the caches, returns the new lengths."""
    seqlen_new = k_new.shape[2]
    if inv_freq is not None:
        positions = decode_positions(cache_seqlens, seqlen_new)
        k_new, _ = apply_rotary(
            k_new, k_new[:, :0], inv_freq, position_ids=positions, interleaved=interleaved,
            layout="bhsd", attention_scaling=attention_scaling,
        )  # fmt: skip
    counts = new_seqlens if new_seqlens is not None else torch.full_like(cache_seqlens, seqlen_new)
    for b, (start, count) in enumerate(zip(cache_seqlens.tolist(), counts.tolist(), strict=True)):
        for t in range(count):
            position = start + t
            if block_table is None:
                k_cache[b, :, position] = k_new[b, :, t]
                v_cache[b, :, position] = v_new[b, :, t]
            else:
                block_size = k_cache.shape[1]
                page = int(block_table[b, position // block_size])
                k_cache[page, position % block_size] = k_new[b, :, t]
                v_cache[page, position % block_size] = v_new[b, :, t]
    return cache_seqlens + counts
