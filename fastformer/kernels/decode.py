"""Decode attention in Triton: a few new queries per row against a KV cache, split over the keys.

Query ``i`` of ``seqlen_q`` in row ``b`` sits at position ``cache_seqlens[b] - seqlen_q + i`` and
sees the cached keys at positions up to its own (bottom-right causal alignment); every row has
its own length, read from ``cache_seqlens`` on the device (no host sync). The cache is dense or
paged (addressing in ``kernels/kv_cache.py``).

Design (split-K, "flash decoding"):
- Grid (batch * n_kv_heads * row_blocks, n_splits). A program takes one KV head and ALL the
  query rows that read it: the GQA group's heads times the ``seqlen_q`` queries, as one tile of
  ``BLOCK_M`` rows (row ``r`` is head ``r // seqlen_q`` of the group, query ``r % seqlen_q``),
  padded to at least 16 rows so that the products run on tensor cores. Each K/V block is loaded
  once for the whole group. A group larger than ``MAX_BLOCK_M`` rows (``MAX_BLOCK_M_FP32`` for
  fp32, whose products run on CUDA cores) takes several row blocks (each loads K/V once).
- Split ``s`` of row ``b`` covers keys ``[s * chunk, (s + 1) * chunk)`` with ``chunk =
  cdiv(cdiv(len_b, n_splits), BLOCK_N) * BLOCK_N``: every row's keys spread over all splits,
  whatever its length; splits past the row's end write an empty result.
- A split writes its rows' output normalised by its own softmax sum, and its log-sum-exp (base
  2), in fp32; the combine kernel weights split ``s`` by ``exp2(lse_s - max lse)`` and
  normalises by the sum of those weights. With one split the decode kernel writes the final
  output in q's dtype itself and there is no combine launch.
- Online softmax in fp32 and base 2, as ``attention_fwd``. Rows that see no key (length 0, or
  queries before the first key) give 0 and a log-sum-exp of -inf.

How many splits (:func:`num_splits_heuristic`): enough programs to give every streaming
multiprocessor ``PROGRAMS_PER_SM`` of them (``_runtime.max_programs``), but at least
``MIN_KEYS_PER_SPLIT`` keys per split (fewer would cost more in partial writes and the combine
than they save), at most ``MAX_SPLITS``. It reads the cache's capacity, not the lengths, so the
choice costs no host sync (as flash-attention's KV-cache path does); short rows then leave
splits empty, which exit after writing their empty result.

Addressing: batch, head and page offsets are int64; a key's offset inside its row (dense) or
page (paged) is int32 (``cache_seq_span`` must stay below 2**31; checked before the launch).

Limits: head_dim <= 256; lengths are clamped to the cache's capacity in the kernel (the
functional layer refuses longer ones before the launch), so no key is read out of bounds. The
GPU tiles are spill-free for what the launcher sees with aligned caches (head_dim and strides
multiples of 16, 16-byte aligned pointers: every model head size of 64, 80, 96, 128, 256 with a
contiguous cache); other layouts lose 16-byte loads and spill a little (still correct).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from fastformer.kernels import _runtime
from fastformer.kernels import attention_common as common
from fastformer.kernels._jit import rounded_for_store
from fastformer.kernels.kv_cache import cache_capacity, cache_strides

# Most query rows (group heads x queries) in one tile: 64 x head_dim fp32 accumulators stay in
# registers at head_dim 256 (see GPU_TILES); larger groups take several row blocks.
MAX_BLOCK_M = 64
# Fewest keys a split should hold: below this, writing fp32 partial rows and combining them
# costs about as much as reading the keys they cover (a judgement, not yet timed on a GPU).
MIN_KEYS_PER_SPLIT = 256
# Most splits (flash-attention's cap as well): past it the combine reads more partials than the
# grid gains in parallelism.
MAX_SPLITS = 128
# fp32 partial elements the combine holds per step (splits x features): 16 a thread at 4 warps.
COMBINE_TILE = 2048
LN2 = math.log(2.0)
_LN2 = tl.constexpr(LN2)  # natural log-sum-exp = base-2 one x ln(2)


@triton.jit
def _decode_attn_kernel(
    q_ptr,  # (batch, n_heads, seqlen_q, head_dim)
    k_ptr,  # dense (batch, n_kv_heads, max_seqlen, head_dim) or paged (pages, page, heads, dim)
    v_ptr,  # like k
    seqlens_ptr,  # (batch,) int32: keys per row, the new queries' keys included
    block_table_ptr,  # (batch, max_blocks) int32 when PAGED, else unused
    o_ptr,  # (batch, n_heads, seqlen_q, n_splits, head_dim) through strides, out
    lse_ptr,  # (batch, n_heads, seqlen_q, n_splits) fp32, base 2, out
    stride_q_batch,
    stride_q_head,
    stride_q_seq,
    stride_q_dim,
    stride_k_batch,  # paged: between pages
    stride_k_head,
    stride_k_seq,  # paged: between slots of a page
    stride_k_dim,
    stride_v_batch,
    stride_v_head,
    stride_v_seq,
    stride_v_dim,
    stride_bt_batch,
    stride_bt_block,
    stride_o_batch,
    stride_o_head,
    stride_o_seq,
    stride_o_split,
    stride_o_dim,
    stride_lse_batch,
    stride_lse_head,
    stride_lse_seq,
    stride_lse_split,
    n_kv_heads,
    group_size,
    seqlen_q,
    capacity,
    head_dim,
    page_size,
    n_splits,
    sm_scale_log2,
    PAGED: tl.constexpr,
    DOT_FP32: tl.constexpr,
    IEEE: tl.constexpr,
    BF16_RNE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Output and log-sum-exp of one split of the keys for BLOCK_M rows of one KV head."""
    pid = tl.program_id(0).to(tl.int64)
    split = tl.program_id(1)
    n_rows = group_size * seqlen_q
    row_blocks = tl.cdiv(n_rows, BLOCK_M)
    block_m = pid % row_blocks
    batch = pid // row_blocks // n_kv_heads
    kv_head = pid // row_blocks % n_kv_heads

    seqlen_k = tl.load(seqlens_ptr + batch)
    seqlen_k = tl.minimum(tl.maximum(seqlen_k, 0), capacity)
    chunk = tl.cdiv(tl.cdiv(seqlen_k, n_splits), BLOCK_N) * BLOCK_N
    lo = split * chunk
    hi = tl.minimum(lo + chunk, seqlen_k)

    # Rows: (head of the group, query); each query sees keys up to its own position.
    rows = block_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = rows < n_rows
    head = kv_head * group_size + rows // seqlen_q
    query = rows % seqlen_q
    last_key = seqlen_k - seqlen_q + query
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < head_dim
    tile_md = mask_m[:, None] & mask_d[None, :]

    q_rows = batch * stride_q_batch + head * stride_q_head + query * stride_q_seq
    q = tl.load(q_ptr + q_rows[:, None] + offs_d[None, :] * stride_q_dim, mask=tile_md, other=0.0)
    m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)

    k_base = k_ptr + kv_head * stride_k_head
    v_base = v_ptr + kv_head * stride_v_head
    if not PAGED:
        k_base += batch * stride_k_batch
        v_base += batch * stride_v_batch
    table = block_table_ptr + batch * stride_bt_batch
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + offs_n
        mask_n = cols < hi
        if PAGED:  # the page of each key, once for k and v
            page = tl.load(table + (cols // page_size) * stride_bt_block, mask=mask_n, other=0)
            page = page.to(tl.int64)
            slot = cols % page_size
            k_keys = page * stride_k_batch + slot * stride_k_seq
            v_keys = page * stride_v_batch + slot * stride_v_seq
        else:
            k_keys = cols * stride_k_seq
            v_keys = cols * stride_v_seq
        k_t = tl.load(
            k_base + k_keys[None, :] + offs_d[:, None] * stride_k_dim,
            mask=mask_n[None, :] & mask_d[:, None],
            other=0.0,
        )
        s = common.dot(q, k_t, DOT_FP32, IEEE) * sm_scale_log2
        valid = mask_n[None, :] & (cols[None, :] <= last_key[:, None])
        s = tl.where(valid, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        # A row with nothing seen yet keeps m = -inf; subtract 0 there so exp2 gives 0, not NaN.
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_safe)
        p = tl.exp2(s - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = tl.load(
            v_base + v_keys[:, None] + offs_d[None, :] * stride_v_dim,
            mask=mask_n[:, None] & mask_d[None, :],
            other=0.0,
        )
        acc = acc * alpha[:, None] + common.dot(p.to(v.dtype), v, DOT_FP32, IEEE)
        m_i = m_new

    seen = l_i != 0.0  # NaN counts as seen: a NaN score gives a NaN log-sum-exp, as in eager
    out = acc / tl.where(seen, l_i, 1.0)[:, None]
    lse = tl.where(seen, m_i + tl.log2(tl.where(seen, l_i, 1.0)), float("-inf"))
    o_rows = batch * stride_o_batch + head * stride_o_head + query * stride_o_seq
    o_rows += split * stride_o_split
    o_ptrs = o_ptr + o_rows[:, None] + offs_d[None, :] * stride_o_dim
    tl.store(o_ptrs, rounded_for_store(out, BF16_RNE), mask=tile_md)
    lse_rows = batch * stride_lse_batch + head * stride_lse_head + query * stride_lse_seq
    tl.store(lse_ptr + lse_rows + split * stride_lse_split, lse, mask=mask_m)


@triton.jit
def _decode_combine_kernel(
    o_part_ptr,  # (batch, n_heads, seqlen_q, n_splits, head_dim) fp32, contiguous
    lse_part_ptr,  # (batch, n_heads, seqlen_q, n_splits) fp32, base 2, contiguous
    o_ptr,  # (batch, n_heads, seqlen_q, head_dim), out
    lse_ptr,  # (batch, n_heads, seqlen_q) fp32, natural log, out when HAS_LSE
    n_heads,
    seqlen_q,
    head_dim,
    n_splits,
    stride_o_batch,
    stride_o_head,
    stride_o_seq,
    stride_o_dim,
    stride_lse_batch,
    stride_lse_head,
    stride_lse_seq,
    HAS_LSE: tl.constexpr,
    BF16_RNE: tl.constexpr,
    BLOCK_S: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Merge the splits of one query row by their log-sum-exps, BLOCK_S splits at a time."""
    row = tl.program_id(0).to(tl.int64)  # (batch * n_heads + head) * seqlen_q + query
    query = row % seqlen_q
    head = row // seqlen_q % n_heads
    batch = row // seqlen_q // n_heads
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < head_dim
    lse_row = lse_part_ptr + row * n_splits
    o_row = o_part_ptr + row * n_splits * head_dim

    # The largest log-sum-exp first, so that every weight exp2(lse_s - max) is at most 1.
    best = tl.full((BLOCK_S,), float("-inf"), dtype=tl.float32)
    for start in range(0, n_splits, BLOCK_S):
        splits = start + offs_s
        chunk = tl.load(lse_row + splits, mask=splits < n_splits, other=float("-inf"))
        best = tl.maximum(best, chunk)
    lse_max = tl.max(best, axis=0)
    lse_max = tl.where(lse_max == float("-inf"), 0.0, lse_max)  # no key anywhere: weights 0

    weights = tl.zeros((BLOCK_S,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_S, BLOCK_D), dtype=tl.float32)
    for start in range(0, n_splits, BLOCK_S):
        splits = start + offs_s
        mask_s = splits < n_splits
        weight = tl.exp2(tl.load(lse_row + splits, mask=mask_s, other=float("-inf")) - lse_max)
        o_ptrs = o_row + splits[:, None] * head_dim + offs_d[None, :]
        part = tl.load(o_ptrs, mask=mask_s[:, None] & mask_d[None, :], other=0.0)
        weights += weight
        acc += weight[:, None] * part
    total = tl.sum(weights, axis=0)
    acc = tl.sum(acc, axis=0)

    seen = total != 0.0  # NaN too (see the attention kernel)
    out = acc / tl.where(seen, total, 1.0)
    o_ptrs = o_ptr + batch * stride_o_batch + head * stride_o_head + query * stride_o_seq
    tl.store(o_ptrs + offs_d * stride_o_dim, rounded_for_store(out, BF16_RNE), mask=mask_d)
    if HAS_LSE:
        lse2 = lse_max + tl.log2(tl.where(seen, total, 1.0))
        lse = tl.where(seen, lse2 * _LN2, float("-inf"))
        lse_off = batch * stride_lse_batch + head * stride_lse_head + query * stride_lse_seq
        tl.store(lse_ptr + lse_off, lse)


# Autotuning candidates per head-dim bucket (the power of two >= head_dim, at least 64): keys per
# tile, warps, stages. fp16/bf16 candidates compile for sm_90 without spills at every BLOCK_M
# (16 to MAX_BLOCK_M), fp32 ones (full-precision products, no tensor cores) at BLOCK_M up to
# MAX_BLOCK_M_FP32 (tests/test_decode_compile.py; 8 warps at head_dim 128 because 4 spilled 8
# bytes with 32 rows and a bf16 output). The first is the default when nothing is tuned.
GPU_TILES = {
    64: ((128, 4, 3), (64, 4, 3)),
    128: ((64, 8, 3), (128, 8, 2)),
    256: ((64, 8, 2), (32, 8, 2)),
}
FP32_TILES = {
    64: ((64, 4, 3),),
    128: ((64, 4, 3),),
    256: ((32, 8, 2),),  # 64 keys spilled kilobytes on the paged path
}
# fp32 products run on CUDA cores: 64 rows spilled kilobytes, 16 none.
MAX_BLOCK_M_FP32 = 16
INTERPRETER_BLOCK_N = 32
TUNING_KEY = ["head_dim", "PAGED", "BLOCK_M"]


def _config(block_n: int, num_warps: int, num_stages: int) -> triton.Config:
    return triton.Config({"BLOCK_N": block_n}, num_warps=num_warps, num_stages=num_stages)


def _autotuned(kernel):
    """``kernel`` under ``triton.autotune`` over the candidates of the call's head-dim bucket and
    precision (one fixed tile under the interpreter, which cannot benchmark)."""
    if _runtime.is_interpreted(kernel):
        config = _config(INTERPRETER_BLOCK_N, 4, 1)
        return triton.autotune(configs=[config], key=TUNING_KEY)(kernel)
    tables = (GPU_TILES, FP32_TILES)
    unique = {tile for table in tables for tiles in table.values() for tile in tiles}

    def prune(configs, named_args, **kwargs):
        table = FP32_TILES if kwargs["IEEE"] else GPU_TILES
        allowed = table[common.head_dim_bucket(named_args["head_dim"])]
        return [c for c in configs if (c.kwargs["BLOCK_N"], c.num_warps, c.num_stages) in allowed]

    configs = [_config(*tile) for tile in sorted(unique)]
    options = {"early_config_prune": prune}
    return triton.autotune(configs=configs, key=TUNING_KEY, prune_configs_by=options)(kernel)


_decode_attn = _autotuned(_decode_attn_kernel)


def block_m_for(group_size: int, seqlen_q: int, dtype: torch.dtype) -> int:
    """Rows per tile: the group's heads times the queries, at least 16, at most MAX_BLOCK_M
    (MAX_BLOCK_M_FP32 for fp32)."""
    rows = group_size * seqlen_q
    most = MAX_BLOCK_M_FP32 if dtype == torch.float32 else MAX_BLOCK_M
    return min(max(common.MIN_BLOCK, triton.next_power_of_2(rows)), most)


def num_splits_heuristic(n_programs: int, capacity: int, target_programs: int) -> int:
    """Splits of the keys for ``n_programs`` (batch x KV heads x row blocks), ``capacity`` keys
    per row and a device that wants ``target_programs`` programs (``_runtime.max_programs``):
    enough splits to reach the target, each with at least ``MIN_KEYS_PER_SPLIT`` keys, at most
    ``MAX_SPLITS``, at least 1."""
    if n_programs == 0 or capacity == 0:
        return 1
    wanted = triton.cdiv(target_programs, n_programs)
    most = triton.cdiv(capacity, MIN_KEYS_PER_SPLIT)
    return max(1, min(wanted, most, MAX_SPLITS))


def decode_attention_fwd(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cache_seqlens: torch.Tensor,
    *,
    scale: float,
    num_splits: int | None = None,
    block_table: torch.Tensor | None = None,
    want_lse: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Decode attention (unchecked; see the module docstring).

    Args:
        q: (batch, n_heads, seqlen_q, head_dim), fp32/fp16/bf16, any strides.
        k_cache, v_cache: q's dtype; dense (batch, n_kv_heads, max_seqlen, head_dim) or, with
            ``block_table`` ((batch, max_blocks) int32), paged (num_blocks, block_size,
            n_kv_heads, head_dim); any strides.
        cache_seqlens: (batch,) int32 keys per row, contiguous.
        num_splits: splits of the keys, or None for :func:`num_splits_heuristic`.
    Returns:
        o: (batch, n_heads, seqlen_q, head_dim) in q's dtype, contiguous; and with ``want_lse``
        the (batch, n_heads, seqlen_q) fp32 natural log-sum-exp (-inf where no key is seen).
    """
    batch, n_heads, seqlen_q, head_dim = q.shape
    paged = block_table is not None
    n_kv_heads = k_cache.shape[2] if paged else k_cache.shape[1]
    capacity = cache_capacity(k_cache, block_table)
    device = q.device
    o = _runtime.empty(q.shape, dtype=q.dtype, device=device)
    if o.numel() == 0:
        return o, torch.full(q.shape[:3], float("-inf"), device=device) if want_lse else None
    _runtime.check_runnable(_decode_attn_kernel, "q", q)
    group_size = n_heads // n_kv_heads
    block_m = block_m_for(group_size, seqlen_q, q.dtype)
    row_blocks = triton.cdiv(group_size * seqlen_q, block_m)
    n_programs = batch * n_kv_heads * row_blocks
    if num_splits is None:
        num_splits = num_splits_heuristic(n_programs, capacity, _runtime.max_programs(device))
    if num_splits == 1:  # the final output straight from the decode kernel
        o_part, lse_part = o, _runtime.empty(q.shape[:3], dtype=torch.float32, device=device)
        o_strides = (*o.stride()[:3], 0, o.stride(3))
        lse_strides = (*lse_part.stride(), 0)
    else:
        part_shape = (batch, n_heads, seqlen_q, num_splits)
        o_part = _runtime.empty((*part_shape, head_dim), dtype=torch.float32, device=device)
        lse_part = _runtime.empty(part_shape, dtype=torch.float32, device=device)
        o_strides, lse_strides = o_part.stride(), lse_part.stride()

    unused = cache_seqlens
    _decode_attn[(n_programs, num_splits)](
        q, k_cache, v_cache, cache_seqlens, block_table if paged else unused, o_part, lse_part,
        *q.stride(), *cache_strides(k_cache, paged), *cache_strides(v_cache, paged),
        block_table.stride(0) if paged else 0, block_table.stride(1) if paged else 0,
        *o_strides, *lse_strides,
        n_kv_heads, group_size, seqlen_q, capacity, head_dim,
        k_cache.shape[1] if paged else 1, num_splits, scale * common.LOG2E,
        PAGED=paged,
        DOT_FP32=_runtime.is_interpreted(_decode_attn_kernel),
        IEEE=q.dtype == torch.float32,
        BF16_RNE=num_splits == 1
        and _runtime.software_bf16_rounding(_decode_attn_kernel, q.dtype),
        BLOCK_M=block_m,
        BLOCK_D=common.block_d(head_dim),
    )  # fmt: skip
    if num_splits == 1:
        return o, (lse_part * LN2 if want_lse else None)

    lse = _runtime.empty(q.shape[:3], dtype=torch.float32, device=device) if want_lse else None
    block_d = common.block_d(head_dim)
    _decode_combine_kernel[(batch * n_heads * seqlen_q,)](
        o_part, lse_part, o, lse if want_lse else lse_part,
        n_heads, seqlen_q, head_dim, num_splits,
        *o.stride(), *(lse.stride() if want_lse else (0, 0, 0)),
        HAS_LSE=want_lse,
        BF16_RNE=_runtime.software_bf16_rounding(_decode_combine_kernel, q.dtype),
        BLOCK_S=min(triton.next_power_of_2(num_splits), max(1, COMBINE_TILE // block_d)),
        BLOCK_D=block_d,
    )  # fmt: skip
    return o, lse
