"""``scaled_dot_product_attention``: a drop-in for torch's on fastformer's fused kernels.

Same layout ``(batch, heads, seq, head_dim)`` (or ``(heads, seq, head_dim)``) and semantics as
``torch.nn.functional.scaled_dot_product_attention``: a boolean mask means True = take part, a
float mask is added to the scores, ``is_causal`` with ``seqlen_q != seqlen_k`` is aligned top-left
(query i sees keys j <= i), GQA needs ``enable_gqa=True``. Where SDPA would give NaN (a row that
sees no key), the output is 0 and every gradient finite. Any strides are read in place.

Extras: ``causal_alignment="bottom_right"`` (query i sees keys j <= i + seqlen_k - seqlen_q, what
a KV-cache prefill needs), ``return_lse=True`` (also return the natural log-sum-exp of each row,
-inf where a row sees no key), and ``is_causal`` combined with a mask.

Not supported yet, each a clear error: dropout_p > 0, a float mask that requires grad, a value
head_dim different from the query/key one, head_dim above 256.
"""

from __future__ import annotations

import math

import torch
from torch.autograd.function import once_differentiable

from fastformer.functional import _checks
from fastformer.kernels import attention as kernels

ALIGNMENTS = ("top_left", "bottom_right")


class _AttentionFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, mask, mask_kind, scale, is_causal, causal_offset):
        o, lse = kernels.attention_fwd(q, k, v, mask, mask_kind, scale, is_causal, causal_offset)
        ctx.save_for_backward(q, k, v, o, lse, mask)
        ctx.args = (mask_kind, scale, is_causal, causal_offset)
        ctx.mark_non_differentiable(lse)
        return o, lse

    @staticmethod
    @once_differentiable
    def backward(ctx, do, _dlse):
        q, k, v, o, lse, mask = ctx.saved_tensors
        dq, dk, dv = kernels.attention_bwd(do, q, k, v, o, lse, mask, *ctx.args)
        return dq, dk, dv, None, None, None, None, None


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
        raise NotImplementedError(
            f"v head_dim={v.shape[-1]} differs from q/k head_dim={head_dim}; not supported"
        )
    if head_dim < 1:
        raise ValueError(f"head_dim={head_dim}; expected at least 1")
    if head_dim > kernels.MAX_HEAD_DIM:
        raise NotImplementedError(f"head_dim={head_dim}; at most {kernels.MAX_HEAD_DIM}")


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
        return kernels.MASK_NONE
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
        return kernels.MASK_BOOL
    if mask.dtype not in (q.dtype, torch.float32):
        raise TypeError(
            f"attn_mask.dtype={mask.dtype}; expected torch.bool, q's dtype ({q.dtype}) or float32"
        )
    if mask.requires_grad:
        raise NotImplementedError(
            "attn_mask requires grad; a float mask's gradient is not supported yet"
        )
    return kernels.MASK_FLOAT


@torch.compiler.disable
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
    return_lse: bool = False,
):
    """Fused attention with torch's SDPA semantics (see the module docstring).

    Args:
        q: (batch, n_heads, seqlen_q, head_dim); k, v: (batch, n_kv_heads, seqlen_k, head_dim);
            fp32, fp16 or bf16, one dtype and device; any strides. 3-D inputs (no batch) too.
        attn_mask: broadcastable to (batch, n_heads, seqlen_q, seqlen_k); bool or float.
        scale: defaults to 1 / sqrt(head_dim).
    Returns:
        (batch, n_heads, seqlen_q, head_dim) in q's dtype; with ``return_lse`` also the
        (batch, n_heads, seqlen_q) fp32 log-sum-exp of the scaled, masked scores.
    """
    unbatched = isinstance(q, torch.Tensor) and q.dim() == 3
    if unbatched:
        q, k, v = (t.unsqueeze(0) if isinstance(t, torch.Tensor) else t for t in (q, k, v))
        if isinstance(attn_mask, torch.Tensor) and attn_mask.dim() == 3:
            attn_mask = attn_mask.unsqueeze(0)
    _check_qkv(q, k, v)
    _check_heads(q, k, enable_gqa)
    mask_kind = _check_mask(attn_mask, q, k)
    if isinstance(dropout_p, bool) or not isinstance(dropout_p, (int, float)):
        raise TypeError(f"dropout_p must be a float, got {type(dropout_p).__name__}")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p={dropout_p}; expected 0 <= dropout_p < 1")
    if dropout_p > 0.0:
        raise NotImplementedError(f"dropout_p={dropout_p}; dropout is not supported yet")
    if causal_alignment not in ALIGNMENTS:
        raise ValueError(f"causal_alignment={causal_alignment!r}; expected one of {ALIGNMENTS}")
    if scale is None:
        scale = kernels.default_scale(q.shape[-1])
    elif isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ValueError(f"scale={scale!r}; expected a finite float")
    seqlen_q, seqlen_k = q.shape[2], k.shape[2]
    offset = seqlen_k - seqlen_q if causal_alignment == "bottom_right" else 0

    out, lse = _AttentionFunction.apply(
        q, k, v, attn_mask, mask_kind, float(scale), bool(is_causal), offset
    )
    if unbatched:
        out = out.squeeze(0)
    if not return_lse:
        return out
    lse = lse.view(*q.shape[:3])
    lse = torch.where(torch.isinf(lse), float("-inf"), lse * math.log(2.0))
    return out, lse.squeeze(0) if unbatched else lse
