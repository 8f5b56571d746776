"""Eager reference of attention (see ``fastformer.reference``): the math, written out.

Which rows see no key is read from the masked scores, never from a row's log-sum-exp (a NaN
or +inf one must not pass for "no key"): a row sees no key when every score is -inf after the
masking (causal, window, bool mask, -inf entries of a float mask; the callers slice keys to
their lengths), or, with infinite inputs, is -inf itself, where eager SDPA gives 0 too. Such a
row gives 0 and a log-sum-exp of -inf (fastformer's convention). A NaN score in any other row,
from q, k or the float mask, propagates as in eager softmax: NaN output and log-sum-exp (a NaN
in v reaches the output through the product with the probabilities, as in eager). A float mask
adds to the scores, as in eager and the kernels, so a NaN score under a -inf entry stays NaN.
Keys that causal, window or bool masking hides take no part, NaN or not, as under eager's
causal masking (eager SDPA turns a bool mask into an additive one, so a NaN key it hides still
reaches the row there; here, as in the kernels, it does not).
"""

from __future__ import annotations

import math

import torch


def scaled_dot_product_attention(
    q,
    k,
    v,
    attn_mask=None,
    dropout_p=0.0,
    is_causal=False,
    scale=None,
    enable_gqa=False,
    *,
    causal_alignment="top_left",
    window=None,
    return_lse=False,
    dropout_mask=None,
):
    """Softmax(q k^T * scale + mask) v in the inputs' dtype, with fastformer's conventions:
    rows that see no key give 0 and a log-sum-exp of -inf (see the module header). Dropout
    needs the keep mask to apply (``dropout_mask``, broadcast to the probabilities)."""
    if dropout_p and dropout_mask is None:
        raise ValueError("dropout_p > 0 needs dropout_mask: the reference draws no numbers")
    unbatched = q.dim() == 3
    if unbatched:
        q, k, v = q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0)
        if attn_mask is not None and attn_mask.dim() == 3:
            attn_mask = attn_mask.unsqueeze(0)
    group = q.shape[1] // k.shape[1]
    if group != 1:
        k = k.repeat_interleave(group, dim=1)
        v = v.repeat_interleave(group, dim=1)
    seqlen_q, seqlen_k = q.shape[2], k.shape[2]
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = (q @ k.transpose(-2, -1)) * scale
    offset = seqlen_k - seqlen_q if causal_alignment == "bottom_right" else 0
    rows = torch.arange(seqlen_q, device=q.device)[:, None]
    distance = torch.arange(seqlen_k, device=q.device)[None, :] - (rows + offset)
    keep = torch.ones(seqlen_q, seqlen_k, dtype=torch.bool, device=q.device)
    if is_causal:
        keep = keep & (distance <= 0)
    if window is not None:
        left, right = window
        if left >= 0:
            keep = keep & (distance >= -left)
        if right >= 0:
            keep = keep & (distance <= right)
    keep = keep.expand_as(scores)
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            keep = keep & attn_mask
        else:
            scores = scores + attn_mask.to(scores.dtype)
    scores = scores.masked_fill(~keep, float("-inf"))
    lse = torch.logsumexp(scores.float() if scores.dtype != torch.float64 else scores, dim=-1)
    # NaN != -inf: a NaN score counts as seen, so it reaches the output and the log-sum-exp.
    seen = (scores != float("-inf")).any(dim=-1, keepdim=True)
    # A row with no key: softmax of all -inf is NaN, and so is its gradient; give 0 instead.
    probs = torch.softmax(scores.masked_fill(~seen, 0.0), dim=-1).masked_fill(~seen, 0.0)
    if dropout_p:
        probs = probs * dropout_mask / (1.0 - dropout_p)
    out = probs @ v
    if unbatched:
        out, lse = out.squeeze(0), lse.squeeze(0)
    return (out, lse) if return_lse else out


def varlen_attention(
    q,
    k,
    v,
    cu_seqlens_q,
    cu_seqlens_k,
    max_seqlen_q=None,
    max_seqlen_k=None,
    *,
    dropout_p=0.0,
    is_causal=False,
    causal_alignment="top_left",
    window=None,
    scale=None,
    return_lse=False,
):
    """Packed sequences, one dense reference call per sequence."""
    outs, lses = [], []
    bounds_q, bounds_k = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    for b in range(len(bounds_q) - 1):
        rows = slice(bounds_q[b], bounds_q[b + 1])
        keys = slice(bounds_k[b], bounds_k[b + 1])
        out, lse = scaled_dot_product_attention(
            q[rows].transpose(0, 1),
            k[keys].transpose(0, 1),
            v[keys].transpose(0, 1),
            is_causal=is_causal,
            scale=scale,
            causal_alignment=causal_alignment,
            window=window,
            return_lse=True,
        )
        outs.append(out.transpose(0, 1))  # (seq, heads, head_dim)
        lses.append(lse.transpose(0, 1))  # (seq, heads)
    out, lse = torch.cat(outs), torch.cat(lses)
    return (out, lse) if return_lse else out
