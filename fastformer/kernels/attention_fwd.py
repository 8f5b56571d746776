"""Fused (flash-style) attention forward in Triton: never materialises the score matrix.

One program per (sequence * head, block of BLOCK_M query rows); sequence * head sits on grid
axis 0, which CUDA allows up to 2**31 - 1 (axes 1 and 2 stop at 65535). Online softmax in fp32
and base 2 (scores pre-multiplied by scale * log2(e)). Under causal masking, key blocks past the
block's last row are not visited. Query heads read KV head ``head // group_size`` (GQA/MQA).

Each row's softmax statistics are saved for the backward as two numbers, the running maximum
``m`` and ``log2(l)`` (base 2), not as their sum: the backward recomputes probabilities as
``exp2((s - m) - log2(l))``, where ``s - m`` is exact, so large logits (|s| ~ 200) keep their
precision (an fp32 log-sum-exp of 200 alone carries an error of 1.5e-5). Rows that see no key
(all masked, causal rows before the first key, empty sequences) give 0 and store m = +inf, so
that their probabilities are 0 in the backward and every gradient stays finite. A row with a
NaN score is not one of them: its sum is NaN, and so are its output, m, log2(l) and log-sum-exp
(m too: the GPU's max skips NaN, so a row whose only key is NaN would keep m = -inf, which the
caller's test for an infinite m takes for "no key"; a +inf score also gives a NaN sum).
Layouts and causal alignment: see ``attention_common``.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from fastformer.kernels import _runtime
from fastformer.kernels import attention_common as common
from fastformer.kernels._jit import rounded_for_store


@triton.jit
def _attn_fwd_kernel(
    q_ptr,  # (batch, n_heads, seqlen_q, head_dim) or packed (total_q, n_heads, head_dim)
    k_ptr,  # (batch, n_kv_heads, seqlen_k, head_dim) or packed (total_k, n_kv_heads, head_dim)
    v_ptr,  # like k
    mask_ptr,  # broadcast to (batch, n_heads, seqlen_q, seqlen_k), or unused
    cu_seqlens_q_ptr,  # (batch + 1,) int32 when VARLEN, else unused
    cu_seqlens_k_ptr,  # (batch + 1,) int32 when VARLEN, else unused
    o_ptr,  # like q, out
    o32_ptr,  # like o in fp32, out when STORE_O32 (for the backward's delta), else unused
    m_ptr,  # (batch, n_heads, seqlen_q) or packed (total_q, n_heads), fp32: row max (base 2), out
    log2l_ptr,  # like m: log2 of the row's sum of exp2(s - m), out
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
    stride_o_batch,
    stride_o_head,
    stride_o_seq,
    stride_o_dim,
    stride_stat_batch,
    stride_stat_head,
    stride_stat_seq,
    n_heads,
    group_size,
    seqlen_q,
    seqlen_k,
    head_dim,
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
    STORE_O32: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Attention output and log-sum-exp for BLOCK_M query rows of one (sequence, head)."""
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
    m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)

    lo, hi = common.key_range(
        pid_m, seqlen_k, causal_offset, window_left, window_right,
        IS_CAUSAL, HAS_WINDOW, BLOCK_M, BLOCK_N,
    )  # fmt: skip
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + offs_n
        mask_n = cols < seqlen_k
        k_t = tl.load(
            k_base + cols[None, :] * stride_k_seq + offs_d[:, None] * stride_k_dim,
            mask=mask_n[None, :] & mask_d[:, None],
            other=0.0,
        )
        s = common.scores(
            q, k_t, rows, cols, seqlen_q, seqlen_k, mask_base, stride_mask_q, stride_mask_k,
            sm_scale_log2, causal_offset, window_left, window_right, IS_CAUSAL, HAS_WINDOW,
            MASK_KIND, DOT_FP32, IEEE,
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
        if HAS_DROPOUT:  # the normaliser l_i keeps every term; the values see the kept ones
            keep = common.dropout_keep(
                seed, pid_bh, rows, cols, rng_seqlen_q, rng_seqlen_k, dropout_p
            )
            p = tl.where(keep, p, 0.0)  # 1 / (1 - dropout_p) is applied in fp32 at the end
        acc = acc * alpha[:, None] + common.dot(p.to(v.dtype), v, DOT_FP32, IEEE)
        m_i = m_new

    seen = l_i != 0.0  # NaN counts as seen: a NaN score gives a NaN log-sum-exp, as in eager
    denominator = tl.where(seen, l_i, 1.0)
    if HAS_DROPOUT:
        denominator = denominator * (1.0 - dropout_p)
    out = acc / denominator[:, None]
    m_store = tl.where(seen, m_i, float("inf"))
    # A NaN row stores m = l_i = NaN: on the GPU, max() skips NaN and m may even stay -inf.
    m_store = tl.where(l_i == l_i, m_store, l_i)
    log2l = tl.where(seen, tl.log2(tl.where(seen, l_i, 1.0)), 0.0)
    o_offsets = batch * stride_o_batch + head * stride_o_head + q_start * stride_o_seq
    o_offsets += rows[:, None] * stride_o_seq + offs_d[None, :] * stride_o_dim
    tl.store(o_ptr + o_offsets, rounded_for_store(out, BF16_RNE), mask=tile_md)
    if STORE_O32:  # o32 has o's strides (both contiguous, q's shape)
        tl.store(o32_ptr + o_offsets, out, mask=tile_md)
    stat_offsets = batch * stride_stat_batch + head * stride_stat_head
    stat_offsets += (q_start + rows) * stride_stat_seq
    tl.store(m_ptr + stat_offsets, m_store, mask=mask_m)
    tl.store(log2l_ptr + stat_offsets, log2l, mask=mask_m)


_attn_fwd = common.autotuned(_attn_fwd_kernel, "fwd")


def attention_fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
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
    for_backward: bool = False,
):
    """Attention forward.

    Args:
        q, k, v: dense (batch, heads, seq, head_dim) or packed (total, heads, head_dim) as
            ``problem`` says; fp32/fp16/bf16, one dtype; any strides.
        mask: broadcastable to (batch, n_heads, seqlen_q, seqlen_k) (dense only), bool
            (True = take part) or float (added to the scores); ``mask_kind`` says which.
        scale: multiplies q @ k^T. bottom_right: causal alignment (see ``attention_common``).
        dropout_p, seed: dropout on the attention probabilities, drawn by Philox from ``seed``
            (``attention_common.dropout_mask`` gives the mask).
        window: sliding window (left, right), -1 for an unbounded side, or None.
        for_backward: a backward will run (it may need ``o32``).
    Returns:
        o: q's shape, contiguous, q's dtype.
        m, log2l: fp32 row statistics (base 2), (batch, n_heads, seqlen_q) or packed
            (total_q, n_heads); the log-sum-exp is m + log2l; m is +inf for rows seeing no key.
        o32: when ``keeps_fp32_output`` (dropout in fp16/bf16, for a backward), o before its
            rounding, in fp32 and o's shape; else None. The backward's delta = rowsum(dO * O)
            reads it: with the rounded o, the 1 / (1 - dropout_p) scale of a single kept key
            no longer cancels against dP and rows that should get a 0 gradient get noise.
    """
    p = problem
    o = _runtime.empty(q.shape, dtype=q.dtype, device=q.device)
    o32 = None
    if keeps_fp32_output(q.dtype, dropout_p, for_backward):
        o32 = _runtime.empty(q.shape, dtype=torch.float32, device=q.device)
    lse_shape = (q.shape[0], p.n_heads) if p.varlen else (p.batch, p.n_heads, p.seqlen_q)
    m = _runtime.empty(lse_shape, dtype=torch.float32, device=q.device)
    log2l = _runtime.empty(lse_shape, dtype=torch.float32, device=q.device)
    if o.numel() == 0:
        return o, m, log2l, o32
    if k.numel() == 0 and not p.varlen:  # no key at all: every row is 0
        o32 = o32.zero_() if o32 is not None else None
        return o.zero_(), m.fill_(float("inf")), log2l.zero_(), o32
    _runtime.check_runnable(_attn_fwd_kernel, "q", q)
    mask_t, mask_strides = common.mask_args(mask, (p.batch, p.n_heads, p.seqlen_q, p.seqlen_k), q)

    def grid(meta):
        return (p.batch * p.n_heads, triton.cdiv(p.seqlen_q, meta["BLOCK_M"]))

    _attn_fwd[grid](
        q, k, v, mask_t, *common.seqlen_args(p, q), o, o if o32 is None else o32, m, log2l,
        *common.bhsd_strides(q, p.varlen), *common.bhsd_strides(k, p.varlen),
        *common.bhsd_strides(v, p.varlen), *mask_strides,
        *common.bhsd_strides(o, p.varlen), *common.bhs_strides(m, p.varlen),
        p.n_heads, p.group_size, p.seqlen_q, p.seqlen_k, p.head_dim, scale * common.LOG2E,
        dropout_p, seed, *common.window_args(window, p),
        **common.flags(
            q, _attn_fwd_kernel, is_causal, bottom_right, mask_kind, p.varlen, dropout_p > 0,
            window,
        ),
        STORE_O32=o32 is not None,
        BLOCK_D=common.block_d(p.head_dim),
    )  # fmt: skip
    return o, m, log2l, o32


def keeps_fp32_output(dtype: torch.dtype, dropout_p: float, for_backward: bool) -> bool:
    """Whether the forward also writes its output in fp32: for a backward, with dropout in
    fp16/bf16 (without dropout, or in fp32, the backward reads the output itself)."""
    return for_backward and dropout_p > 0 and dtype != torch.float32


def default_scale(head_dim: int) -> float:
    return 1.0 / math.sqrt(head_dim)
