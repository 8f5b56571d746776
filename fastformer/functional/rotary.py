"""``apply_rotary``: rotary position embeddings for q and k in one kernel launch, with autograd.

The public form takes the frequencies, not a cos/sin table:

    apply_rotary(q, k, inv_freq, *, position_ids=None, offset=0, cu_seqlens=None,
                 interleaved=False, rotary_dim=None, layout="bshd", inplace=False,
                 attention_scaling=1.0) -> (q_rot, k_rot)

The kernel computes ``cos`` and ``sin`` of ``position * inv_freq`` in fp32 itself, so there is no
table to build, to outgrow or to cache by length (CASES R1, R2); ``inv_freq`` comes from
:func:`fastformer.functional.rope_scaling.rope_init` (or any model's ``inv_freq`` buffer).

Layouts (no copy for any strides):
- ``"bshd"``: q (batch, seqlen, n_heads_q, head_dim), k (batch, seqlen, n_heads_k, head_dim).
- ``"bhsd"``: q (batch, n_heads_q, seqlen, head_dim), k likewise (SDPA's layout).
- ``"thd"``: packed sequences, q (total_tokens, n_heads_q, head_dim); needs ``cu_seqlens``.

Positions: ``seq + offset`` by default (offset: a Python or numpy int, not a tensor, which
would need a host sync; the KV-cache length when decoding);
``position_ids[b, s] + offset`` with ``position_ids`` of shape (batch, seqlen) or (1, seqlen)
(left-padded batches); with ``cu_seqlens`` ((n_seqs + 1,) int32/int64, starting at 0, ending
at total_tokens, non-decreasing) the position restarts at 0 at each sequence start, plus
``offset``. The values of position_ids and cu_seqlens are not checked (that would need a host
sync); positions are exact up to 2**24 (they become fp32 before the product, as in eager HF).

Style: NeoX ("rotate half", LLaMA) by default, GPT-J (interleaved pairs) with
``interleaved=True``. ``rotary_dim`` (default ``2 * inv_freq.numel()``, which it must equal)
features are rotated, the rest of ``head_dim`` copied. ``attention_scaling`` multiplies cos and
sin (YaRN's attention factor).

q and k: fp32, fp16 or bf16, same dtype and device, same batch, seqlen and head_dim; any head
counts (GQA). inv_freq: fp32 (angles are fp32 whatever q's dtype), gets no gradient.
Out of place by default (new contiguous tensors in q's and k's layout; inputs unchanged). With
``inplace=True`` q and k are rotated in place by one launch and returned; autograd then records
the change with one Function per tensor (it refuses one Function marking two outputs dirty when
either is a view, e.g. slices of a fused qkv buffer), so the in-place backward takes two launches
where the out-of-place one takes one. In place refuses, before any launch (ValueError), a leaf
that requires grad (or a view of one) and memory shared between elements: an expanded or
overlapping q or k, or q and k sharing an element. The overlap test is exact: a short search
over the strides (no sync) for any view of a dense buffer, else a comparison of every element's
offset on the device (a host sync), needed only when q and k share a storage with different
strides or the strides are not nested. Views that PyTorch forbids to modify in place (outputs
of ``unbind``, ``split``, ``chunk``) stay forbidden (autograd raises after the launch); slice
them instead. Gradients of q and k are the rotation of the incoming gradients by the negative
angle. Bad input raises TypeError/ValueError naming the argument before any launch.
"""

from __future__ import annotations

import math
import numbers
import operator

import torch

from fastformer import reference
from fastformer.functional import _autograd, _checks, _fallback, _library, _overlap, _ranges
from fastformer.kernels import _runtime
from fastformer.kernels.rotary import packed_positions, rotary_fwd

LAYOUTS = ("bshd", "bhsd", "thd")
INT64_LIMIT = 2**63
INDEX_DTYPES = (torch.int32, torch.int64)


def _to_bshd(x: torch.Tensor, layout: str) -> torch.Tensor:
    """A (batch, seqlen, heads, head_dim) view of x; never a copy."""
    if layout == "bhsd":
        return x.transpose(1, 2)
    if layout == "thd":
        return x.unsqueeze(0)
    return x


@_library.kernel_op("rotary")
def _rotary(
    q: torch.Tensor,
    k: torch.Tensor,
    inv_freq: torch.Tensor,
    position_ids: torch.Tensor | None,
    offset: int,
    interleaved: bool,
    layout: str,
    scale: float,
    conjugate: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """q and k rotated (by the negative angle when ``conjugate``: the backward), as new
    contiguous tensors in their own shapes; the kernel writes them through views."""
    q_out = _runtime.empty(q.shape, dtype=q.dtype, device=q.device)
    k_out = _runtime.empty(k.shape, dtype=k.dtype, device=k.device)
    rotary_fwd(
        _to_bshd(q, layout), _to_bshd(k, layout), inv_freq, position_ids=position_ids,
        offset=offset, interleaved=interleaved, attention_scaling=scale, conjugate=conjugate,
        q_out=_to_bshd(q_out, layout), k_out=_to_bshd(k_out, layout),
    )  # fmt: skip
    return q_out, k_out


@_rotary.register_fake
def _(q, k, *_):
    return q.new_empty(q.shape), k.new_empty(k.shape)


def _setup_context(ctx, inputs, output):
    _, _, inv_freq, position_ids, *config, _conjugate = inputs
    ctx.save_for_backward(inv_freq, position_ids)
    ctx.config = config  # offset, interleaved, layout, scale


def _backward(ctx, dq_out, dk_out):
    _autograd.refuse_double_backward("apply_rotary")
    inv_freq, position_ids = ctx.saved_tensors
    dq, dk = _rotary(dq_out, dk_out, inv_freq, position_ids, *ctx.config, True)
    return dq, dk, None, None, None, None, None, None, None


_rotary.register_autograd(_backward, setup_context=_setup_context)


@_library.kernel_op("rotary_", mutates_args=("q", "k"))
def _rotary_(
    q: torch.Tensor,
    k: torch.Tensor,
    inv_freq: torch.Tensor,
    position_ids: torch.Tensor | None,
    offset: int,
    interleaved: bool,
    layout: str,
    scale: float,
) -> None:
    """q and k rotated in place by one launch (the pass-through features are not rewritten)."""
    q4, k4 = _to_bshd(q, layout), _to_bshd(k, layout)
    rotary_fwd(
        q4, k4, inv_freq, position_ids=position_ids, offset=offset, interleaved=interleaved,
        attention_scaling=scale, q_out=q4, k_out=k4,
    )  # fmt: skip


@_rotary_.register_fake
def _(*_):
    return None


class _RotatedInPlace(torch.autograd.Function):
    """Records that ``x`` was rotated in place (by the launch that rotated q and k together).

    One Function per tensor: autograd refuses a Function that marks dirty two outputs when one
    is a view (a Linear output reshaped, a slice of a fused qkv buffer). The backward rotates
    this tensor's gradient alone: two launches in backward where the out-of-place path has one.
    """

    @staticmethod
    def forward(ctx, x, inv_freq, position_ids, offset, interleaved, layout, scale):
        ctx.mark_dirty(x)
        ctx.save_for_backward(inv_freq, position_ids)
        ctx.config = (offset, interleaved, layout, scale)
        return x

    @staticmethod
    def backward(ctx, dx_out):
        _autograd.refuse_double_backward("apply_rotary")
        inv_freq, position_ids = ctx.saved_tensors
        no_heads = _no_heads(dx_out, ctx.config[2])
        dx, _ = _rotary(dx_out, no_heads, inv_freq, position_ids, *ctx.config, True)
        return dx, None, None, None, None, None, None


def _no_heads(x: torch.Tensor, layout: str) -> torch.Tensor:
    """A tensor like x with no heads: the partner of a lone tensor in a two-tensor launch."""
    shape = list(x.shape)
    shape[1 if layout == "bhsd" else -2] = 0
    return x.new_empty(shape)


def _rotary_in_place(q, k, inv_freq, position_ids, offset, interleaved, layout, scale):
    """One launch rotates q and k in place; then autograd records each change separately."""
    config = (offset, interleaved, layout, scale)
    for name, x in (("q", q), ("k", k)):
        base = x if x._base is None else x._base
        if torch.is_grad_enabled() and x.requires_grad and base.is_leaf:
            raise ValueError(
                f"inplace=True on {name}, a leaf tensor that requires grad (or a view of one): "
                "autograd cannot record an in-place change to it; pass inplace=False"
            )
    with torch.no_grad():  # autograd records the change below, one Function per tensor
        _rotary_(q, k, inv_freq, position_ids, *config)
    q = _RotatedInPlace.apply(q, inv_freq, position_ids, *config)
    k = _RotatedInPlace.apply(k, inv_freq, position_ids, *config)
    return q, k


def _check_inputs(q, k, layout):
    _checks.check_tensor("q", q)
    _checks.check_tensor("k", k)
    _checks.check_float_dtype("q", q)
    if k.device != q.device:
        raise ValueError(f"k is on {k.device} but q is on {q.device}")
    if k.dtype != q.dtype:
        raise TypeError(f"k.dtype={k.dtype} must equal q.dtype={q.dtype}")
    if not isinstance(layout, str) or layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r} is not one of {LAYOUTS}")
    n_dims = 3 if layout == "thd" else 4
    for name, x in (("q", q), ("k", k)):
        if x.dim() != n_dims:
            raise ValueError(
                f"{name}.shape={tuple(x.shape)} has {x.dim()} dims; layout={layout!r} needs "
                f"{n_dims}"
            )
    q4, k4 = _to_bshd(q, layout), _to_bshd(k, layout)
    axes = (("batch", 0), ("seqlen", 1), ("head_dim", 3))
    for axis, dim in axes if layout != "thd" else axes[1:]:
        if q4.shape[dim] != k4.shape[dim]:
            raise ValueError(
                f"k.shape={tuple(k.shape)} and q.shape={tuple(q.shape)} differ in {axis} "
                f"({k4.shape[dim]} != {q4.shape[dim]}) for layout={layout!r}"
            )
    return q4


def _check_inv_freq(inv_freq, q, rotary_dim):
    _checks.check_tensor("inv_freq", inv_freq)
    if inv_freq.device != q.device:
        raise ValueError(f"inv_freq is on {inv_freq.device} but q is on {q.device}")
    if inv_freq.dtype != torch.float32:
        raise TypeError(
            f"inv_freq.dtype={inv_freq.dtype} is not supported; expected torch.float32 "
            "(angles are fp32 whatever the dtype of q and k)"
        )
    if inv_freq.dim() != 1 or inv_freq.numel() == 0:
        raise ValueError(
            f"inv_freq.shape={tuple(inv_freq.shape)} must be (rotary_dim // 2,) with "
            "rotary_dim >= 2"
        )
    if inv_freq.requires_grad and torch.is_grad_enabled():
        raise _runtime.UnsupportedShape(
            "inv_freq.requires_grad=True: apply_rotary gives no gradient for inv_freq; "
            "pass inv_freq.detach()",
            "a gradient for inv_freq",
        )
    head_dim = q.shape[-1]
    implied = 2 * inv_freq.numel()
    if rotary_dim is None:
        rotary_dim = implied
    if isinstance(rotary_dim, bool) or not isinstance(rotary_dim, int):
        raise TypeError(f"rotary_dim must be an int or None, got {rotary_dim!r}")
    if rotary_dim <= 0 or rotary_dim % 2:
        raise ValueError(f"rotary_dim={rotary_dim} must be even and positive")
    if rotary_dim > head_dim:
        raise ValueError(
            f"rotary_dim={rotary_dim} is larger than head_dim={head_dim} "
            f"(inv_freq.numel()={inv_freq.numel()}; rotary_dim defaults to 2 * inv_freq.numel())"
        )
    if rotary_dim != implied:
        raise ValueError(f"rotary_dim={rotary_dim} must equal 2 * inv_freq.numel()={implied}")


def _check_index(name, tensor, q):
    _checks.check_tensor(name, tensor)
    if tensor.device != q.device:
        raise ValueError(f"{name} is on {tensor.device} but q is on {q.device}")
    if tensor.dtype not in INDEX_DTYPES:
        raise TypeError(f"{name}.dtype={tensor.dtype} is not supported; expected int32 or int64")


def _check_positions(position_ids, offset, cu_seqlens, layout, q4, q):
    if isinstance(offset, (bool, torch.Tensor)) or not hasattr(offset, "__index__"):
        # A tensor would need a host sync; a Python or numpy integer does not.
        raise TypeError(f"offset must be an int, got {offset!r}")
    offset = operator.index(offset)
    if not -INT64_LIMIT <= offset < INT64_LIMIT:
        raise ValueError(f"offset={offset} does not fit in int64")
    if (cu_seqlens is None) == (layout == "thd"):
        raise ValueError(
            f"layout={layout!r} with cu_seqlens={'None' if cu_seqlens is None else 'a tensor'}: "
            "packed sequences take layout='thd' and cu_seqlens together"
        )
    if cu_seqlens is not None:
        _check_index("cu_seqlens", cu_seqlens, q)
        if cu_seqlens.dim() != 1 or cu_seqlens.numel() == 0:
            raise ValueError(
                f"cu_seqlens.shape={tuple(cu_seqlens.shape)} must be (n_seqs + 1,), n_seqs >= 0"
            )
        if position_ids is not None:
            raise ValueError("position_ids must be None with cu_seqlens (positions come from it)")
    if position_ids is None:
        return offset
    _check_index("position_ids", position_ids, q)
    batch, seqlen = q4.shape[0], q4.shape[1]
    if (
        position_ids.dim() != 2
        or position_ids.shape[1] != seqlen
        or (position_ids.shape[0] not in (1, batch))
    ):
        raise ValueError(
            f"position_ids.shape={tuple(position_ids.shape)} must be ({batch}, {seqlen}) or "
            f"(1, {seqlen}) for q.shape={tuple(q.shape)}, layout={layout!r}"
        )
    return offset


def _check_overlap(q, k):
    """In place needs every element of q and k written once: no element shared (see module doc)."""
    for name, x in (("q", q), ("k", k)):
        if _overlap.shares_within(x):
            raise ValueError(
                f"inplace=True but {name} (shape={tuple(x.shape)}, stride={x.stride()}) has "
                "elements that share memory (an expanded or overlapping view): they would be "
                "rotated more than once; pass inplace=False"
            )
    if _overlap.shares_between(q, k):
        raise ValueError(
            f"inplace=True but q and k share memory (q.data_ptr()={q.data_ptr()}, "
            f"k.data_ptr()={k.data_ptr()}): shared elements would be "
            "rotated twice; pass distinct tensors or inplace=False"
        )


@_fallback.falls_back_to(reference.apply_rotary)
@_ranges.named_op("apply_rotary")
def apply_rotary(
    q: torch.Tensor,
    k: torch.Tensor,
    inv_freq: torch.Tensor,
    *,
    position_ids: torch.Tensor | None = None,
    offset: int = 0,
    cu_seqlens: torch.Tensor | None = None,
    interleaved: bool = False,
    rotary_dim: int | None = None,
    layout: str = "bshd",
    inplace: bool = False,
    attention_scaling: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate q and k by their positions' angles in one launch; see the module docstring.

    Args:
        q, k: per ``layout``: (batch, seqlen, heads, head_dim), (batch, heads, seqlen, head_dim)
            or (total_tokens, heads, head_dim); fp32/fp16/bf16; any strides.
        inv_freq: (rotary_dim // 2,) fp32.
        position_ids: (batch, seqlen) or (1, seqlen) int32/int64, or None.
        offset: int added to every position.
        cu_seqlens: (n_seqs + 1,) int32/int64 sequence starts, with layout "thd".
        interleaved: GPT-J pairs (2j, 2j + 1) instead of NeoX's (j, j + rotary_dim / 2).
        rotary_dim: None, or 2 * inv_freq.numel() (checked).
        inplace: rotate q and k in place and return them (no element may be shared; see above).
        attention_scaling: a real number (Python or numpy); multiplies cos and sin.
    Returns:
        (q_rot, k_rot), shaped and laid out like q and k (new contiguous tensors unless inplace).
    """
    q4 = _check_inputs(q, k, layout)
    _check_inv_freq(inv_freq, q, rotary_dim)
    offset = _check_positions(position_ids, offset, cu_seqlens, layout, q4, q)
    for name, flag in (("interleaved", interleaved), ("inplace", inplace)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool, got {flag!r}")
    if isinstance(attention_scaling, bool) or not isinstance(attention_scaling, numbers.Real):
        raise TypeError(f"attention_scaling must be a real number, got {attention_scaling!r}")
    attention_scaling = float(attention_scaling)
    if not math.isfinite(attention_scaling):
        raise ValueError(f"attention_scaling={attention_scaling} must be finite")
    if cu_seqlens is not None:
        position_ids = packed_positions(cu_seqlens, q4.shape[1])
    elif position_ids is not None:
        position_ids = position_ids.expand(q4.shape[0], q4.shape[1])  # a (1, S) row: stride 0
    args = (inv_freq, position_ids, offset, interleaved, layout, attention_scaling)
    if inplace:
        if torch.compiler.is_compiling():
            # Traced: the out-of-place launch and a copy back, which the compiler can fuse or
            # functionalize (it traces no mark_dirty and reads no storage pointers, so shared
            # elements are not refused here: the copies then write the last value).
            q_rot, k_rot = _rotary(q, k, *args, False)
            return q.copy_(q_rot), k.copy_(k_rot)
        _check_overlap(q, k)
        return _rotary_in_place(q, k, *args)
    return _rotary(q, k, *args, False)
