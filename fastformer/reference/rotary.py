"""Eager reference of the rotary embedding (see ``fastformer.reference``).

Written the way eager Hugging Face models compute it: angles ``position * inv_freq`` in fp32
(float64 for float64 inputs), cos and sin cast to the inputs' dtype, then ``x * cos +
rotate(x) * sin`` in that dtype. Positions of packed sequences are found by a plain loop over the
sequences, independently of the kernel's search.
"""

from __future__ import annotations

import torch

LAYOUTS = ("bshd", "bhsd", "thd")


def _positions(q_bshd, position_ids, offset, cu_seqlens):
    """(batch or 1, seqlen) int64 positions, before the offset."""
    seqlen, device = q_bshd.shape[1], q_bshd.device
    if cu_seqlens is not None:
        bounds = [int(b) for b in cu_seqlens.tolist()]
        pieces = [torch.arange(end - start) for start, end in zip(bounds, bounds[1:], strict=False)]
        positions = torch.cat(pieces) if pieces else torch.zeros(0, dtype=torch.int64)
        return positions.to(device).unsqueeze(0) + offset
    if position_ids is not None:
        return position_ids.to(torch.int64) + offset
    return torch.arange(seqlen, device=device).unsqueeze(0) + offset


def _rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def _rotate_every_two(x):
    x1, x2 = x[..., ::2], x[..., 1::2]
    return torch.stack((-x2, x1), dim=-1).flatten(-2)


def _rotate(x, cos, sin, interleaved):
    """x: (B, S, H, D); cos, sin: (B, S, rotary_dim / 2) in x's dtype."""
    rotary_dim = 2 * cos.shape[-1]
    x_rot, x_pass = x[..., :rotary_dim], x[..., rotary_dim:]
    if interleaved:
        cos = cos.repeat_interleave(2, dim=-1)
        sin = sin.repeat_interleave(2, dim=-1)
        rotated = _rotate_every_two(x_rot)
    else:
        cos = torch.cat((cos, cos), dim=-1)
        sin = torch.cat((sin, sin), dim=-1)
        rotated = _rotate_half(x_rot)
    out = x_rot * cos[:, :, None, :] + rotated * sin[:, :, None, :]
    return torch.cat((out, x_pass), dim=-1)


def _to_bshd(x, layout):
    if layout == "bhsd":
        return x.transpose(1, 2)
    if layout == "thd":
        return x.unsqueeze(0)
    return x


def _from_bshd(x, layout):
    if layout == "bhsd":
        return x.transpose(1, 2)
    if layout == "thd":
        return x.squeeze(0)
    return x


def apply_rotary(
    q,
    k,
    inv_freq,
    *,
    position_ids=None,
    offset=0,
    cu_seqlens=None,
    interleaved=False,
    rotary_dim=None,
    layout="bshd",
    inplace=False,
    attention_scaling=1.0,
):
    """``(q_rot, k_rot)``, as :func:`fastformer.apply_rotary` defines them (unchecked)."""
    q4, k4 = _to_bshd(q, layout), _to_bshd(k, layout)
    compute = torch.float64 if q.dtype == torch.float64 else torch.float32
    positions = _positions(q4, position_ids, offset, cu_seqlens)
    angle = positions.to(compute)[..., None] * inv_freq.to(compute)  # (B, S, rotary_dim / 2)
    cos = (angle.cos() * attention_scaling).to(q.dtype)
    sin = (angle.sin() * attention_scaling).to(q.dtype)
    cos = cos.expand(q4.shape[0], -1, -1)
    sin = sin.expand(q4.shape[0], -1, -1)
    q_out = _from_bshd(_rotate(q4, cos, sin, interleaved), layout)
    k_out = _from_bshd(_rotate(k4, cos, sin, interleaved), layout)
    if inplace:
        return q.copy_(q_out), k.copy_(k_out)
    return q_out, k_out
