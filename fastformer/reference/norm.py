"""Eager references of the norms (see ``fastformer.reference``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _shape(normalized_shape) -> tuple[int, ...]:
    """An int or a sequence of ints, as the public ops take it."""
    if isinstance(normalized_shape, int):
        return (normalized_shape,)
    return tuple(normalized_shape)


def layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5, residual=None):
    """``layer_norm`` of ``x``, or of ``x + residual`` returned with that sum."""
    h = x if residual is None else x + residual
    out = F.layer_norm(h, _shape(normalized_shape), weight, bias, eps)
    return out if residual is None else (out, h)


def rms_norm(x, normalized_shape, weight=None, eps=None, residual=None):
    """``rms_norm`` of ``x``, or of ``x + residual`` returned with that sum.

    Written out (not ``F.rms_norm``) so that float64 inputs get a float64 computation and
    low-precision inputs round where an eager model rounds: statistics in fp32, result in the
    input dtype.
    """
    h = x if residual is None else x + residual
    if eps is None:  # torch's default: the epsilon of the dtype it computes in
        eps = torch.finfo(torch.float64 if h.dtype == torch.float64 else torch.float32).eps
    dims = tuple(range(-len(_shape(normalized_shape)), 0))
    compute = h if h.dtype == torch.float64 else h.float()
    out = compute * torch.rsqrt(compute.pow(2).mean(dim=dims, keepdim=True) + eps)
    if weight is not None:
        out = out * weight.to(out.dtype)
    out = out.to(h.dtype)
    return out if residual is None else (out, h)
