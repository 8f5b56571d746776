"""KV cache in Triton: where a key position lives (dense or paged), and the fused append.

Two cache layouts (the append addresses them through :func:`cache_offsets`; the decode kernel
reads each key tile's pages once for both k and v, the same arithmetic):
- dense: k_cache, v_cache (batch, n_kv_heads, max_seqlen, head_dim), any strides; position
  ``p`` of row ``b`` is ``[b, :, p, :]``;
- paged: (num_blocks, block_size, n_kv_heads, head_dim) and a ``block_table`` (batch,
  max_blocks) int32; position ``p`` of row ``b`` is ``[block_table[b, p // block_size], p %
  block_size, :, :]``. Inside the kernels a block of the cache is a "page" (``page_size``), to
  keep the word "block" for tiles.

The append writes ``seqlen_new`` new tokens per row at positions ``cache_seqlens[b] + t`` (the
row's own length before the append), in place, in one launch: keys rotated by the rotary
embedding at that position when ``HAS_ROTARY`` (the rotation of ``kernels/rotary.py``, angles
from fp32 ``position * inv_freq`` computed in the kernel), values copied. One program per block
of ``BLOCK_T`` tokens (token = batch * seqlen_new + t); it loops over the KV heads in tiles of
``BLOCK_H``. Tokens at or past ``new_seqlens[b]`` (ragged prefill) and tokens whose position
falls outside the cache are not written: the kernel never writes out of bounds, whatever the
lengths (the functional layer refuses overflowing lengths before the launch).

Limits: positions are exact in fp32 up to 2**24 (as in ``kernels/rotary.py``); offsets inside a
head are int32 (a head spans fewer than 2**31 elements), everything else int64.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastformer.kernels import _runtime
from fastformer.kernels.rotary import TILE_ELEMENTS, _rotate_heads

NUM_WARPS = 4


@triton.jit
def cache_offsets(
    batch,  # row index (scalar, or one per position), int64
    positions,  # key positions inside the row
    mask,  # which positions exist (the block table is read only there)
    block_table_ptr,  # (batch, max_blocks) int32 when PAGED, else unused
    stride_bt_batch,
    stride_bt_block,
    page_size,
    stride_cache_batch,  # dense: the batch stride; paged: the stride between pages
    stride_cache_seq,  # dense: the sequence stride; paged: the stride between slots of a page
    PAGED: tl.constexpr,
):
    """int64 offsets of ``positions`` of row ``batch`` in a dense or paged cache (head and
    feature offsets not included)."""
    positions = positions.to(tl.int64)
    if PAGED:
        table = (
            block_table_ptr + batch * stride_bt_batch + (positions // page_size) * stride_bt_block
        )
        page = tl.load(table, mask=mask, other=0).to(tl.int64)
        return page * stride_cache_batch + (positions % page_size) * stride_cache_seq
    return batch * stride_cache_batch + positions * stride_cache_seq


@triton.jit
def _copy_heads(
    x_ptr,  # (n_tokens, n_heads, head_dim) through its strides
    out_ptr,  # like x, out
    x_tokens,  # (BLOCK_T,) int64 offsets of the tokens in x
    out_tokens,  # (BLOCK_T,) int64 offsets of the tokens in out
    mask_t,  # (BLOCK_T,) which tokens to write
    n_heads,
    head_dim,
    stride_x_head,
    stride_x_dim,
    stride_out_head,
    stride_out_dim,
    BLOCK_T: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Copy every head of a block of tokens, in tiles of (BLOCK_T, BLOCK_H, BLOCK_D)."""
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < head_dim
    for head_start in range(0, n_heads, BLOCK_H):
        offs_h = head_start + tl.arange(0, BLOCK_H).to(tl.int64)
        mask_th = mask_t[:, None] & (offs_h < n_heads)[None, :]
        mask = mask_th[:, :, None] & mask_d[None, None, :]
        x_heads = x_tokens[:, None] + offs_h[None, :] * stride_x_head
        out_heads = out_tokens[:, None] + offs_h[None, :] * stride_out_head
        x = tl.load(x_ptr + x_heads[:, :, None] + offs_d[None, None, :] * stride_x_dim, mask=mask)
        out_ptrs = out_ptr + out_heads[:, :, None] + offs_d[None, None, :] * stride_out_dim
        tl.store(out_ptrs, x, mask=mask)


@triton.jit
def _kv_append_kernel(
    k_new_ptr,  # (batch, n_kv_heads, seqlen_new, head_dim), through its strides
    v_new_ptr,  # like k_new
    k_cache_ptr,  # dense (batch, n_kv_heads, max_seqlen, head_dim) or paged, in place
    v_cache_ptr,  # like k_cache, in place
    seqlens_ptr,  # (batch,) int32: each row's length before the append
    new_seqlens_ptr,  # (batch,) int32: new tokens per row when HAS_NEW_SEQLENS, else unused
    block_table_ptr,  # (batch, max_blocks) int32 when PAGED, else unused
    inv_freq_ptr,  # (rotary_half,) fp32 when HAS_ROTARY, else unused
    n_tokens,
    seqlen_new,
    n_kv_heads,
    head_dim,
    capacity,  # positions per row the cache holds
    page_size,
    rotary_half,
    attention_scaling,
    stride_kn_batch,
    stride_kn_head,
    stride_kn_seq,
    stride_kn_dim,
    stride_vn_batch,
    stride_vn_head,
    stride_vn_seq,
    stride_vn_dim,
    stride_kc_batch,
    stride_kc_head,
    stride_kc_seq,
    stride_kc_dim,
    stride_vc_batch,
    stride_vc_head,
    stride_vc_seq,
    stride_vc_dim,
    stride_bt_batch,
    stride_bt_block,
    stride_inv_freq,
    HAS_ROTARY: tl.constexpr,
    HAS_NEW_SEQLENS: tl.constexpr,
    PAGED: tl.constexpr,
    INTERLEAVED: tl.constexpr,
    COPY_PASS: tl.constexpr,
    BF16_RNE: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_HALF: tl.constexpr,
    BLOCK_PASS: tl.constexpr,
):
    """Write BLOCK_T new tokens' keys (rotated when HAS_ROTARY) and values into the cache."""
    pid = tl.program_id(0)
    offs_t = pid.to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T)
    batch = offs_t // seqlen_new
    t = offs_t % seqlen_new
    mask_t = offs_t < n_tokens

    # Each token's place: after its row's cached tokens; only real tokens inside the cache.
    length = tl.load(seqlens_ptr + batch, mask=mask_t, other=0)
    position = length.to(tl.int64) + t
    mask_t = mask_t & (position >= 0) & (position < capacity)
    if HAS_NEW_SEQLENS:
        n_new = tl.load(new_seqlens_ptr + batch, mask=mask_t, other=0)
        mask_t = mask_t & (t < n_new)
    kc_tokens = cache_offsets(
        batch, position, mask_t, block_table_ptr, stride_bt_batch, stride_bt_block, page_size,
        stride_kc_batch, stride_kc_seq, PAGED,
    )  # fmt: skip
    vc_tokens = cache_offsets(
        batch, position, mask_t, block_table_ptr, stride_bt_batch, stride_bt_block, page_size,
        stride_vc_batch, stride_vc_seq, PAGED,
    )  # fmt: skip
    kn_tokens = batch * stride_kn_batch + t * stride_kn_seq
    vn_tokens = batch * stride_vn_batch + t * stride_vn_seq

    if HAS_ROTARY:
        offs_j = tl.arange(0, BLOCK_HALF)
        inv_freq = tl.load(inv_freq_ptr + offs_j * stride_inv_freq, mask=offs_j < rotary_half)
        angle = position.to(tl.float32)[:, None] * inv_freq[None, :]  # (BLOCK_T, BLOCK_HALF)
        cos = tl.cos(angle) * attention_scaling
        sin = tl.sin(angle) * attention_scaling
        _rotate_heads(
            k_new_ptr, k_cache_ptr, kn_tokens, kc_tokens, mask_t, cos, sin, n_kv_heads,
            rotary_half, head_dim, stride_kn_head, stride_kn_dim, stride_kc_head, stride_kc_dim,
            INTERLEAVED, COPY_PASS, BF16_RNE, BLOCK_T, BLOCK_H, BLOCK_HALF, BLOCK_PASS,
        )  # fmt: skip
    else:
        _copy_heads(
            k_new_ptr, k_cache_ptr, kn_tokens, kc_tokens, mask_t, n_kv_heads, head_dim,
            stride_kn_head, stride_kn_dim, stride_kc_head, stride_kc_dim,
            BLOCK_T, BLOCK_H, BLOCK_D,
        )  # fmt: skip
    _copy_heads(
        v_new_ptr, v_cache_ptr, vn_tokens, vc_tokens, mask_t, n_kv_heads, head_dim,
        stride_vn_head, stride_vn_dim, stride_vc_head, stride_vc_dim,
        BLOCK_T, BLOCK_H, BLOCK_D,
    )  # fmt: skip


def cache_strides(cache: torch.Tensor, paged: bool) -> tuple[int, int, int, int]:
    """(batch or page, head, seq or slot, dim) strides of a dense (batch, heads, seq, dim) or
    paged (pages, page_size, heads, dim) cache."""
    if paged:
        return cache.stride(0), cache.stride(2), cache.stride(1), cache.stride(3)
    return cache.stride(0), cache.stride(1), cache.stride(2), cache.stride(3)


def cache_seq_span(cache: torch.Tensor, paged: bool) -> int:
    """How far (elements) position offsets reach inside one row (dense) or page (paged): the
    decode kernel forms them in int32."""
    positions = cache.shape[1] if paged else cache.shape[2]
    stride = cache.stride(1) if paged else cache.stride(2)
    return max(positions - 1, 0) * abs(stride)


def cache_capacity(cache: torch.Tensor, block_table: torch.Tensor | None) -> int:
    """Positions per row: max_seqlen (dense), or max_blocks * block_size (paged)."""
    if block_table is None:
        return cache.shape[2]
    return block_table.shape[1] * cache.shape[1]


def append_tiles(
    n_tokens: int, n_heads: int, head_dim: int, rotary_half: int
) -> tuple[int, int, int, int, int]:
    """(BLOCK_T, BLOCK_H, BLOCK_D, BLOCK_HALF, BLOCK_PASS): each program holds about
    ``TILE_ELEMENTS`` columns of one (tokens, heads, features) tile, as the rotary kernel does."""
    block_d = triton.next_power_of_2(head_dim)
    block_half = triton.next_power_of_2(max(rotary_half, 1))
    block_pass = triton.next_power_of_2(max(head_dim - 2 * rotary_half, 1))
    block_h = max(1, min(triton.next_power_of_2(n_heads), TILE_ELEMENTS // block_d))
    tokens_fit = max(1, TILE_ELEMENTS // (block_h * block_d))
    block_t = min(tokens_fit, triton.next_power_of_2(max(n_tokens, 1)))
    return block_t, block_h, block_d, block_half, block_pass


def kv_append(
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    k_new: torch.Tensor,
    v_new: torch.Tensor,
    cache_seqlens: torch.Tensor,
    *,
    new_seqlens: torch.Tensor | None = None,
    block_table: torch.Tensor | None = None,
    inv_freq: torch.Tensor | None = None,
    interleaved: bool = False,
    attention_scaling: float = 1.0,
) -> None:
    """Write k_new and v_new into the caches at each row's length, in place (unchecked).

    Args:
        k_cache, v_cache: dense (batch, n_kv_heads, max_seqlen, head_dim) or, with
            ``block_table``, paged (num_blocks, block_size, n_kv_heads, head_dim); any strides.
        k_new, v_new: (batch, n_kv_heads, seqlen_new, head_dim), the caches' dtype, any strides.
        cache_seqlens: (batch,) int32 lengths before the append.
        new_seqlens: (batch,) int32 new tokens per row (<= seqlen_new), or None for all.
        block_table: (batch, max_blocks) int32 page of each block of each row, or None.
        inv_freq: (rotary_half,) fp32: rotate the keys at their positions; None: copy them.
    """
    batch, n_kv_heads, seqlen_new, head_dim = k_new.shape
    n_tokens = batch * seqlen_new
    if n_tokens == 0 or n_kv_heads == 0 or head_dim == 0:
        return
    _runtime.check_runnable(_kv_append_kernel, "k_new", k_new)
    paged = block_table is not None
    rotary_half = inv_freq.shape[0] if inv_freq is not None else 0
    block_t, block_h, block_d, block_half, block_pass = append_tiles(
        n_tokens, n_kv_heads, head_dim, rotary_half
    )
    unused = cache_seqlens
    _kv_append_kernel[(triton.cdiv(n_tokens, block_t),)](
        k_new, v_new, k_cache, v_cache, cache_seqlens,
        new_seqlens if new_seqlens is not None else unused,
        block_table if paged else unused,
        inv_freq if inv_freq is not None else unused,
        n_tokens, seqlen_new, n_kv_heads, head_dim, cache_capacity(k_cache, block_table),
        k_cache.shape[1] if paged else 1, rotary_half, float(attention_scaling),
        *k_new.stride(), *v_new.stride(),
        *cache_strides(k_cache, paged), *cache_strides(v_cache, paged),
        block_table.stride(0) if paged else 0, block_table.stride(1) if paged else 0,
        inv_freq.stride(0) if inv_freq is not None else 0,
        HAS_ROTARY=inv_freq is not None,
        HAS_NEW_SEQLENS=new_seqlens is not None,
        PAGED=paged,
        INTERLEAVED=interleaved,
        COPY_PASS=head_dim > 2 * rotary_half,
        BF16_RNE=_runtime.software_bf16_rounding(_kv_append_kernel, k_cache.dtype),
        BLOCK_T=block_t,
        BLOCK_H=block_h,
        BLOCK_D=block_d,
        BLOCK_HALF=block_half,
        BLOCK_PASS=block_pass,
        num_warps=NUM_WARPS,
    )  # fmt: skip
