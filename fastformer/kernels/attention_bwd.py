"""Fused attention backward in Triton: dq, dk, dv without the score matrix and without atomics.

With P = exp2((S - m) - log2(l)) recomputed tile by tile (row statistics from the forward)
and delta = rowsum(dO * O) - dlse (dlse: the gradient arriving on the returned log-sum-exp):
    dV = P^T dO,   dP = dO V^T,   dS = P * (dP - delta),   dQ = scale * dS K,   dK = scale * dS^T Q
With dropout (keep mask M, rate r): dV = (P * M / (1 - r))^T dO and dP = (dO V^T) * M / (1 - r);
delta is unchanged (rowsum(dO * O) still equals rowsum(P * dP)), but in fp16/bf16 it is taken
from the forward's fp32 output: the rounded O = V / (1 - r) of a row with one kept key misses
dP by a unit of the dtype, and dS = P * (dP - delta), exactly 0 there, became that unit.
One kernel owns a block of keys of one (sequence, KV head) and accumulates dk and dv over every
query block of every query head in its GQA group, so dk and dv are summed per KV head in
registers; another owns a block of queries and accumulates dq over the key blocks it can see.
No two programs write the same element, so the result is the same bits on every run.
delta is summed in fp64 (an eager torch op over dO and O): in fp32 its rounding, multiplied by P,
put the gradient of a trainable float mask past 3x eager's error. It costs two fp64 temporaries
the size of O; a fused Triton reduction would avoid them.
Rows that saw no key have m = +inf: their P is 0, their dq exactly 0.
Known limit: in fp32 with very large logits (|q.k| * scale ~ 140, randn x 6 at head_dim 64) the
dk and dv errors reach 2-9x eager's (the 3x rule fails there); typical logits stay within it.
Layouts and causal alignment: see ``attention_common``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastformer.kernels import _runtime
from fastformer.kernels import attention_common as common
from fastformer.kernels._jit import rounded_for_store


@triton.jit
def _attn_bwd_dkdv_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    mask_ptr,
    cu_seqlens_q_ptr,
    cu_seqlens_k_ptr,
    do_ptr,  # like q
    m_ptr,  # fp32 row max (base 2), as the forward wrote it
    log2l_ptr,  # fp32 log2 of the row sum, as the forward wrote it
    delta_ptr,  # fp32 rowsum(dO * O) - dlse, same layout as m
    dk_ptr,  # like k, out
    dv_ptr,  # like v, out
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
    stride_stat_batch,
    stride_stat_head,
    stride_stat_seq,
    stride_dk_batch,
    stride_dk_head,
    stride_dk_seq,
    stride_dk_dim,
    n_kv_heads,
    group_size,
    seqlen_q,
    seqlen_k,
    head_dim,
    sm_scale,
    sm_scale_log2,
    dropout_p,
    seed,
    window_left,
    window_right,
    HAS_DROPOUT: tl.constexpr,
    HAS_WINDOW: tl.constexpr,
    IS_CAUSAL: tl.constexpr,
    BOTTOM_RIGHT: tl.constexpr,
    MASK_KIND: tl.constexpr,
    VARLEN: tl.constexpr,
    DOT_FP32: tl.constexpr,
    IEEE: tl.constexpr,
    BF16_RNE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """dk and dv for BLOCK_N keys of one (sequence, KV head), summed over its query heads."""
    pid_bh = tl.program_id(0).to(tl.int64)
    pid_n = tl.program_id(1)
    batch = pid_bh // n_kv_heads
    kv_head = pid_bh % n_kv_heads
    rng_seqlen_q, rng_seqlen_k = seqlen_q, seqlen_k  # dropout numbers are keyed on the maxima
    q_start, k_start, seqlen_q, seqlen_k = common.sequence(
        batch, cu_seqlens_q_ptr, cu_seqlens_k_ptr, seqlen_q, seqlen_k, VARLEN
    )
    start_n = pid_n * BLOCK_N
    if start_n >= seqlen_k:
        return
    causal_offset = seqlen_k - seqlen_q if BOTTOM_RIGHT else 0
    k_base = k_ptr + batch * stride_k_batch + kv_head * stride_k_head + k_start * stride_k_seq
    v_base = v_ptr + batch * stride_v_batch + kv_head * stride_v_head + k_start * stride_v_seq

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

    # Query rows outside the band that can see this key block (causal, window) are skipped.
    lo, hi = common.query_range(
        start_n, seqlen_q, causal_offset, window_left, window_right,
        IS_CAUSAL, HAS_WINDOW, BLOCK_M, BLOCK_N,
    )  # fmt: skip
    for g in range(0, group_size):
        head = kv_head * group_size + g
        q_base = q_ptr + batch * stride_q_batch + head * stride_q_head + q_start * stride_q_seq
        do_base = do_ptr + batch * stride_do_batch + head * stride_do_head
        do_base += q_start * stride_do_seq
        mask_base = mask_ptr + batch * stride_mask_batch + head * stride_mask_head
        stat_base = batch * stride_stat_batch + head * stride_stat_head + q_start * stride_stat_seq
        for start_m in range(lo, hi, BLOCK_M):
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
            stat_offsets = stat_base + rows * stride_stat_seq
            m = tl.load(m_ptr + stat_offsets, mask=mask_m, other=float("inf"))
            log2l = tl.load(log2l_ptr + stat_offsets, mask=mask_m, other=0.0)
            delta = tl.load(delta_ptr + stat_offsets, mask=mask_m, other=0.0)
            s = common.scores(
                q, k_t, rows, cols, seqlen_q, seqlen_k, mask_base, stride_mask_q, stride_mask_k,
                sm_scale_log2, causal_offset, window_left, window_right, IS_CAUSAL, HAS_WINDOW,
                MASK_KIND, DOT_FP32, IEEE,
            )  # fmt: skip
            # 0 where masked (s = -inf) or where the row saw nothing (m = +inf)
            p = tl.exp2((s - m[:, None]) - log2l[:, None])
            dp = common.dot(do, v_t, DOT_FP32, IEEE)
            if HAS_DROPOUT:
                bh_q = batch * n_kv_heads * group_size + head
                keep = common.dropout_keep(
                    seed, bh_q, rows, cols, rng_seqlen_q, rng_seqlen_k, dropout_p
                )
                p_kept = tl.where(keep, p / (1.0 - dropout_p), 0.0)
                dv += common.dot(tl.trans(p_kept.to(do.dtype)), do, DOT_FP32, IEEE)
                dp = tl.where(keep, dp / (1.0 - dropout_p), 0.0)
            else:
                dv += common.dot(tl.trans(p.to(do.dtype)), do, DOT_FP32, IEEE)
            ds = p * (dp - delta[:, None])
            dk += common.dot(tl.trans(ds.to(q.dtype)), q, DOT_FP32, IEEE)

    out_base = batch * stride_dk_batch + kv_head * stride_dk_head + k_start * stride_dk_seq
    out_offsets = out_base + cols[:, None] * stride_dk_seq + offs_d[None, :] * stride_dk_dim
    tl.store(dk_ptr + out_offsets, rounded_for_store(dk * sm_scale, BF16_RNE), mask=tile_nd)
    tl.store(dv_ptr + out_offsets, rounded_for_store(dv, BF16_RNE), mask=tile_nd)


@triton.jit
def _attn_bwd_dq_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    mask_ptr,
    cu_seqlens_q_ptr,
    cu_seqlens_k_ptr,
    do_ptr,
    m_ptr,
    log2l_ptr,
    delta_ptr,
    dq_ptr,  # like q, out
    dmask_ptr,  # (batch * n_heads, seqlen_q, seqlen_k) fp32 zero-filled, out, when MASK_GRAD
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
    stride_stat_batch,
    stride_stat_head,
    stride_stat_seq,
    stride_dq_batch,
    stride_dq_head,
    stride_dq_seq,
    stride_dq_dim,
    n_heads,
    group_size,
    seqlen_q,
    seqlen_k,
    head_dim,
    sm_scale,
    sm_scale_log2,
    dropout_p,
    seed,
    window_left,
    window_right,
    HAS_DROPOUT: tl.constexpr,
    HAS_WINDOW: tl.constexpr,
    IS_CAUSAL: tl.constexpr,
    BOTTOM_RIGHT: tl.constexpr,
    MASK_KIND: tl.constexpr,
    VARLEN: tl.constexpr,
    DOT_FP32: tl.constexpr,
    IEEE: tl.constexpr,
    BF16_RNE: tl.constexpr,
    MASK_GRAD: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """dq for BLOCK_M query rows of one (sequence, head), over every key block it can see."""
    pid_bh = tl.program_id(0).to(tl.int64)
    pid_m = tl.program_id(1)
    batch = pid_bh // n_heads
    head = pid_bh % n_heads
    kv_head = head // group_size
    rng_seqlen_q, rng_seqlen_k = seqlen_q, seqlen_k  # dropout numbers are keyed on the maxima
    q_start, k_start, seqlen_q, seqlen_k = common.sequence(
        batch, cu_seqlens_q_ptr, cu_seqlens_k_ptr, seqlen_q, seqlen_k, VARLEN
    )
    if pid_m * BLOCK_M >= seqlen_q:
        return
    causal_offset = seqlen_k - seqlen_q if BOTTOM_RIGHT else 0
    q_base = q_ptr + batch * stride_q_batch + head * stride_q_head + q_start * stride_q_seq
    do_base = do_ptr + batch * stride_do_batch + head * stride_do_head + q_start * stride_do_seq
    k_base = k_ptr + batch * stride_k_batch + kv_head * stride_k_head + k_start * stride_k_seq
    v_base = v_ptr + batch * stride_v_batch + kv_head * stride_v_head + k_start * stride_v_seq
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
    stat_base = batch * stride_stat_batch + head * stride_stat_head + q_start * stride_stat_seq
    stat_offsets = stat_base + rows * stride_stat_seq
    m = tl.load(m_ptr + stat_offsets, mask=mask_m, other=float("inf"))
    log2l = tl.load(log2l_ptr + stat_offsets, mask=mask_m, other=0.0)
    delta = tl.load(delta_ptr + stat_offsets, mask=mask_m, other=0.0)
    dq = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)

    lo, hi = common.key_range(
        pid_m, seqlen_k, causal_offset, window_left, window_right,
        IS_CAUSAL, HAS_WINDOW, BLOCK_M, BLOCK_N,
    )  # fmt: skip
    for start_n in range(lo, hi, BLOCK_N):
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
        s = common.scores(
            q, tl.trans(k), rows, cols, seqlen_q, seqlen_k, mask_base, stride_mask_q,
            stride_mask_k, sm_scale_log2, causal_offset, window_left, window_right, IS_CAUSAL,
            HAS_WINDOW, MASK_KIND, DOT_FP32, IEEE,
        )  # fmt: skip
        p = tl.exp2((s - m[:, None]) - log2l[:, None])
        dp = common.dot(do, tl.trans(v), DOT_FP32, IEEE)
        if HAS_DROPOUT:
            keep = common.dropout_keep(
                seed, pid_bh, rows, cols, rng_seqlen_q, rng_seqlen_k, dropout_p
            )
            dp = tl.where(keep, dp / (1.0 - dropout_p), 0.0)
        ds = p * (dp - delta[:, None])
        if MASK_GRAD:  # d(score) is the gradient of an additive mask, element by element
            dmask_offsets = (pid_bh * seqlen_q + rows)[:, None] * seqlen_k + cols[None, :]
            in_bounds = mask_m[:, None] & (cols < seqlen_k)[None, :]
            tl.store(dmask_ptr + dmask_offsets, ds, mask=in_bounds)
        dq += common.dot(ds.to(k.dtype), k, DOT_FP32, IEEE)

    out_base = batch * stride_dq_batch + head * stride_dq_head + q_start * stride_dq_seq
    out_offsets = out_base + rows[:, None] * stride_dq_seq + offs_d[None, :] * stride_dq_dim
    tl.store(dq_ptr + out_offsets, rounded_for_store(dq * sm_scale, BF16_RNE), mask=tile_md)


_attn_bwd_dkdv = common.autotuned(_attn_bwd_dkdv_kernel, "dkdv")
_attn_bwd_dq = common.autotuned(_attn_bwd_dq_kernel, "dq")


def attention_bwd(
    do: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    o: torch.Tensor,
    m: torch.Tensor,
    log2l: torch.Tensor,
    problem: common.Problem,
    *,
    mask: torch.Tensor | None = None,
    mask_kind: int = common.MASK_NONE,
    scale: float,
    is_causal: bool,
    bottom_right: bool,
    dropout_p: float = 0.0,
    seed: int = 0,
    window: tuple[int, int] | None = None,
    mask_grad: bool = False,
    dlse: torch.Tensor | None = None,
):
    """Gradients of ``attention_fwd`` (arguments as there; ``do`` like ``o``, any strides; ``o``
    is read only for delta, so with dropout in fp16/bf16 it is the forward's fp32 ``o32``).

    ``dlse`` is the gradient arriving on the base-2 log-sum-exp (m + log2l), or None.
    Returns dq (q's shape) and dk, dv (k's shape), contiguous, summed over each GQA group, and
    with ``mask_grad`` (a float mask) the mask's gradient in the mask's shape (else None). That
    gradient is the full (batch, heads, seqlen_q, seqlen_k) score gradient, written to memory
    and then summed over the mask's broadcast dims: O(seqlen_q * seqlen_k) memory, paid only
    when the mask requires grad.
    """
    p = problem
    dq = _runtime.empty(q.shape, dtype=q.dtype, device=q.device)
    dk = _runtime.empty(k.shape, dtype=k.dtype, device=k.device)
    dv = _runtime.empty(v.shape, dtype=v.dtype, device=v.device)
    dmask = None
    if mask_grad:
        dmask = torch.zeros(
            p.batch * p.n_heads, p.seqlen_q, p.seqlen_k, dtype=torch.float32, device=q.device
        )
    if q.numel() == 0 or k.numel() == 0:
        return dq.zero_(), dk.zero_(), dv.zero_(), _reduce_to(dmask, mask, p)
    _runtime.check_runnable(_attn_bwd_dq_kernel, "q", q)
    delta = (do.double() * o.double()).sum(dim=-1)  # m's layout
    if dlse is not None:  # d lse / d score = P, so the log-sum-exp's gradient shifts delta
        delta = delta - dlse.double() * common.LOG2E
    delta = delta.float().contiguous()
    mask_t, mask_strides = common.mask_args(mask, (p.batch, p.n_heads, p.seqlen_q, p.seqlen_k), q)
    strides = (
        *common.bhsd_strides(q, p.varlen), *common.bhsd_strides(k, p.varlen),
        *common.bhsd_strides(v, p.varlen), *mask_strides, *common.bhsd_strides(do, p.varlen),
        *common.bhs_strides(m, p.varlen),
    )  # fmt: skip
    sizes = (
        p.group_size, p.seqlen_q, p.seqlen_k, p.head_dim, scale, scale * common.LOG2E,
        dropout_p, seed, *common.window_args(window, p),
    )  # fmt: skip
    seqlens = common.seqlen_args(p, q)

    kernel = _attn_bwd_dkdv_kernel
    flags = common.flags(
        q, kernel, is_causal, bottom_right, mask_kind, p.varlen, dropout_p > 0, window
    )
    block_d = common.block_d(p.head_dim)

    def grid_kv(meta):
        return (p.batch * p.n_kv_heads, triton.cdiv(p.seqlen_k, meta["BLOCK_N"]))

    _attn_bwd_dkdv[grid_kv](
        q, k, v, mask_t, *seqlens, do, m, log2l, delta, dk, dv, *strides,
        *common.bhsd_strides(dk, p.varlen), p.n_kv_heads, *sizes, **flags, BLOCK_D=block_d,
    )  # fmt: skip

    def grid_q(meta):
        return (p.batch * p.n_heads, triton.cdiv(p.seqlen_q, meta["BLOCK_M"]))

    _attn_bwd_dq[grid_q](
        q, k, v, mask_t, *seqlens, do, m, log2l, delta, dq, dmask if mask_grad else delta,
        *strides,
        *common.bhsd_strides(dq, p.varlen), p.n_heads, *sizes, **flags, MASK_GRAD=mask_grad,
        BLOCK_D=block_d,
    )  # fmt: skip
    return dq, dk, dv, _reduce_to(dmask, mask, p)


def _reduce_to(dmask, mask, problem):
    """The full score gradient summed over the dims the mask was broadcast along."""
    if dmask is None:
        return None
    full = dmask.view(problem.batch, problem.n_heads, problem.seqlen_q, problem.seqlen_k)
    return full.sum_to_size(mask.shape).to(mask.dtype)
