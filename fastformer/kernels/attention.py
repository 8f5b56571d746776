"""Fused (flash-style) attention in Triton: forward and backward, never materialising the
(seqlen_q, seqlen_k) score matrix.

Layout: q (batch, n_heads, seqlen_q, head_dim), k and v (batch, n_kv_heads, seqlen_k, head_dim),
any strides (every stride is passed, none assumed). ``n_heads`` is a multiple of ``n_kv_heads``
(GQA/MQA): query head ``h`` reads key/value head ``h // group_size``.

Design:
- Forward: one program per (batch * head, block of BLOCK_M query rows); the grid puts the
  batch * head product on axis 0, which CUDA allows up to 2**31 - 1 (axes 1 and 2 stop at
  65535). Online softmax in fp32 and in base 2 (scores pre-multiplied by scale * log2(e)).
  Key blocks past the causal limit are not visited. The log-sum-exp (base 2) of each row is
  saved for the backward.
- Causal masking keeps key ``j`` for query ``i`` when ``j <= i + causal_offset``: offset 0 is
  SDPA's top-left alignment, ``seqlen_k - seqlen_q`` the bottom-right one (KV-cache prefill).
- Masks: a boolean mask (True = take part) or an additive float mask, broadcast over batch and
  heads through zero strides.
- Rows that see no key (all masked, or causal rows before the first key) give output 0 and a
  stored log-sum-exp of +inf, so that the backward's probabilities ``exp2(s - lse)`` are 0 there
  and every gradient stays finite (their dq is exactly 0).
- Backward without atomics, so it is deterministic: one kernel accumulates dk and dv for a
  block of keys over every query block (and over every query head of its GQA group, so dk/dv
  are summed per KV head in registers); another accumulates dq for a block of queries over
  every key block. ``delta = rowsum(dO * O)`` comes first.
- Under Triton's interpreter ``tl.dot`` on bf16 operands is wrong (it multiplies raw bits), so
  ``DOT_FP32`` upcasts the dot operands there; bf16 products are exact in fp32.
- fp32 inputs use full-precision (IEEE) dots, not tf32, so their error stays near eager's.

Limits: head_dim <= 256, the same for q, k and v; no dropout and no gradient for a float mask
yet (both raise in the functional layer).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from fastformer.kernels import _runtime
from fastformer.kernels._jit import rounded_for_store

MAX_HEAD_DIM = 256
LOG2E = 1.4426950408889634  # log2(e): exp(x) == exp2(x * LOG2E)
MASK_NONE, MASK_BOOL, MASK_FLOAT = 0, 1, 2
# Smallest block a tensor-core dot takes along each axis.
MIN_BLOCK = 16


@triton.jit
def _dot(a, b, DOT_FP32: tl.constexpr, IEEE: tl.constexpr):
    if DOT_FP32:
        return tl.dot(a.to(tl.float32), b.to(tl.float32))
    if IEEE:
        return tl.dot(a, b, input_precision="ieee")
    return tl.dot(a, b)


@triton.jit
def _scores(
    q,
    k_t,
    offs_m,
    cols,
    seqlen_q,
    seqlen_k,
    mask_base,
    stride_mask_q,
    stride_mask_k,
    sm_scale_log2,
    causal_offset,
    IS_CAUSAL: tl.constexpr,
    MASK_KIND: tl.constexpr,
    DOT_FP32: tl.constexpr,
    IEEE: tl.constexpr,
):
    """Scores of a (BLOCK_M, BLOCK_N) tile in base-2 units, -inf where a key must not be seen."""
    s = _dot(q, k_t, DOT_FP32, IEEE) * sm_scale_log2
    valid = (cols < seqlen_k)[None, :]
    if IS_CAUSAL:
        valid = valid & (cols[None, :] <= offs_m[:, None] + causal_offset)
    if MASK_KIND != 0:
        mask_ptrs = mask_base + offs_m[:, None] * stride_mask_q + cols[None, :] * stride_mask_k
        in_bounds = (offs_m < seqlen_q)[:, None] & (cols < seqlen_k)[None, :]
        if MASK_KIND == 1:
            keep = tl.load(mask_ptrs, mask=in_bounds, other=0)
            valid = valid & (keep != 0)
        else:
            bias = tl.load(mask_ptrs, mask=in_bounds, other=0.0)
            s = s + bias.to(tl.float32) * 1.4426950408889634  # log2(e): base-2 units
    return tl.where(valid, s, float("-inf"))


@triton.jit
def _attn_fwd_kernel(
    q_ptr,  # (batch, n_heads, seqlen_q, head_dim)
    k_ptr,  # (batch, n_kv_heads, seqlen_k, head_dim)
    v_ptr,  # (batch, n_kv_heads, seqlen_k, head_dim)
    mask_ptr,  # broadcast to (batch, n_heads, seqlen_q, seqlen_k), or unused
    o_ptr,  # (batch, n_heads, seqlen_q, head_dim) contiguous, out
    lse_ptr,  # (batch * n_heads, seqlen_q) fp32 base-2 log-sum-exp, out
    stride_q_batch,
    stride_q_head,
    stride_q_seq,
    stride_q_dim,
    stride_k_batch,
    stride_k_head,
    stride_k_seq,
    stride_k_dim,
    stride_v_batch,
    stride_v_head,
    stride_v_seq,
    stride_v_dim,
    stride_mask_batch,
    stride_mask_head,
    stride_mask_q,
    stride_mask_k,
    n_heads,
    group_size,
    seqlen_q,
    seqlen_k,
    head_dim,
    sm_scale_log2,
    causal_offset,
    IS_CAUSAL: tl.constexpr,
    MASK_KIND: tl.constexpr,
    DOT_FP32: tl.constexpr,
    IEEE: tl.constexpr,
    BF16_RNE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Attention output and log-sum-exp for BLOCK_M query rows of one (batch, head)."""
    pid_bh = tl.program_id(0).to(tl.int64)
    pid_m = tl.program_id(1)
    batch = pid_bh // n_heads
    head = pid_bh % n_heads
    kv_head = head // group_size
    q_base = q_ptr + batch * stride_q_batch + head * stride_q_head
    k_base = k_ptr + batch * stride_k_batch + kv_head * stride_k_head
    v_base = v_ptr + batch * stride_v_batch + kv_head * stride_v_head
    mask_base = mask_ptr + batch * stride_mask_batch + head * stride_mask_head

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    mask_m = offs_m < seqlen_q
    mask_d = offs_d < head_dim

    q = tl.load(
        q_base + offs_m[:, None] * stride_q_seq + offs_d[None, :] * stride_q_dim,
        mask=mask_m[:, None] & mask_d[None, :],
        other=0.0,
    )
    m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)

    # Causal: keys past the last row's limit are never visited.
    hi = seqlen_k
    if IS_CAUSAL:
        hi = tl.maximum(tl.minimum(seqlen_k, (pid_m + 1) * BLOCK_M + causal_offset), 0)
    for start_n in range(0, hi, BLOCK_N):
        cols = start_n + offs_n
        mask_n = cols < seqlen_k
        k_t = tl.load(
            k_base + cols[None, :] * stride_k_seq + offs_d[:, None] * stride_k_dim,
            mask=mask_n[None, :] & mask_d[:, None],
            other=0.0,
        )
        s = _scores(
            q, k_t, offs_m, cols, seqlen_q, seqlen_k, mask_base, stride_mask_q, stride_mask_k,
            sm_scale_log2, causal_offset, IS_CAUSAL, MASK_KIND, DOT_FP32, IEEE,
        )  # fmt: skip
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        # A row with nothing seen yet keeps m = -inf; subtract 0 there so exp2 gives 0, not NaN.
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_safe)
        p = tl.exp2(s - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = tl.load(
            v_base + cols[:, None] * stride_v_seq + offs_d[None, :] * stride_v_dim,
            mask=mask_n[:, None] & mask_d[None, :],
            other=0.0,
        )
        acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, DOT_FP32, IEEE)
        m_i = m_new

    seen = l_i > 0.0
    out = acc / tl.where(seen, l_i, 1.0)[:, None]
    lse = tl.where(seen, m_i + tl.log2(tl.where(seen, l_i, 1.0)), float("inf"))
    o_rows = pid_bh * seqlen_q + offs_m
    o_ptrs = o_ptr + o_rows[:, None] * head_dim + offs_d[None, :]
    out = rounded_for_store(out, BF16_RNE)
    tl.store(o_ptrs, out, mask=mask_m[:, None] & mask_d[None, :])
    tl.store(lse_ptr + o_rows, lse, mask=mask_m)


@triton.jit
def _attn_bwd_dkdv_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    mask_ptr,
    do_ptr,  # (batch, n_heads, seqlen_q, head_dim)
    lse_ptr,  # (batch * n_heads, seqlen_q) fp32
    delta_ptr,  # (batch * n_heads, seqlen_q) fp32: rowsum(dO * O)
    dk_ptr,  # (batch, n_kv_heads, seqlen_k, head_dim) contiguous, out
    dv_ptr,  # (batch, n_kv_heads, seqlen_k, head_dim) contiguous, out
    stride_q_batch,
    stride_q_head,
    stride_q_seq,
    stride_q_dim,
    stride_k_batch,
    stride_k_head,
    stride_k_seq,
    stride_k_dim,
    stride_v_batch,
    stride_v_head,
    stride_v_seq,
    stride_v_dim,
    stride_mask_batch,
    stride_mask_head,
    stride_mask_q,
    stride_mask_k,
    stride_do_batch,
    stride_do_head,
    stride_do_seq,
    stride_do_dim,
    n_heads,
    n_kv_heads,
    group_size,
    seqlen_q,
    seqlen_k,
    head_dim,
    sm_scale,
    sm_scale_log2,
    causal_offset,
    IS_CAUSAL: tl.constexpr,
    MASK_KIND: tl.constexpr,
    DOT_FP32: tl.constexpr,
    IEEE: tl.constexpr,
    BF16_RNE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """dk and dv for BLOCK_N keys of one (batch, kv head), summed over the heads of its group."""
    pid_bh = tl.program_id(0).to(tl.int64)
    pid_n = tl.program_id(1)
    batch = pid_bh // n_kv_heads
    kv_head = pid_bh % n_kv_heads
    k_base = k_ptr + batch * stride_k_batch + kv_head * stride_k_head
    v_base = v_ptr + batch * stride_v_batch + kv_head * stride_v_head

    start_n = pid_n * BLOCK_N
    cols = start_n + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask_n = cols < seqlen_k
    mask_d = offs_d < head_dim
    tile_nd = mask_n[:, None] & mask_d[None, :]

    k = tl.load(
        k_base + cols[:, None] * stride_k_seq + offs_d[None, :] * stride_k_dim,
        mask=tile_nd,
        other=0.0,
    )
    v = tl.load(
        v_base + cols[:, None] * stride_v_seq + offs_d[None, :] * stride_v_dim,
        mask=tile_nd,
        other=0.0,
    )
    k_t = tl.trans(k)
    v_t = tl.trans(v)
    dk = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    dv = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)

    # Causal: query rows before the first one that can see this key block are skipped.
    lo = 0
    if IS_CAUSAL:
        lo = tl.maximum(start_n - causal_offset, 0) // BLOCK_M * BLOCK_M
    for g in range(0, group_size):
        head = kv_head * group_size + g
        q_base = q_ptr + batch * stride_q_batch + head * stride_q_head
        do_base = do_ptr + batch * stride_do_batch + head * stride_do_head
        mask_base = mask_ptr + batch * stride_mask_batch + head * stride_mask_head
        row_base = (batch * n_heads + head) * seqlen_q
        for start_m in range(lo, seqlen_q, BLOCK_M):
            rows = start_m + offs_m
            mask_m = rows < seqlen_q
            tile_md = mask_m[:, None] & mask_d[None, :]
            q = tl.load(
                q_base + rows[:, None] * stride_q_seq + offs_d[None, :] * stride_q_dim,
                mask=tile_md,
                other=0.0,
            )
            do = tl.load(
                do_base + rows[:, None] * stride_do_seq + offs_d[None, :] * stride_do_dim,
                mask=tile_md,
                other=0.0,
            )
            lse = tl.load(lse_ptr + row_base + rows, mask=mask_m, other=float("inf"))
            delta = tl.load(delta_ptr + row_base + rows, mask=mask_m, other=0.0)
            s = _scores(
                q, k_t, rows, cols, seqlen_q, seqlen_k, mask_base, stride_mask_q, stride_mask_k,
                sm_scale_log2, causal_offset, IS_CAUSAL, MASK_KIND, DOT_FP32, IEEE,
            )  # fmt: skip
            p = tl.exp2(s - lse[:, None])  # 0 where masked (s = -inf) or the row saw nothing
            dv += _dot(tl.trans(p.to(do.dtype)), do, DOT_FP32, IEEE)
            dp = _dot(do, v_t, DOT_FP32, IEEE)
            ds = p * (dp - delta[:, None])
            dk += _dot(tl.trans(ds.to(q.dtype)), q, DOT_FP32, IEEE)

    out_rows = pid_bh * seqlen_k + cols
    out_offsets = out_rows[:, None] * head_dim + offs_d[None, :]
    tl.store(dk_ptr + out_offsets, rounded_for_store(dk * sm_scale, BF16_RNE), mask=tile_nd)
    tl.store(dv_ptr + out_offsets, rounded_for_store(dv, BF16_RNE), mask=tile_nd)


@triton.jit
def _attn_bwd_dq_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    mask_ptr,
    do_ptr,
    lse_ptr,
    delta_ptr,
    dq_ptr,  # (batch, n_heads, seqlen_q, head_dim) contiguous, out
    stride_q_batch,
    stride_q_head,
    stride_q_seq,
    stride_q_dim,
    stride_k_batch,
    stride_k_head,
    stride_k_seq,
    stride_k_dim,
    stride_v_batch,
    stride_v_head,
    stride_v_seq,
    stride_v_dim,
    stride_mask_batch,
    stride_mask_head,
    stride_mask_q,
    stride_mask_k,
    stride_do_batch,
    stride_do_head,
    stride_do_seq,
    stride_do_dim,
    n_heads,
    group_size,
    seqlen_q,
    seqlen_k,
    head_dim,
    sm_scale,
    sm_scale_log2,
    causal_offset,
    IS_CAUSAL: tl.constexpr,
    MASK_KIND: tl.constexpr,
    DOT_FP32: tl.constexpr,
    IEEE: tl.constexpr,
    BF16_RNE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """dq for BLOCK_M query rows of one (batch, head), over every key block it can see."""
    pid_bh = tl.program_id(0).to(tl.int64)
    pid_m = tl.program_id(1)
    batch = pid_bh // n_heads
    head = pid_bh % n_heads
    kv_head = head // group_size
    q_base = q_ptr + batch * stride_q_batch + head * stride_q_head
    do_base = do_ptr + batch * stride_do_batch + head * stride_do_head
    k_base = k_ptr + batch * stride_k_batch + kv_head * stride_k_head
    v_base = v_ptr + batch * stride_v_batch + kv_head * stride_v_head
    mask_base = mask_ptr + batch * stride_mask_batch + head * stride_mask_head

    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    mask_m = rows < seqlen_q
    mask_d = offs_d < head_dim
    tile_md = mask_m[:, None] & mask_d[None, :]

    q = tl.load(
        q_base + rows[:, None] * stride_q_seq + offs_d[None, :] * stride_q_dim,
        mask=tile_md,
        other=0.0,
    )
    do = tl.load(
        do_base + rows[:, None] * stride_do_seq + offs_d[None, :] * stride_do_dim,
        mask=tile_md,
        other=0.0,
    )
    lse = tl.load(lse_ptr + pid_bh * seqlen_q + rows, mask=mask_m, other=float("inf"))
    delta = tl.load(delta_ptr + pid_bh * seqlen_q + rows, mask=mask_m, other=0.0)
    dq = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)

    hi = seqlen_k
    if IS_CAUSAL:
        hi = tl.maximum(tl.minimum(seqlen_k, (pid_m + 1) * BLOCK_M + causal_offset), 0)
    for start_n in range(0, hi, BLOCK_N):
        cols = start_n + offs_n
        tile_nd = (cols < seqlen_k)[:, None] & mask_d[None, :]
        k = tl.load(
            k_base + cols[:, None] * stride_k_seq + offs_d[None, :] * stride_k_dim,
            mask=tile_nd,
            other=0.0,
        )
        v = tl.load(
            v_base + cols[:, None] * stride_v_seq + offs_d[None, :] * stride_v_dim,
            mask=tile_nd,
            other=0.0,
        )
        s = _scores(
            q, tl.trans(k), rows, cols, seqlen_q, seqlen_k, mask_base, stride_mask_q,
            stride_mask_k, sm_scale_log2, causal_offset, IS_CAUSAL, MASK_KIND, DOT_FP32, IEEE,
        )  # fmt: skip
        p = tl.exp2(s - lse[:, None])
        dp = _dot(do, tl.trans(v), DOT_FP32, IEEE)
        ds = p * (dp - delta[:, None])
        dq += _dot(ds.to(k.dtype), k, DOT_FP32, IEEE)

    out_offsets = (pid_bh * seqlen_q + rows)[:, None] * head_dim + offs_d[None, :]
    tl.store(dq_ptr + out_offsets, rounded_for_store(dq * sm_scale, BF16_RNE), mask=tile_md)


@dataclass(frozen=True)
class _Tile:
    block_m: int  # query rows per tile
    block_n: int  # keys per tile
    num_warps: int
    num_stages: int


# Tiles per kernel and head-dim bucket, read off the sm_90 compile (bf16, causal): each is the
# largest tried that keeps 0 bytes of stack (no spills), wgmma where head_dim <= 128. At 256 no
# backward tile with wgmma avoided spills, so the backward takes 32 x 32 (mma.sync) there.
_TILES = {
    "fwd": {64: _Tile(128, 64, 8, 2), 128: _Tile(128, 64, 8, 2), 256: _Tile(64, 32, 8, 1)},
    "dkdv": {64: _Tile(32, 64, 8, 2), 128: _Tile(32, 64, 8, 2), 256: _Tile(32, 32, 8, 1)},
    "dq": {64: _Tile(64, 64, 4, 2), 128: _Tile(64, 64, 8, 2), 256: _Tile(32, 32, 8, 1)},
}


def _config(head_dim: int, kernel, which: str) -> dict:
    """Launch parameters of ``which`` kernel ("fwd", "dkdv", "dq") for ``head_dim``."""
    block_d = max(MIN_BLOCK, triton.next_power_of_2(head_dim))
    tile = _TILES[which][max(block_d, 64)]
    if _runtime.is_interpreted(kernel):
        # The interpreter pays for padded work, not launches: small tiles, with the GPU tile's
        # shape (which side is longer), so that tests walk the same block arithmetic.
        long_m = tile.block_m > tile.block_n
        block_m, block_n = (2 * MIN_BLOCK, MIN_BLOCK) if long_m else (MIN_BLOCK, 2 * MIN_BLOCK)
        return dict(BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d, num_warps=4)
    return dict(
        BLOCK_M=tile.block_m,
        BLOCK_N=tile.block_n,
        BLOCK_D=block_d,
        num_warps=tile.num_warps,
        num_stages=tile.num_stages,
    )


def _mask_args(mask: torch.Tensor | None, shape, fallback: torch.Tensor):
    """The mask broadcast to (batch, heads, seqlen_q, seqlen_k) through zero strides."""
    if mask is None:
        return fallback, (0, 0, 0, 0)
    full = mask.broadcast_to(shape)
    return full, tuple(full.stride())


def _flags(q: torch.Tensor, kernel, is_causal: bool, mask_kind: int) -> dict:
    interpreted = _runtime.is_interpreted(kernel)
    return dict(
        IS_CAUSAL=is_causal,
        MASK_KIND=mask_kind,
        DOT_FP32=interpreted,
        IEEE=q.dtype == torch.float32,
        BF16_RNE=_runtime.software_bf16_rounding(kernel, q.dtype),
    )


def attention_fwd(q, k, v, mask, mask_kind: int, scale: float, is_causal: bool, causal_offset: int):
    """Attention forward.

    Args:
        q: (batch, n_heads, seqlen_q, head_dim); k, v: (batch, n_kv_heads, seqlen_k, head_dim);
            fp32/fp16/bf16, one dtype, any strides.
        mask: broadcastable to (batch, n_heads, seqlen_q, seqlen_k), bool (True = take part) or
            float (added to the scores), or None; ``mask_kind`` says which (MASK_*).
        scale: multiplies q @ k^T. causal_offset: key j is seen by query i when
            j <= i + causal_offset (only with ``is_causal``).
    Returns:
        o: (batch, n_heads, seqlen_q, head_dim) contiguous, q's dtype.
        lse: (batch * n_heads, seqlen_q) fp32 base-2 log-sum-exp, +inf for rows seeing no key.
    """
    batch, n_heads, seqlen_q, head_dim = q.shape
    n_kv_heads, seqlen_k = k.shape[1], k.shape[2]
    o = _runtime.empty((batch, n_heads, seqlen_q, head_dim), dtype=q.dtype, device=q.device)
    lse = _runtime.empty((batch * n_heads, seqlen_q), dtype=torch.float32, device=q.device)
    if o.numel() == 0:
        return o, lse
    _runtime.check_runnable(_attn_fwd_kernel, "q", q)
    mask_t, mask_strides = _mask_args(mask, (batch, n_heads, seqlen_q, seqlen_k), q)
    config = _config(head_dim, _attn_fwd_kernel, "fwd")
    grid = (batch * n_heads, triton.cdiv(seqlen_q, config["BLOCK_M"]))
    _attn_fwd_kernel[grid](
        q, k, v, mask_t, o, lse,
        *q.stride(), *k.stride(), *v.stride(), *mask_strides,
        n_heads, n_heads // n_kv_heads, seqlen_q, seqlen_k, head_dim,
        scale * LOG2E, causal_offset,
        **_flags(q, _attn_fwd_kernel, is_causal, mask_kind), **config,
    )  # fmt: skip
    return o, lse


def attention_bwd(
    do, q, k, v, o, lse, mask, mask_kind: int, scale: float, is_causal: bool, causal_offset: int
):
    """Gradients of :func:`attention_fwd` (arguments as there; ``do`` like ``o``, any strides).

    Returns dq (q's shape) and dk, dv (k's shape), contiguous, summed over each GQA group.
    """
    batch, n_heads, seqlen_q, head_dim = q.shape
    n_kv_heads, seqlen_k = k.shape[1], k.shape[2]
    dq = _runtime.empty(q.shape, dtype=q.dtype, device=q.device)
    dk = _runtime.empty(k.shape, dtype=k.dtype, device=k.device)
    dv = _runtime.empty(v.shape, dtype=v.dtype, device=v.device)
    if q.numel() == 0 or k.numel() == 0:
        return dq.zero_(), dk.zero_(), dv.zero_()
    _runtime.check_runnable(_attn_bwd_dq_kernel, "q", q)
    delta = (do.float() * o.float()).sum(dim=-1).reshape(batch * n_heads, seqlen_q)
    mask_t, mask_strides = _mask_args(mask, (batch, n_heads, seqlen_q, seqlen_k), q)
    common = (
        *q.stride(), *k.stride(), *v.stride(), *mask_strides, *do.stride(),
    )  # fmt: skip
    flags = _flags(q, _attn_bwd_dq_kernel, is_causal, mask_kind)
    config = _config(head_dim, _attn_bwd_dkdv_kernel, "dkdv")
    grid_kv = (batch * n_kv_heads, triton.cdiv(seqlen_k, config["BLOCK_N"]))
    _attn_bwd_dkdv_kernel[grid_kv](
        q, k, v, mask_t, do, lse, delta, dk, dv, *common,
        n_heads, n_kv_heads, n_heads // n_kv_heads, seqlen_q, seqlen_k, head_dim,
        scale, scale * LOG2E, causal_offset, **flags, **config,
    )  # fmt: skip
    config = _config(head_dim, _attn_bwd_dq_kernel, "dq")
    grid_q = (batch * n_heads, triton.cdiv(seqlen_q, config["BLOCK_M"]))
    _attn_bwd_dq_kernel[grid_q](
        q, k, v, mask_t, do, lse, delta, dq, *common,
        n_heads, n_heads // n_kv_heads, seqlen_q, seqlen_k, head_dim,
        scale, scale * LOG2E, causal_offset, **flags, **config,
    )  # fmt: skip
    return dq, dk, dv


def default_scale(head_dim: int) -> float:
    return 1.0 / math.sqrt(head_dim)
