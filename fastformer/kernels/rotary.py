"""Rotary position embeddings (RoPE) in Triton: q and k rotated in one launch, forward and backward.

Each feature pair (x1, x2) of a head is rotated by the angle ``position * inv_freq[j]``:

    out1 = s * (x1 * cos - x2 * sin)
    out2 = s * (x2 * cos + x1 * sin)        s = attention_scaling (YaRN's factor, else 1)

NeoX style ("rotate half", LLaMA, GPT-NeoX) pairs feature ``j`` with ``j + rotary_dim / 2``;
GPT-J style (``INTERLEAVED``) pairs ``2j`` with ``2j + 1``. Features from ``rotary_dim`` to
``head_dim`` are copied unchanged (partial rotary, as GPT-NeoX and GPT-J do).

Design:
- Angles are computed in the kernel from ``inv_freq`` (fp32, ``rotary_dim / 2`` values), not read
  from a cos/sin table. A table is cheaper per element (no sin/cos) but has a length: positions
  past it need a bounds check or a rebuild, and a cache keyed by length returns wrong angles
  when the offset changes (CASES R1, R2). In-kernel angles work for any position, cost no
  memory traffic beyond ``inv_freq``, and cost ``rotary_dim / 2`` sin/cos per token, shared by
  every head of q and k: the kernel stays memory-bound. The angle is ``float(position) *
  inv_freq`` in fp32, the product eager Hugging Face models form, whatever the dtype of q and k.
  Positions are exact in fp32 up to 2**24.
- One program per block of ``BLOCK_T`` tokens (one token for LLaMA-sized heads, more for small
  ones, so that each program holds a tile of about ``TILE_ELEMENTS`` columns): it computes its
  tokens' cos and sin once, then loops over q's heads and k's heads in tiles of ``BLOCK_H``
  heads, so any head counts (GQA) come in one launch. A head wider than ``2 * TILE_ELEMENTS``
  features is held whole all the same (correct, but it spills registers on a GPU).
- q and k are addressed through four strides each (batch, seq, head, dim) and so are the
  outputs: (B, S, H, D), (B, H, S, D), slices of a fused qkv buffer and other views are read in
  place without a copy. Batch, sequence and head offsets are int64; offsets inside a head are
  int32 (the launcher checks the span).
- Positions are ``seq + offset``, or ``position_ids[b, s] + offset`` with per-token ids (any
  strides, stride 0 to broadcast). Packed sequences pass per-token positions that restart at
  each boundary (:func:`packed_positions`, a sort-free search on the device, no host sync).
- GPT-J's interleaved pairs are loaded as one contiguous run of ``rotary_dim`` features and
  split in registers (``tl.split``), so both styles move 16 bytes per access on contiguous heads.
- In place when the output pointers are the inputs: every element is read by the program that
  writes it, before it writes it.
- Backward: the rotation is orthogonal, so the gradient is ``s * R(-angle) @ grad``: the same
  kernel with ``CONJUGATE`` (sin negated); the pass-through features pass their gradient on.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastformer.kernels import _runtime
from fastformer.kernels._jit import rounded_for_store

# Columns of one (tokens, heads, columns) tile a program holds at once: pairs for the rotation,
# features for the pass-through copy. Read off the sm_90 compile (bf16, LLaMA's head_dim 128,
# NeoX and GPT-J, 4 warps): with the 16-byte alignment Triton sees in contiguous tensors, 1024
# takes 48 registers a thread and moves 16 bytes per access (512: 8 bytes); without it (odd
# strides), 168 registers, still no spill.
TILE_ELEMENTS = 1024
NUM_WARPS = 4


@triton.jit
def _rotate_heads(
    x_ptr,  # (n_tokens, n_heads, head_dim) through its strides: one tensor's heads
    out_ptr,  # like x, out (x_ptr itself in place)
    x_tokens,  # (BLOCK_T,) int64 offsets of the block's tokens in x
    out_tokens,  # (BLOCK_T,) int64 offsets of the block's tokens in out
    mask_t,  # (BLOCK_T,) which tokens exist
    cos,  # (BLOCK_T, BLOCK_HALF) fp32, scaled by attention_scaling
    sin,  # (BLOCK_T, BLOCK_HALF) fp32, scaled, negated for the backward
    n_heads,
    rotary_half,
    head_dim,
    stride_x_head,
    stride_x_dim,
    stride_out_head,
    stride_out_dim,
    INTERLEAVED: tl.constexpr,
    COPY_PASS: tl.constexpr,
    BF16_RNE: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_HALF: tl.constexpr,
    BLOCK_PASS: tl.constexpr,
):
    """Rotate the first 2 * rotary_half features of every head of a block of tokens; copy the
    rest. Tiles are (BLOCK_T tokens, BLOCK_H heads, features)."""
    offs_j = tl.arange(0, BLOCK_HALF)
    mask_j = offs_j < rotary_half
    # GPT-J's pairs (2j, 2j + 1) are loaded as one contiguous run and split in registers.
    offs_pairs = tl.arange(0, 2 * BLOCK_HALF)
    mask_pairs = offs_pairs < 2 * rotary_half
    offs_p = 2 * rotary_half + tl.arange(0, BLOCK_PASS)
    mask_p = offs_p < head_dim
    out_dtype = out_ptr.dtype.element_ty
    cos = cos[:, None, :]
    sin = sin[:, None, :]

    for head_start in range(0, n_heads, BLOCK_H):
        offs_h = head_start + tl.arange(0, BLOCK_H).to(tl.int64)
        mask_th = mask_t[:, None] & (offs_h < n_heads)[None, :]  # (BLOCK_T, BLOCK_H)
        mask = mask_th[:, :, None] & mask_j[None, None, :]
        mask_2 = mask_th[:, :, None] & mask_pairs[None, None, :]
        x_heads = x_ptr + (x_tokens[:, None] + offs_h[None, :] * stride_x_head)[:, :, None]
        out_heads = out_ptr + (out_tokens[:, None] + offs_h[None, :] * stride_out_head)[:, :, None]

        if INTERLEAVED:
            x = tl.load(x_heads + offs_pairs[None, None, :] * stride_x_dim, mask=mask_2, other=0.0)
            x1, x2 = tl.split(tl.reshape(x, (BLOCK_T, BLOCK_H, BLOCK_HALF, 2)))
        else:
            x1 = tl.load(x_heads + offs_j[None, None, :] * stride_x_dim, mask=mask, other=0.0)
            x2_cols = (rotary_half + offs_j)[None, None, :]
            x2 = tl.load(x_heads + x2_cols * stride_x_dim, mask=mask, other=0.0)
        if COPY_PASS:
            mask_pass = mask_th[:, :, None] & mask_p[None, None, :]
            pass_cols = offs_p[None, None, :]
            x_pass = tl.load(x_heads + pass_cols * stride_x_dim, mask=mask_pass, other=0.0)

        x1 = x1.to(tl.float32)
        x2 = x2.to(tl.float32)
        out1 = x1 * cos - x2 * sin
        out2 = x2 * cos + x1 * sin

        out1 = rounded_for_store(out1, BF16_RNE).to(out_dtype)
        out2 = rounded_for_store(out2, BF16_RNE).to(out_dtype)
        if INTERLEAVED:
            out = tl.reshape(tl.join(out1, out2), (BLOCK_T, BLOCK_H, 2 * BLOCK_HALF))
            tl.store(out_heads + offs_pairs[None, None, :] * stride_out_dim, out, mask=mask_2)
        else:
            tl.store(out_heads + offs_j[None, None, :] * stride_out_dim, out1, mask=mask)
            out2_cols = (rotary_half + offs_j)[None, None, :]
            tl.store(out_heads + out2_cols * stride_out_dim, out2, mask=mask)
        if COPY_PASS:
            tl.store(out_heads + pass_cols * stride_out_dim, x_pass, mask=mask_pass)


@triton.jit
def _rotary_fwd_kernel(
    q_ptr,  # (batch, seqlen, n_heads_q, head_dim), through its strides
    k_ptr,  # (batch, seqlen, n_heads_k, head_dim)
    q_out_ptr,  # like q, out (q_ptr itself in place)
    k_out_ptr,  # like k, out (k_ptr itself in place)
    inv_freq_ptr,  # (rotary_half,) fp32
    pos_ptr,  # (batch, seqlen) integer position ids, or unused
    n_tokens,
    seqlen,
    n_heads_q,
    n_heads_k,
    head_dim,
    rotary_half,
    offset,
    attention_scaling,
    stride_q_batch,
    stride_q_seq,
    stride_q_head,
    stride_q_dim,
    stride_k_batch,
    stride_k_seq,
    stride_k_head,
    stride_k_dim,
    stride_q_out_batch,
    stride_q_out_seq,
    stride_q_out_head,
    stride_q_out_dim,
    stride_k_out_batch,
    stride_k_out_seq,
    stride_k_out_head,
    stride_k_out_dim,
    stride_inv_freq,
    stride_pos_batch,
    stride_pos_seq,
    HAS_POSITION_IDS: tl.constexpr,
    INTERLEAVED: tl.constexpr,
    CONJUGATE: tl.constexpr,
    COPY_PASS: tl.constexpr,
    BF16_RNE: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_HALF: tl.constexpr,
    BLOCK_PASS: tl.constexpr,
):
    """Rotate every head of q and k at BLOCK_T tokens (token = batch * seqlen + seq)."""
    pid = tl.program_id(0)
    offs_t = pid.to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T)
    mask_t = offs_t < n_tokens
    batch = offs_t // seqlen
    seq = offs_t % seqlen

    # The tokens' angles, once for all their heads: fp32 whatever the dtype of q and k.
    if HAS_POSITION_IDS:
        pos_offs = batch * stride_pos_batch + seq * stride_pos_seq
        position = tl.load(pos_ptr + pos_offs, mask=mask_t, other=0).to(tl.int64) + offset
    else:
        position = seq + offset
    offs_j = tl.arange(0, BLOCK_HALF)
    inv_freq = tl.load(inv_freq_ptr + offs_j * stride_inv_freq, mask=offs_j < rotary_half)
    angle = position.to(tl.float32)[:, None] * inv_freq[None, :]  # (BLOCK_T, BLOCK_HALF)
    cos = tl.cos(angle) * attention_scaling
    sin = tl.sin(angle) * attention_scaling
    if CONJUGATE:
        sin = -sin

    _rotate_heads(
        q_ptr,
        q_out_ptr,
        batch * stride_q_batch + seq * stride_q_seq,
        batch * stride_q_out_batch + seq * stride_q_out_seq,
        mask_t,
        cos,
        sin,
        n_heads_q,
        rotary_half,
        head_dim,
        stride_q_head,
        stride_q_dim,
        stride_q_out_head,
        stride_q_out_dim,
        INTERLEAVED,
        COPY_PASS,
        BF16_RNE,
        BLOCK_T,
        BLOCK_H,
        BLOCK_HALF,
        BLOCK_PASS,
    )
    _rotate_heads(
        k_ptr,
        k_out_ptr,
        batch * stride_k_batch + seq * stride_k_seq,
        batch * stride_k_out_batch + seq * stride_k_out_seq,
        mask_t,
        cos,
        sin,
        n_heads_k,
        rotary_half,
        head_dim,
        stride_k_head,
        stride_k_dim,
        stride_k_out_head,
        stride_k_out_dim,
        INTERLEAVED,
        COPY_PASS,
        BF16_RNE,
        BLOCK_T,
        BLOCK_H,
        BLOCK_HALF,
        BLOCK_PASS,
    )


def packed_positions(cu_seqlens: torch.Tensor, n_tokens: int) -> torch.Tensor:
    """(1, n_tokens) int64 positions of packed sequences: ``t - cu_seqlens[i]`` for token ``t``
    of sequence ``i``, restarting at 0 at every boundary (empty sequences take no tokens).

    Runs on the device without a host sync: ``searchsorted`` finds each token's sequence.
    """
    tokens = torch.arange(n_tokens, device=cu_seqlens.device, dtype=cu_seqlens.dtype)
    seq_index = torch.searchsorted(cu_seqlens, tokens, right=True) - 1
    return (tokens - cu_seqlens[seq_index]).to(torch.int64).unsqueeze(0)  # (1, T)


def _check_dim_span(name: str, tensor: torch.Tensor) -> None:
    span = (tensor.shape[3] - 1) * abs(tensor.stride(3)) if tensor.shape[3] else 0
    if span >= _runtime.INT32_LIMIT:
        raise _runtime.UnsupportedShape(
            f"{name}.stride()={tensor.stride()} spans {span} elements inside one head; "
            f"offsets inside a head must stay below {_runtime.INT32_LIMIT}",
            "a head spanning 2**31 elements or more",
        )


def tile_config(
    n_tokens: int, max_heads: int, rotary_half: int, n_pass: int
) -> tuple[int, int, int, int]:
    """(BLOCK_T, BLOCK_H, BLOCK_HALF, BLOCK_PASS) for ``n_pass`` copied features (0: none)."""
    block_half = triton.next_power_of_2(rotary_half)
    block_pass = triton.next_power_of_2(max(n_pass, 1))
    width = max(block_half, block_pass)  # the widest tile's columns
    block_h = max(1, min(triton.next_power_of_2(max_heads), TILE_ELEMENTS // width))
    # Small heads: several tokens per program, so that each program still holds a full tile.
    tokens_fit = max(1, TILE_ELEMENTS // (block_h * width))
    block_t = min(tokens_fit, triton.next_power_of_2(n_tokens))
    return block_t, block_h, block_half, block_pass


def rotary_fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    inv_freq: torch.Tensor,
    *,
    position_ids: torch.Tensor | None = None,
    offset: int = 0,
    interleaved: bool = False,
    attention_scaling: float = 1.0,
    conjugate: bool = False,
    q_out: torch.Tensor | None = None,
    k_out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate q and k by ``position * inv_freq`` (by its negative when ``conjugate``).

    Args:
        q: (batch, seqlen, n_heads_q, head_dim), fp32/fp16/bf16, any strides.
        k: (batch, seqlen, n_heads_k, head_dim), q's dtype, any strides.
        inv_freq: (rotary_dim / 2,) fp32, rotary_dim <= head_dim.
        position_ids: (batch, seqlen) integer tensor (stride 0 broadcasts), or None for
            ``seq``; ``offset`` is added either way.
        q_out, k_out: where to write, shaped like q and k (any strides); q and k themselves to
            rotate in place (then the pass-through features are not rewritten). None allocates
            new contiguous (batch, seqlen, heads, head_dim) tensors. In place means q_out is q
            and k_out is k (the same objects).
    Returns:
        (q_out, k_out).
    """
    batch, seqlen, n_heads_q, head_dim = q.shape
    n_heads_k = k.shape[2]
    assert position_ids is None or position_ids.shape == (batch, seqlen), position_ids.shape
    dtype, device = q.dtype, q.device
    if q_out is None:
        q_out = _runtime.empty(q.shape, dtype=dtype, device=device)
    if k_out is None:
        k_out = _runtime.empty(k.shape, dtype=dtype, device=device)
    n_tokens = batch * seqlen
    if n_tokens == 0 or n_heads_q + n_heads_k == 0 or head_dim == 0:
        return q_out, k_out
    _runtime.check_runnable(_rotary_fwd_kernel, "q", q)
    for name, tensor in (("q", q), ("k", k), ("q_out", q_out), ("k_out", k_out)):
        _check_dim_span(name, tensor)

    rotary_half = inv_freq.shape[0]
    in_place = q_out is q and k_out is k
    n_pass = head_dim - 2 * rotary_half
    copy_pass = n_pass > 0 and not in_place
    block_t, block_h, block_half, block_pass = tile_config(
        n_tokens, max(n_heads_q, n_heads_k), rotary_half, n_pass if copy_pass else 0
    )
    pos = position_ids if position_ids is not None else inv_freq
    _rotary_fwd_kernel[(triton.cdiv(n_tokens, block_t),)](
        q,
        k,
        q_out,
        k_out,
        inv_freq,
        pos,
        n_tokens,
        seqlen,
        n_heads_q,
        n_heads_k,
        head_dim,
        rotary_half,
        offset,
        float(attention_scaling),
        *q.stride(),
        *k.stride(),
        *q_out.stride(),
        *k_out.stride(),
        inv_freq.stride(0),
        pos.stride(0) if position_ids is not None else 0,
        pos.stride(1) if position_ids is not None else 0,
        HAS_POSITION_IDS=position_ids is not None,
        INTERLEAVED=interleaved,
        CONJUGATE=conjugate,
        COPY_PASS=copy_pass,
        BF16_RNE=_runtime.software_bf16_rounding(_rotary_fwd_kernel, dtype),
        BLOCK_T=block_t,
        BLOCK_H=block_h,
        BLOCK_HALF=block_half,
        BLOCK_PASS=block_pass,
        num_warps=NUM_WARPS,
    )
    return q_out, k_out
