"""Generation with a KV cache: decode attention and the in-place cache append.

    decode_attention(q, k_cache, v_cache, cache_seqlens, *, scale=None, num_splits=None,
                     block_table=None, return_lse=False, validate=True) -> out [, lse]
    kv_cache_append_(k_cache, v_cache, k_new, v_new, cache_seqlens, *, inv_freq=None,
                     interleaved=False, attention_scaling=1.0, new_seqlens=None,
                     block_table=None, validate=True) -> new cache_seqlens
    decode_positions(cache_seqlens, seqlen_new) -> (batch, seqlen_new) positions
    rotate_queries(q, inv_freq, cache_seqlens, *, interleaved=False, attention_scaling=1.0)

One step of one layer (q, k, v: the new tokens' projections, ``lengths``: tokens cached so far):

    q = rotate_queries(q, inv_freq, lengths)       # positions lengths[b] + t
    new_lengths = kv_cache_append_(k_cache, v_cache, k, v, lengths, inv_freq=inv_freq)
    out = decode_attention(q, k_cache, v_cache, new_lengths)

The append writes the new keys (rotated at the same positions) and values after each row's
cached tokens; the attention then sees them with the rest of the row.

Layouts: q (batch, n_heads, seqlen_q, head_dim) and k/v_new (batch, n_kv_heads, seqlen_new,
head_dim), SDPA's layout, any strides (a (batch, seq, heads, dim) projection seen through
``.transpose(1, 2)`` is read in place). The cache is dense, (batch, n_kv_heads, max_seqlen,
head_dim) preallocated, any strides; or paged, (num_blocks, block_size, n_kv_heads, head_dim)
with a ``block_table`` (batch, max_blocks) int32 naming the cache block that holds each row's
positions ``[i * block_size, (i + 1) * block_size)``. ``cache_seqlens`` is (batch,) int32 on the
cache's device: for the attention, the keys of each row INCLUDING the new queries' own; for the
append, each row's length before it. Rows have their own lengths.

Semantics of the attention: query ``i`` of row ``b`` sits at position ``cache_seqlens[b] -
seqlen_q + i`` and sees the keys at positions ``<=`` its own (bottom-right causal), so a row of
length 0, or a query before the first key, gives 0 (and a log-sum-exp of -inf). GQA/MQA: n_heads
a multiple of n_kv_heads. ``scale`` defaults to ``1 / sqrt(head_dim)``. ``num_splits`` (1 to
128) overrides the split-K heuristic of ``kernels/decode.py`` (results agree within rounding).

Gradients: decode is inference, but nothing is dropped silently. When grad mode is on and q,
k_cache or v_cache requires grad (dense cache or paged), the call routes to the differentiable
:func:`fastformer.scaled_dot_product_attention` with a boolean mask built from the lengths (the
paged cache gathered through the block table first): same result, slower, every gradient.
:func:`kv_cache_append_` writes in place and refuses inputs that require grad.

Checks, before any launch: shapes, dtypes (one float dtype for all, int32 lengths and block
table), devices; with ``validate=True`` (default) also the values of ``cache_seqlens``,
``new_seqlens`` and the used part of ``block_table``, read on the host (one device sync): a
row that would overflow the cache is refused with its index, length and the cache's size.
``validate=False`` skips that sync for loops that keep the lengths in range themselves; the
kernels then clamp every position to the cache's capacity, so a dense cache is never read or
written out of bounds (keys past the capacity are dropped); the entries of a block table are
then trusted as they are.
"""

from __future__ import annotations

import math

import torch

from fastformer import reference
from fastformer.functional import _checks, _fallback, _library, _overlap, _ranges
from fastformer.functional.attention import scaled_dot_product_attention
from fastformer.functional.rotary import apply_rotary
from fastformer.kernels import _runtime
from fastformer.kernels import attention_common as common
from fastformer.kernels.decode import MAX_SPLITS, decode_attention_fwd
from fastformer.kernels.kv_cache import cache_capacity, cache_seq_span, kv_append

DENSE_LAYOUT = "(batch, n_kv_heads, max_seqlen, head_dim)"
PAGED_LAYOUT = "(num_blocks, block_size, n_kv_heads, head_dim) with block_table"


def _check_int32(name: str, tensor, device: torch.device, dims: int) -> None:
    _checks.check_tensor(name, tensor)
    if tensor.dtype != torch.int32:
        raise TypeError(f"{name}.dtype={tensor.dtype}; expected torch.int32")
    if tensor.dim() != dims:
        raise ValueError(f"{name}.shape={tuple(tensor.shape)}; expected {dims} dims")
    if tensor.device != device:
        raise ValueError(f"{name} is on {tensor.device} but the cache is on {device}")


def _check_cache(k_cache, v_cache, block_table, batch: int):
    """(n_kv_heads, head_dim, capacity) of a dense or paged cache pair."""
    for name, cache in (("k_cache", k_cache), ("v_cache", v_cache)):
        _checks.check_tensor(name, cache)
        _checks.check_float_dtype(name, cache)
        if cache.dim() != 4:
            layout = PAGED_LAYOUT if block_table is not None else DENSE_LAYOUT
            raise ValueError(f"{name}.shape={tuple(cache.shape)}; expected {layout}")
    _checks.check_like("v_cache", v_cache, "k_cache", k_cache)
    for name, cache in (("k_cache", k_cache), ("v_cache", v_cache)):
        span = cache_seq_span(cache, block_table is not None)
        if span >= _runtime.INT32_LIMIT:
            raise _runtime.UnsupportedShape(
                f"{name}.stride()={cache.stride()}: positions of a row span {span} elements; "
                f"the decode kernel's offsets along a row must stay below {_runtime.INT32_LIMIT}",
                "a cache row spanning 2**31 elements or more",
            )
    if block_table is None:
        if k_cache.shape[0] != batch:
            raise ValueError(
                f"k_cache.shape={tuple(k_cache.shape)} has batch {k_cache.shape[0]}; "
                f"expected {batch} (one cache row per sequence)"
            )
        return k_cache.shape[1], k_cache.shape[3], k_cache.shape[2]
    _check_int32("block_table", block_table, k_cache.device, 2)
    if block_table.shape[0] != batch:
        raise ValueError(
            f"block_table.shape={tuple(block_table.shape)}; expected ({batch}, max_blocks)"
        )
    return k_cache.shape[2], k_cache.shape[3], cache_capacity(k_cache, block_table)


def _check_lengths(cache_seqlens, batch: int, device: torch.device) -> None:
    _check_int32("cache_seqlens", cache_seqlens, device, 1)
    if cache_seqlens.shape[0] != batch:
        raise ValueError(f"cache_seqlens.shape={tuple(cache_seqlens.shape)}; expected ({batch},)")


def _validate_values(cache_seqlens, added, capacity: int, k_cache, block_table, what: str):
    """Refuse (one host sync) lengths below 0, rows whose ``length + added`` passes the cache's
    capacity, and block-table entries outside the cache among the blocks those rows use."""
    lengths = cache_seqlens.tolist()
    added = added.tolist() if isinstance(added, torch.Tensor) else [added] * len(lengths)
    for b, (length, extra) in enumerate(zip(lengths, added, strict=True)):
        if length < 0:
            raise ValueError(f"cache_seqlens[{b}]={length}; lengths must be >= 0")
        if length + extra > capacity:
            raise ValueError(
                f"{what} row {b}: length {length}{f' + {extra} new tokens' if extra else ''} "
                f"= {length + extra} exceeds the cache's {capacity} positions per row"
            )
    if block_table is None:
        return
    block_size, num_blocks = k_cache.shape[1], k_cache.shape[0]
    for b, row in enumerate(block_table.tolist()):
        used = -(-(lengths[b] + added[b]) // block_size)
        bad = [entry for entry in row[:used] if not 0 <= entry < num_blocks]
        if bad:
            raise ValueError(
                f"block_table[{b}] holds block {bad[0]} among the {used} blocks row {b} uses; "
                f"k_cache has {num_blocks} blocks"
            )


def _check_flag(name: str, value) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name}={value!r} must be a bool")


def _check_num_splits(num_splits) -> int | None:
    if num_splits is None:
        return None
    if isinstance(num_splits, bool) or not isinstance(num_splits, int):
        raise TypeError(f"num_splits={num_splits!r} must be an int or None")
    if not 1 <= num_splits <= MAX_SPLITS:
        raise ValueError(f"num_splits={num_splits}; expected 1 to {MAX_SPLITS}")
    return num_splits


def _check_scale(scale, head_dim: int) -> float:
    if scale is None:
        return 1.0 / math.sqrt(head_dim)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ValueError(f"scale={scale!r}; expected a finite float")
    return float(scale)


def _check_4d(name: str, tensor, axes: str) -> None:
    _checks.check_tensor(name, tensor)
    if tensor.dim() != 4:
        raise ValueError(f"{name}.shape={tuple(tensor.shape)}; expected {axes}")


def _check_query(q, k_cache, n_kv_heads: int, head_dim: int) -> None:
    _checks.check_float_dtype("q", q)
    if q.device != k_cache.device:
        raise ValueError(f"q is on {q.device} but k_cache is on {k_cache.device}")
    if q.dtype != k_cache.dtype:
        raise TypeError(f"q.dtype={q.dtype} must equal k_cache.dtype={k_cache.dtype}")
    if q.shape[3] != head_dim:
        raise ValueError(f"q head_dim={q.shape[3]} must equal the cache's head_dim={head_dim}")
    if head_dim < 1:
        raise ValueError(f"head_dim={head_dim}; expected at least 1")
    if head_dim > common.MAX_HEAD_DIM:
        raise _runtime.UnsupportedShape(
            f"head_dim={head_dim}; at most {common.MAX_HEAD_DIM}",
            f"head_dim above {common.MAX_HEAD_DIM}",
        )
    if n_kv_heads == 0 or q.shape[1] % n_kv_heads:
        raise ValueError(
            f"q has {q.shape[1]} heads; expected a multiple of the cache's {n_kv_heads} KV heads"
        )


def _length_mask(cache_seqlens, seqlen_q: int, capacity: int) -> torch.Tensor:
    """(batch, 1, seqlen_q, capacity) bool: key j is seen by query i of row b when j < len_b
    and j <= len_b - seqlen_q + i, with len_b clamped to [0, capacity] as the kernels clamp
    it (lengths past the cache reach here only with ``validate=False``)."""
    lengths = cache_seqlens.long().clamp(0, capacity)[:, None, None, None]
    keys = torch.arange(capacity, device=cache_seqlens.device)
    queries = torch.arange(seqlen_q, device=cache_seqlens.device)[:, None]
    return (keys < lengths) & (keys <= lengths - seqlen_q + queries)


def _differentiable(q, k_cache, v_cache, cache_seqlens, block_table, scale, return_lse):
    """Decode attention through the differentiable attention op (a length mask)."""
    if block_table is not None:  # gather the pages: (batch, heads, max_blocks * block_size, dim)
        # Entries past a row's length are never validated (sentinels such as -1 or a large
        # number are common): clamped into the cache, the positions they give are masked.
        pages = block_table.long().clamp(0, k_cache.shape[0] - 1)
        pages_k, pages_v = k_cache[pages], v_cache[pages]
        k_cache, v_cache = (
            p.flatten(1, 2).transpose(1, 2) for p in (pages_k, pages_v)
        )  # (B, H_kv, S, D)
    mask = _length_mask(cache_seqlens, q.shape[2], k_cache.shape[2])
    return scaled_dot_product_attention(
        q, k_cache, v_cache, attn_mask=mask, scale=scale, enable_gqa=True, return_lse=return_lse
    )


@_library.kernel_op("decode_attention")
def _decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cache_seqlens: torch.Tensor,
    block_table: torch.Tensor | None,
    scale: float,
    num_splits: int | None,
    want_lse: bool,
    validate: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, lse); lse is empty unless ``want_lse``. With ``validate``, the lengths and block
    table are checked on the host (one sync) before the launch."""
    if validate:
        capacity = cache_capacity(k_cache, block_table)
        _validate_values(cache_seqlens, 0, capacity, k_cache, block_table, "decode_attention")
    out, lse = decode_attention_fwd(
        q, k_cache, v_cache, cache_seqlens.contiguous(), scale=scale, num_splits=num_splits,
        block_table=block_table, want_lse=want_lse,
    )  # fmt: skip
    return out, lse if lse is not None else _library.nothing(q, torch.float32)


@_decode_attention.register_fake
def _(q, k_cache, v_cache, cache_seqlens, block_table, scale, num_splits, want_lse, validate):
    lse = q.new_empty(q.shape[:3], dtype=torch.float32)
    return q.new_empty(q.shape), lse if want_lse else _library.nothing(q, torch.float32)


@_fallback.falls_back_to(reference.decode_attention)
@_ranges.named_op("decode_attention")
def decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cache_seqlens: torch.Tensor,
    *,
    scale: float | None = None,
    num_splits: int | None = None,
    block_table: torch.Tensor | None = None,
    return_lse: bool = False,
    validate: bool = True,
):
    """Attention of a few new queries per row over a KV cache; see the module docstring.

    Args:
        q: (batch, n_heads, seqlen_q, head_dim), fp32/fp16/bf16, any strides; seqlen_q is
            meant to be small (1 to ~16 new tokens; longer prompts: scaled_dot_product_attention
            with ``causal_alignment="bottom_right"``).
        k_cache, v_cache: q's dtype and device; dense (batch, n_kv_heads, max_seqlen, head_dim)
            or paged (num_blocks, block_size, n_kv_heads, head_dim) with ``block_table``.
        cache_seqlens: (batch,) int32: keys per row, the new queries' included.
        scale: defaults to 1 / sqrt(head_dim). num_splits: None (heuristic) or 1 to 128.
        block_table: (batch, max_blocks) int32, paged cache only.
        return_lse: also return the (batch, n_heads, seqlen_q) fp32 natural log-sum-exp.
        validate: read the lengths (and block table) on the host to refuse bad values.
    Returns:
        (batch, n_heads, seqlen_q, head_dim) in q's dtype (new tensor); with ``return_lse``
        also the log-sum-exp (-inf for queries that see no key).
    """
    _check_4d("q", q, "(batch, n_heads, seqlen_q, head_dim)")
    batch = q.shape[0]
    n_kv_heads, head_dim, capacity = _check_cache(k_cache, v_cache, block_table, batch)
    _check_query(q, k_cache, n_kv_heads, head_dim)
    _check_lengths(cache_seqlens, batch, q.device)
    scale = _check_scale(scale, head_dim)
    num_splits = _check_num_splits(num_splits)
    _check_flag("return_lse", return_lse)
    _check_flag("validate", validate)
    needs_grad = any(t.requires_grad for t in (q, k_cache, v_cache))
    if torch.is_grad_enabled() and needs_grad:
        if validate:
            _validate_values(cache_seqlens, 0, capacity, k_cache, block_table, "decode_attention")
        return _differentiable(q, k_cache, v_cache, cache_seqlens, block_table, scale, return_lse)
    out, lse = _decode_attention(
        q, k_cache, v_cache, cache_seqlens, block_table, scale, num_splits, return_lse, validate
    )
    return (out, lse) if return_lse else out


def decode_positions(cache_seqlens: torch.Tensor, seqlen_new: int) -> torch.Tensor:
    """(batch, seqlen_new) int64 positions of new tokens: ``cache_seqlens[b] + t`` (lengths
    before the append); the ``position_ids`` for :func:`fastformer.apply_rotary`."""
    _checks.check_tensor("cache_seqlens", cache_seqlens)
    if cache_seqlens.dtype not in (torch.int32, torch.int64) or cache_seqlens.dim() != 1:
        raise TypeError(
            f"cache_seqlens must be a 1-D int32 tensor, got {cache_seqlens.dtype} of shape "
            f"{tuple(cache_seqlens.shape)}"
        )
    steps = torch.arange(seqlen_new, device=cache_seqlens.device)
    return cache_seqlens.long()[:, None] + steps  # (B, S_new)


def rotate_queries(
    q: torch.Tensor,
    inv_freq: torch.Tensor,
    cache_seqlens: torch.Tensor,
    *,
    interleaved: bool = False,
    attention_scaling: float = 1.0,
) -> torch.Tensor:
    """q (batch, n_heads, seqlen_new, head_dim) rotated at positions ``cache_seqlens[b] + t``
    (lengths before the append), as :func:`kv_cache_append_` rotates the keys; a new tensor,
    differentiable (it is :func:`fastformer.apply_rotary` with those ``position_ids``)."""
    _checks.check_tensor("q", q)
    if q.dim() != 4:
        raise ValueError(f"q.shape={tuple(q.shape)}; expected (batch, n_heads, seqlen, head_dim)")
    _checks.check_tensor("cache_seqlens", cache_seqlens)
    if cache_seqlens.device != q.device:
        raise ValueError(f"cache_seqlens is on {cache_seqlens.device} but q is on {q.device}")
    positions = decode_positions(cache_seqlens, q.shape[2])
    if positions.shape[0] != q.shape[0]:
        raise ValueError(
            f"cache_seqlens.shape={tuple(cache_seqlens.shape)}; expected ({q.shape[0]},)"
        )
    no_heads = q[:, :0]  # (batch, 0, seqlen, head_dim): rotate q alone in the same launch
    q_rot, _ = apply_rotary(
        q, no_heads, inv_freq, position_ids=positions, interleaved=interleaved, layout="bhsd",
        attention_scaling=attention_scaling,
    )  # fmt: skip
    return q_rot


def _check_new(k_new, v_new, k_cache, v_cache, n_kv_heads: int, head_dim: int) -> None:
    for name, new in (("k_new", k_new), ("v_new", v_new)):
        if new.device != k_cache.device:
            raise ValueError(f"{name} is on {new.device} but k_cache is on {k_cache.device}")
        if new.dtype != k_cache.dtype:
            raise TypeError(f"{name}.dtype={new.dtype} must equal k_cache.dtype={k_cache.dtype}")
        if new.shape[1] != n_kv_heads or new.shape[3] != head_dim:
            raise ValueError(
                f"{name}.shape={tuple(new.shape)} has {new.shape[1]} heads of {new.shape[3]} "
                f"features; the cache has {n_kv_heads} heads of {head_dim}"
            )
    if v_new.shape != k_new.shape:
        raise ValueError(
            f"v_new.shape={tuple(v_new.shape)} must equal k_new.shape={tuple(k_new.shape)}"
        )
    if not torch.is_grad_enabled():
        return
    for name, tensor in (
        ("k_cache", k_cache),
        ("v_cache", v_cache),
        ("k_new", k_new),
        ("v_new", v_new),
    ):
        if tensor.requires_grad:
            raise ValueError(
                f"{name} requires grad: kv_cache_append_ writes the cache in place and passes "
                "no gradient through it; run generation under torch.no_grad() or "
                "torch.inference_mode(), or detach"
            )


def _check_writable(k_cache, v_cache) -> None:
    """The append writes each cache element once: none may be shared (an expanded cache, or
    k_cache and v_cache overlapping), or rows would overwrite each other (race on a GPU)."""
    for name, cache in (("k_cache", k_cache), ("v_cache", v_cache)):
        if _overlap.shares_within(cache):
            raise ValueError(
                f"{name} (shape={tuple(cache.shape)}, stride={cache.stride()}) has elements "
                "that share memory (an expanded or overlapping view); kv_cache_append_ writes "
                "it in place: pass a cache with one element per position"
            )
    if _overlap.shares_between(k_cache, v_cache):
        raise ValueError(
            "k_cache and v_cache share memory; kv_cache_append_ writes both in place: pass "
            "distinct caches"
        )


def _check_rotary(inv_freq, k_cache, head_dim: int, attention_scaling) -> float:
    if inv_freq is None:
        return 1.0
    _checks.check_tensor("inv_freq", inv_freq)
    if inv_freq.device != k_cache.device:
        raise ValueError(f"inv_freq is on {inv_freq.device} but k_cache is on {k_cache.device}")
    if inv_freq.dtype != torch.float32:
        raise TypeError(f"inv_freq.dtype={inv_freq.dtype}; expected torch.float32")
    if inv_freq.dim() != 1 or not 1 <= inv_freq.numel() <= head_dim // 2:
        raise ValueError(
            f"inv_freq.shape={tuple(inv_freq.shape)}; expected (rotary_dim // 2,) with "
            f"2 <= rotary_dim <= head_dim={head_dim}"
        )
    if isinstance(attention_scaling, bool) or not isinstance(attention_scaling, (int, float)):
        raise TypeError(f"attention_scaling must be a real number, got {attention_scaling!r}")
    if not math.isfinite(attention_scaling):
        raise ValueError(f"attention_scaling={attention_scaling} must be finite")
    return float(attention_scaling)


@_library.kernel_op("kv_cache_append", mutates_args=("k_cache", "v_cache"))
def _kv_cache_append(
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    k_new: torch.Tensor,
    v_new: torch.Tensor,
    cache_seqlens: torch.Tensor,
    new_seqlens: torch.Tensor | None,
    block_table: torch.Tensor | None,
    inv_freq: torch.Tensor | None,
    interleaved: bool,
    attention_scaling: float,
    validate: bool,
) -> None:
    """The append, in place; with ``validate``, the lengths (and block table) are checked on
    the host (one sync) before the launch."""
    if validate:
        _check_writable(k_cache, v_cache)
        seqlen_new = k_new.shape[2]
        if new_seqlens is not None:
            counts = new_seqlens.tolist()
            bad = [b for b, n in enumerate(counts) if not 0 <= n <= seqlen_new]
            if bad:
                raise ValueError(
                    f"new_seqlens[{bad[0]}]={counts[bad[0]]}; expected 0 to seqlen_new={seqlen_new}"
                )
        added = new_seqlens if new_seqlens is not None else seqlen_new
        capacity = cache_capacity(k_cache, block_table)
        _validate_values(cache_seqlens, added, capacity, k_cache, block_table, "kv_cache_append_")
    kv_append(
        k_cache, v_cache, k_new, v_new, cache_seqlens.contiguous(),
        new_seqlens=None if new_seqlens is None else new_seqlens.contiguous(),
        block_table=block_table, inv_freq=inv_freq, interleaved=interleaved,
        attention_scaling=attention_scaling,
    )  # fmt: skip


@_kv_cache_append.register_fake
def _(*_):
    return None


@_fallback.falls_back_to(reference.kv_cache_append_)
@_ranges.named_op("kv_cache_append_")
def kv_cache_append_(
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    k_new: torch.Tensor,
    v_new: torch.Tensor,
    cache_seqlens: torch.Tensor,
    *,
    inv_freq: torch.Tensor | None = None,
    interleaved: bool = False,
    attention_scaling: float = 1.0,
    new_seqlens: torch.Tensor | None = None,
    block_table: torch.Tensor | None = None,
    validate: bool = True,
) -> torch.Tensor:
    """Write new keys and values after each row's cached tokens, IN PLACE, in one launch.

    Token ``t`` of row ``b`` goes to position ``cache_seqlens[b] + t``; with ``inv_freq`` its
    key is rotated there first (NeoX pairs, or GPT-J's with ``interleaved=True``; the first
    ``2 * len(inv_freq)`` features rotated, the rest copied; cos and sin times
    ``attention_scaling``), exactly as :func:`fastformer.apply_rotary` with those positions.

    Args:
        k_cache, v_cache: dense (batch, n_kv_heads, max_seqlen, head_dim) or paged
            (num_blocks, block_size, n_kv_heads, head_dim) with ``block_table``; written in
            place; fp32/fp16/bf16; any strides.
        k_new, v_new: (batch, n_kv_heads, seqlen_new, head_dim), the caches' dtype and device.
        cache_seqlens: (batch,) int32 lengths before the append (not modified).
        inv_freq: (rotary_dim // 2,) fp32, or None for no rotation.
        new_seqlens: (batch,) int32, how many of the seqlen_new tokens of each row are real
            (right-padded prompts); None: all of them.
        block_table: (batch, max_blocks) int32, paged cache only.
        validate: refuse overflowing rows before the launch (one host sync), and caches
            whose elements are shared (expanded or overlapping views, k_cache and v_cache in
            one another).
    Returns:
        The new lengths, ``cache_seqlens + new tokens`` ((batch,) int32, a new tensor).
    """
    for name, new in (("k_new", k_new), ("v_new", v_new)):
        _check_4d(name, new, "(batch, n_kv_heads, seqlen_new, head_dim)")
    batch = k_new.shape[0]
    n_kv_heads, head_dim, capacity = _check_cache(k_cache, v_cache, block_table, batch)
    _check_new(k_new, v_new, k_cache, v_cache, n_kv_heads, head_dim)
    _check_flag("validate", validate)
    _check_lengths(cache_seqlens, batch, k_cache.device)
    attention_scaling = _check_rotary(inv_freq, k_cache, head_dim, attention_scaling)
    _check_flag("interleaved", interleaved)
    seqlen_new = k_new.shape[2]
    added = seqlen_new
    if new_seqlens is not None:
        _check_int32("new_seqlens", new_seqlens, k_cache.device, 1)
        if new_seqlens.shape[0] != batch:
            raise ValueError(f"new_seqlens.shape={tuple(new_seqlens.shape)}; expected ({batch},)")
        added = new_seqlens
    _kv_cache_append(
        k_cache, v_cache, k_new.detach(), v_new.detach(), cache_seqlens, new_seqlens,
        block_table, inv_freq, interleaved, attention_scaling, validate,
    )  # fmt: skip
    return cache_seqlens + added
