"""``scaled_dot_product_attention``: a drop-in for torch's on fastformer's fused kernels.

Same layout ``(batch, heads, seq, head_dim)`` (or ``(heads, seq, head_dim)``) and semantics as
``torch.nn.functional.scaled_dot_product_attention``: a boolean mask means True = take part, a
float mask is added to the scores, ``is_causal`` with ``seqlen_q != seqlen_k`` is aligned top-left
(query i sees keys j <= i), GQA needs ``enable_gqa=True``. Where SDPA would give NaN (a row that
sees no key), the output is 0 and every gradient finite. Any strides are read in place.

Extras: ``causal_alignment="bottom_right"`` (query i sees keys j <= i + seqlen_k - seqlen_q, what
a KV-cache prefill needs), ``window=(left, right)`` (a sliding window around the aligned
diagonal, -1 for an unbounded side; combines with ``is_causal``), ``return_lse=True`` (also
return the natural log-sum-exp of each row, -inf where a row sees no key), packed sequences
(``cu_seqlens_q``/``cu_seqlens_k``, see :func:`varlen_attention`), and ``is_causal`` combined
with a mask.

Dropout draws its seed from torch's default generator (``torch.manual_seed`` reproduces it;
each call draws a new one); ``fastformer.kernels.attention_common.dropout_mask`` rebuilds the
mask a call used, and the backward uses that same mask.

A float mask that requires grad (a trainable position bias) gets its gradient; that costs a
(batch, heads, seqlen_q, seqlen_k) fp32 buffer in the backward.

Not supported yet, each a clear error: a value head_dim different from the query/key one,
head_dim above 256, a mask with packed sequences.
"""

from __future__ import annotations

import math
import operator

import torch

from fastformer import reference
from fastformer.functional import _autograd, _checks, _fallback, _library, _ranges
from fastformer.kernels import _runtime
from fastformer.kernels import attention_common as common
from fastformer.kernels.attention_bwd import attention_bwd
from fastformer.kernels.attention_fwd import attention_fwd, default_scale, keeps_fp32_output

ALIGNMENTS = ("top_left", "bottom_right")
# Dropout seeds are drawn below this (Philox takes a 64-bit key; torch.randint a signed int64).
MAX_SEED = 2**62


def _longest(cu_seqlens: torch.Tensor) -> int:
    """The longest sequence of checked offsets (one host read)."""
    return int((cu_seqlens[1:] - cu_seqlens[:-1]).max()) if cu_seqlens.numel() > 1 else 0


def _problem(q, k, cu_q, cu_k, max_q, max_k, checked: bool = False) -> common.Problem:
    """The call as the kernels see it. Packed offsets are checked here, on the host (one sync),
    so that a bad one is refused, not obeyed; ``checked`` (the backward, whose forward checked
    them) skips that, and the sync too when the longest lengths are given."""
    if cu_q is None:
        return common.Problem(*q.shape[:2], k.shape[1], q.shape[2], k.shape[2], q.shape[3])
    if checked:
        max_q = max_q if max_q is not None else _longest(cu_q)
        max_k = max_k if max_k is not None else _longest(cu_k)
        cu_q, cu_k = (cu.to(torch.int32).contiguous() for cu in (cu_q, cu_k))
    else:
        cu_q, max_q = _check_offsets("cu_seqlens_q", cu_q, q.shape[0], max_q)
        cu_k, max_k = _check_offsets("cu_seqlens_k", cu_k, k.shape[0], max_k)
        if cu_q.numel() != cu_k.numel():
            raise ValueError(
                f"cu_seqlens_q has {cu_q.numel()} offsets but cu_seqlens_k has {cu_k.numel()}; "
                "expected one per sequence boundary in both"
            )
    return common.Problem(cu_q.numel() - 1, q.shape[1], k.shape[1], max_q, max_k, q.shape[2],
                          cu_q, cu_k)  # fmt: skip


def _kernel_options(seed, mask_kind, scale, is_causal, bottom_right, dropout_p, window) -> dict:
    """What the kernels need besides the tensors, for the forward and again the backward."""
    return dict(
        mask_kind=mask_kind,
        scale=scale,
        is_causal=is_causal,
        bottom_right=bottom_right,
        dropout_p=dropout_p,
        seed=int(seed.item()) if seed is not None else 0,
        window=tuple(window) if window else None,
    )


@_library.kernel_op("attention_fwd")
def _attention_fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    cu_seqlens_q: torch.Tensor | None,
    cu_seqlens_k: torch.Tensor | None,
    max_seqlen_q: int | None,
    max_seqlen_k: int | None,
    seed: torch.Tensor | None,
    mask_kind: int,
    scale: float,
    is_causal: bool,
    bottom_right: bool,
    dropout_p: float,
    window: list[int],
    for_backward: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(o, m, log2l, o32): the output, the base-2 row statistics (lse = m + log2l), and, for a
    backward with dropout in fp16/bf16, the output in fp32 (else empty). ``seed``: a
    one-element int64 tensor when ``dropout_p > 0``; ``window``: [left, right] or []."""
    problem = _problem(q, k, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k)
    options = _kernel_options(seed, mask_kind, scale, is_causal, bottom_right, dropout_p, window)
    o, m, log2l, o32 = attention_fwd(
        q, k, v, problem, mask=mask, for_backward=for_backward, **options
    )
    return o, m, log2l, o32 if o32 is not None else _library.nothing(m)


@_attention_fwd.register_fake
def _(q, k, v, mask, cu_seqlens_q, *args):
    packed = cu_seqlens_q is not None
    stats_shape = (q.shape[0], q.shape[1]) if packed else q.shape[:3]
    stats = q.new_empty(stats_shape, dtype=torch.float32)
    dropout_p, for_backward = args[-3], args[-1]
    o32_shape = q.shape if keeps_fp32_output(q.dtype, dropout_p, for_backward) else (0,)
    return q.new_empty(q.shape), stats, stats.clone(), q.new_empty(o32_shape, dtype=torch.float32)


@_library.kernel_op("attention_bwd")
def _attention_bwd(
    do: torch.Tensor,
    dlse: torch.Tensor | None,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    o: torch.Tensor,
    m: torch.Tensor,
    log2l: torch.Tensor,
    mask: torch.Tensor | None,
    cu_seqlens_q: torch.Tensor | None,
    cu_seqlens_k: torch.Tensor | None,
    max_seqlen_q: int | None,
    max_seqlen_k: int | None,
    seed: torch.Tensor | None,
    mask_kind: int,
    scale: float,
    is_causal: bool,
    bottom_right: bool,
    dropout_p: float,
    window: list[int],
    mask_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv, dmask); dmask is empty unless ``mask_grad``."""
    problem = _problem(q, k, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, True)
    options = _kernel_options(seed, mask_kind, scale, is_causal, bottom_right, dropout_p, window)
    dq, dk, dv, dmask = attention_bwd(
        do, q, k, v, o, m, log2l, problem, mask=mask, mask_grad=mask_grad, dlse=dlse, **options
    )
    return dq, dk, dv, dmask if dmask is not None else _library.nothing(m)


@_attention_bwd.register_fake
def _(do, dlse, q, k, v, o, m, log2l, mask, *args):
    mask_grad = args[-1]
    dmask = mask.new_empty(mask.shape) if mask_grad else _library.nothing(m)
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape), dmask


def _setup_context(ctx, inputs, output):
    q, k, v, mask, cu_q, cu_k, max_q, max_k, seed, *options, _for_backward = inputs
    o, m, log2l, o32 = output
    # The backward reads o only for delta = rowsum(dO * O): the fp32 copy when there is one.
    o_for_delta = o32 if o32.numel() else o
    ctx.save_for_backward(q, k, v, o_for_delta, m, log2l, mask, cu_q, cu_k, seed)
    ctx.max_seqlens, ctx.options = (max_q, max_k), options
    ctx.mark_non_differentiable(m, o32)  # the log-sum-exp's gradient arrives on log2l
    ctx.set_materialize_grads(False)


def _backward(ctx, do, _dm, dlog2l, _do32):
    _autograd.refuse_double_backward("attention")
    q, k, v, o, m, log2l, mask, cu_q, cu_k, seed = ctx.saved_tensors
    if do is None:
        do = torch.zeros_like(q)
    mask_grad = ctx.needs_input_grad[3]
    dq, dk, dv, dmask = _attention_bwd(
        do, dlog2l, q, k, v, o, m, log2l, mask, cu_q, cu_k, *ctx.max_seqlens, seed, *ctx.options,
        mask_grad,
    )  # fmt: skip
    return (dq, dk, dv, dmask if mask_grad else None, *[None] * 12)


_attention_fwd.register_autograd(_backward, setup_context=_setup_context)


def _seed() -> torch.Tensor:
    """A dropout seed from torch's default generator, as a tensor the kernel op reads when it
    runs (no host sync while tracing): ``torch.manual_seed`` reproduces it, and every call
    draws a new one."""
    return torch.randint(0, MAX_SEED, (1,))


def draw_seed() -> int:
    """The seed a call with dropout draws, as an int: after the same ``torch.manual_seed``,
    ``attention_common.dropout_mask(draw_seed(), ...)`` rebuilds the mask that call used."""
    return int(_seed().item())


def _attend(q, k, v, mask, cu_seqlens, max_seqlens, mask_kind, scale, is_causal,
            causal_alignment, dropout_p, window, return_lse):  # fmt: skip
    """One kernel call; the output, and with ``return_lse`` the natural log-sum-exp."""
    seed = _seed() if dropout_p > 0 else None
    inputs = (q, k, v, mask)
    for_backward = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in inputs
    )
    o, m, log2l, _ = _attention_fwd(
        q, k, v, mask, *cu_seqlens, *max_seqlens, seed, mask_kind, scale, bool(is_causal),
        causal_alignment == "bottom_right", dropout_p, list(window) if window else [],
        for_backward,
    )  # fmt: skip
    if not return_lse:  # no extra pass over the statistics when nobody asked for them
        return o, None
    lse = torch.where(torch.isinf(m), m, m + log2l)  # base 2; +inf: the row saw no key
    return o, _natural_lse(lse)


def _check_qkv(q, k, v) -> None:
    for name, tensor in (("q", q), ("k", k), ("v", v)):
        _checks.check_tensor(name, tensor)
        _checks.check_float_dtype(name, tensor)
        if tensor.dim() != 4:
            raise ValueError(
                f"{name}.shape={tuple(tensor.shape)}; expected (batch, heads, seq, head_dim)"
            )
    for name, tensor in (("k", k), ("v", v)):
        if tensor.device != q.device:
            raise ValueError(f"{name} is on {tensor.device} but q is on {q.device}")
        if tensor.dtype != q.dtype:
            raise TypeError(f"{name}.dtype={tensor.dtype} must equal q.dtype={q.dtype}")
    if k.shape[:3] != v.shape[:3] or q.shape[0] != k.shape[0]:
        raise ValueError(
            f"q.shape={tuple(q.shape)}, k.shape={tuple(k.shape)}, v.shape={tuple(v.shape)}: "
            "batch must match, and k and v must share batch, heads and seq"
        )
    head_dim = q.shape[-1]
    if k.shape[-1] != head_dim:
        raise ValueError(f"k head_dim={k.shape[-1]} must equal q head_dim={head_dim}")
    if v.shape[-1] != head_dim:
        raise _runtime.UnsupportedShape(
            f"v head_dim={v.shape[-1]} differs from q/k head_dim={head_dim}; not supported",
            "a value head_dim different from the query/key one",
        )
    if head_dim < 1:
        raise ValueError(f"head_dim={head_dim}; expected at least 1")
    if head_dim > common.MAX_HEAD_DIM:
        raise _runtime.UnsupportedShape(
            f"head_dim={head_dim}; at most {common.MAX_HEAD_DIM}",
            f"head_dim above {common.MAX_HEAD_DIM}",
        )


def _check_heads(q, k, enable_gqa: bool) -> None:
    n_heads, n_kv_heads = q.shape[1], k.shape[1]
    if n_heads == n_kv_heads:
        return
    if not enable_gqa:
        raise ValueError(
            f"q has {n_heads} heads but k and v have {n_kv_heads}; pass enable_gqa=True for GQA"
        )
    if n_kv_heads == 0 or n_heads % n_kv_heads:
        raise ValueError(f"q heads={n_heads} must be a multiple of k/v heads={n_kv_heads}")


def _check_mask(mask, q, k) -> int:
    if mask is None:
        return common.MASK_NONE
    _checks.check_tensor("attn_mask", mask)
    if mask.device != q.device:
        raise ValueError(f"attn_mask is on {mask.device} but q is on {q.device}")
    target = (q.shape[0], q.shape[1], q.shape[2], k.shape[2])
    try:
        torch.broadcast_shapes(mask.shape, target)
        fits = mask.dim() <= 4 and torch.broadcast_shapes(mask.shape, target) == target
    except RuntimeError:
        fits = False
    if not fits:
        raise ValueError(
            f"attn_mask.shape={tuple(mask.shape)} does not broadcast to "
            f"(batch, heads, seqlen_q, seqlen_k)={target}"
        )
    if mask.dtype == torch.bool:
        return common.MASK_BOOL
    if mask.dtype not in (q.dtype, torch.float32):
        raise TypeError(
            f"attn_mask.dtype={mask.dtype}; expected torch.bool, q's dtype ({q.dtype}) or float32"
        )
    return common.MASK_FLOAT


def _check_flag(name: str, value) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name}={value!r} must be a bool")


def _check_options(causal_alignment, scale, head_dim: int) -> float:
    if causal_alignment not in ALIGNMENTS:
        raise ValueError(f"causal_alignment={causal_alignment!r}; expected one of {ALIGNMENTS}")
    if scale is None:
        return default_scale(head_dim)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ValueError(f"scale={scale!r}; expected a finite float")
    return float(scale)


def _check_dropout(dropout_p) -> float:
    if isinstance(dropout_p, bool) or not isinstance(dropout_p, (int, float)):
        raise TypeError(f"dropout_p must be a float, got {type(dropout_p).__name__}")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p={dropout_p}; expected 0 <= dropout_p < 1")
    return float(dropout_p)


def _check_window(window) -> tuple[int, int] | None:
    if window is None:
        return None
    ok = (
        isinstance(window, (tuple, list))
        and len(window) == 2
        and all(isinstance(w, int) and not isinstance(w, bool) and w >= -1 for w in window)
    )
    if not ok:
        raise ValueError(
            f"window={window!r}; expected (left, right) ints >= 0, or -1 for an unbounded side"
        )
    return (int(window[0]), int(window[1]))


def _natural_lse(lse: torch.Tensor) -> torch.Tensor:
    """The kernels' base-2 log-sum-exp (+inf for rows without a key) in torch's convention."""
    return torch.where(torch.isinf(lse), float("-inf"), lse * math.log(2.0))


@_fallback.falls_back_to(reference.scaled_dot_product_attention)
@_ranges.named_op("scaled_dot_product_attention")
def scaled_dot_product_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
    *,
    causal_alignment: str = "top_left",
    window: tuple[int, int] | None = None,
    return_lse: bool = False,
    cu_seqlens_q: torch.Tensor | None = None,
    cu_seqlens_k: torch.Tensor | None = None,
    max_seqlen_q: int | None = None,
    max_seqlen_k: int | None = None,
):
    """Fused attention with torch's SDPA semantics (see the module docstring).

    With ``cu_seqlens_q`` (and ``cu_seqlens_k``), q, k and v are packed sequences and the call
    is :func:`varlen_attention`'s (``attn_mask`` must then be None, ``enable_gqa`` is implied).

    Args:
        q: (batch, n_heads, seqlen_q, head_dim); k, v: (batch, n_kv_heads, seqlen_k, head_dim);
            fp32, fp16 or bf16, one dtype and device; any strides. 3-D inputs (no batch) too.
        attn_mask: broadcastable to (batch, n_heads, seqlen_q, seqlen_k); bool or float.
        scale: defaults to 1 / sqrt(head_dim).
    Returns:
        (batch, n_heads, seqlen_q, head_dim) in q's dtype; with ``return_lse`` also the
        (batch, n_heads, seqlen_q) fp32 log-sum-exp of the scaled, masked scores.
    """
    if cu_seqlens_q is not None or cu_seqlens_k is not None:
        if attn_mask is not None:
            raise NotImplementedError(
                "attn_mask with packed sequences (cu_seqlens) is not supported"
            )
        return varlen_attention(
            q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
            dropout_p=dropout_p, is_causal=is_causal, causal_alignment=causal_alignment,
            window=window, scale=scale, return_lse=return_lse,
        )  # fmt: skip
    unbatched = isinstance(q, torch.Tensor) and q.dim() == 3
    if unbatched:
        q, k, v = (t.unsqueeze(0) if isinstance(t, torch.Tensor) else t for t in (q, k, v))
        if isinstance(attn_mask, torch.Tensor):
            if attn_mask.dim() > 3:
                raise ValueError(
                    f"attn_mask.shape={tuple(attn_mask.shape)} has a batch dim but q "
                    f"(shape {tuple(q.shape[1:])}) has none"
                )
            attn_mask = attn_mask.unsqueeze(0)
    _check_qkv(q, k, v)
    _check_heads(q, k, enable_gqa)
    mask_kind = _check_mask(attn_mask, q, k)
    _check_flag("is_causal", is_causal)
    _check_flag("enable_gqa", enable_gqa)
    dropout_p = _check_dropout(dropout_p)
    window = _check_window(window)
    scale = _check_options(causal_alignment, scale, q.shape[-1])
    out, lse = _attend(
        q, k, v, attn_mask, (None, None), (None, None), mask_kind, scale, is_causal,
        causal_alignment, dropout_p, window, return_lse,
    )  # fmt: skip
    if unbatched:
        out = out.squeeze(0)
    if not return_lse:
        return out
    return out, lse.squeeze(0) if unbatched else lse


def _check_cu_seqlens(name: str, cu_seqlens, q: torch.Tensor, max_seqlen) -> int | None:
    """``cu_seqlens``'s type, rank and device, and ``max_seqlen`` as an int or None. The
    offsets themselves are checked by :func:`_check_offsets` when the kernel op runs."""
    _checks.check_tensor(name, cu_seqlens)
    if cu_seqlens.dtype not in (torch.int32, torch.int64) or cu_seqlens.dim() != 1:
        raise TypeError(
            f"{name} must be a 1-D int32 or int64 tensor, got {cu_seqlens.dtype} "
            f"of shape {tuple(cu_seqlens.shape)}"
        )
    if cu_seqlens.device != q.device:
        raise ValueError(f"{name} is on {cu_seqlens.device} but q is on {q.device}")
    if max_seqlen is None:
        return None
    if (
        isinstance(max_seqlen, torch.Tensor)
        and max_seqlen.dim() == 0
        and not max_seqlen.is_floating_point()
    ):
        max_seqlen = int(max_seqlen.item())
    elif hasattr(max_seqlen, "__index__") and not isinstance(max_seqlen, bool):
        max_seqlen = operator.index(max_seqlen)
    if isinstance(max_seqlen, bool) or not isinstance(max_seqlen, int) or max_seqlen < 0:
        raise ValueError(f"max_seqlen for {name}={max_seqlen!r}; expected an int >= 0")
    return max_seqlen


def _check_offsets(name: str, cu_seqlens, total: int, max_seqlen: int | None):
    """``cu_seqlens`` as int32 (batch + 1,) offsets from 0 to ``total``, and the longest length
    (``max_seqlen`` when given, which must be at least that). Reads the offsets on the host."""
    offsets = cu_seqlens.tolist()
    lengths = [b - a for a, b in zip(offsets, offsets[1:], strict=False)]
    if not offsets or offsets[0] != 0 or offsets[-1] != total or min(lengths, default=0) < 0:
        raise ValueError(
            f"{name}={offsets[:8]}{'...' if len(offsets) > 8 else ''}: expected offsets rising "
            f"from 0 to the packed length {total}"
        )
    longest = max(lengths, default=0)
    if max_seqlen is None:
        max_seqlen = longest
    elif max_seqlen < longest:
        raise ValueError(
            f"max_seqlen for {name}={max_seqlen!r}; the longest sequence has {longest} rows"
        )
    return cu_seqlens.to(torch.int32).contiguous(), max_seqlen


@_fallback.falls_back_to(reference.varlen_attention)
@_ranges.named_op("varlen_attention")
def varlen_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_seqlen_q: int | None = None,
    max_seqlen_k: int | None = None,
    *,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    causal_alignment: str = "top_left",
    window: tuple[int, int] | None = None,
    scale: float | None = None,
    return_lse: bool = False,
):
    """Attention over packed sequences (no padding): sequence ``b`` is rows
    ``cu_seqlens_q[b]:cu_seqlens_q[b+1]`` of q and ``cu_seqlens_k[b]:cu_seqlens_k[b+1]`` of k, v.

    Args:
        q: (total_q, n_heads, head_dim); k, v: (total_k, n_kv_heads, head_dim), n_heads a
            multiple of n_kv_heads (GQA); fp32/fp16/bf16; any strides.
        cu_seqlens_q, cu_seqlens_k: (batch + 1,) int32/int64 offsets from 0 to total; empty
            sequences are allowed. max_seqlen_*: the longest sequence (read off if None).
    Returns:
        (total_q, n_heads, head_dim) in q's dtype; with ``return_lse`` also the (total_q,
        n_heads) fp32 log-sum-exp (-inf for rows that see no key).
    """
    for name, tensor in (("q", q), ("k", k), ("v", v)):
        _checks.check_tensor(name, tensor)
        if tensor.dim() != 3:
            raise ValueError(
                f"{name}.shape={tuple(tensor.shape)}; expected packed (total, heads, head_dim)"
            )
    # As (1, heads, total, head_dim) views, the dense checks apply unchanged.
    dense_q, dense_k, dense_v = (t.transpose(0, 1).unsqueeze(0) for t in (q, k, v))
    _check_qkv(dense_q, dense_k, dense_v)
    _check_heads(dense_q, dense_k, enable_gqa=True)
    scale = _check_options(causal_alignment, scale, q.shape[-1])
    dropout_p = _check_dropout(dropout_p)
    window = _check_window(window)
    max_q = _check_cu_seqlens("cu_seqlens_q", cu_seqlens_q, q, max_seqlen_q)
    max_k = _check_cu_seqlens("cu_seqlens_k", cu_seqlens_k, q, max_seqlen_k)
    cu_q, cu_k = cu_seqlens_q, cu_seqlens_k
    out, lse = _attend(
        q, k, v, None, (cu_q, cu_k), (max_q, max_k), common.MASK_NONE, scale, is_causal,
        causal_alignment, dropout_p, window, return_lse,
    )  # fmt: skip
    return (out, lse) if return_lse else out
