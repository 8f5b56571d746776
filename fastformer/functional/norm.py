"""``layer_norm`` and ``rms_norm``: torch's semantics on fastformer's kernels, with autograd.

With ``residual`` given, both return ``(norm(x + residual), x + residual)`` from one pass over
memory: the pre-LN block's add and norm. A post-LN block uses the first output alone.

Inputs: any shape whose last dims equal ``normalized_shape``; fp32, fp16 or bf16; any strides
(layouts that fold into one row stride and one column stride are read in place, others are
copied once). ``weight`` and ``bias`` have ``normalized_shape`` and x's dtype or fp32; their
gradients come back in their own dtype. Outputs are new contiguous tensors in x's dtype;
nothing is written in place. Double backward is not supported.
"""

from __future__ import annotations

import math

import torch

from fastformer import reference
from fastformer.functional import _autograd, _checks, _fallback, _library, _ranges
from fastformer.kernels import _runtime
from fastformer.kernels.norm import norm_bwd, norm_fwd


@_library.kernel_op("norm_fwd")
def _norm_fwd(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
    is_rms: bool,
    n_norm_dims: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(y, h, mean, rstd, x's copy); h is empty without a residual, mean for RMSNorm, the copy
    unless the rows were copied (and needed: no residual)."""
    x_rows = _runtime.as_rows(x, n_norm_dims)
    res_rows = _runtime.as_rows(residual, n_norm_dims) if residual is not None else None
    w1d = weight.reshape(-1) if weight is not None else None
    b1d = bias.reshape(-1) if bias is not None else None
    y, h, mean, rstd = norm_fwd(
        x_rows, w1d, b1d, eps, is_rms=is_rms, residual=res_rows, out_shape=x.shape
    )
    # y and h are created in x's shape, not viewed into it: in-place ops on them stay legal.
    h = h if h is not None else _library.nothing(x)
    copy = _library.rows_copy(x_rows.tensor, x) if residual is None else _library.nothing(x)
    return y, h, mean if mean is not None else _library.nothing(rstd), rstd, copy


@_norm_fwd.register_fake
def _(x, residual, weight, bias, eps, is_rms, n_norm_dims):
    n_rows = x.numel() // max(math.prod(x.shape[x.dim() - n_norm_dims :]), 1)
    y = x.new_empty(x.shape)
    h = x.new_empty(x.shape) if residual is not None else _library.nothing(x)
    stats = x.new_empty((n_rows,), dtype=torch.float32)
    copy = _library.nothing(x)
    if residual is None:
        copy = _library.rows_copy(_runtime.as_rows(x, n_norm_dims).tensor, x)
    return y, h, stats if not is_rms else _library.nothing(stats), stats.clone(), copy


@_library.kernel_op("norm_bwd")
def _norm_bwd(
    dy: torch.Tensor,
    dh: torch.Tensor | None,
    x: torch.Tensor,
    weight: torch.Tensor | None,
    mean: torch.Tensor,
    rstd: torch.Tensor,
    is_rms: bool,
    n_norm_dims: int,
    compute_dw: bool,
    compute_db: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dx in x's shape, dweight and dbias as (n_cols,) fp32); unasked ones empty."""
    dx2d, dw, db = norm_bwd(
        _runtime.as_rows(dy, n_norm_dims),
        _runtime.as_rows(x, n_norm_dims),
        weight.reshape(-1) if weight is not None else None,
        None if is_rms else mean,
        rstd,
        is_rms=is_rms,
        dh=_runtime.as_rows(dh, n_norm_dims) if dh is not None else None,
        compute_dw=compute_dw,
        compute_db=compute_db,
    )
    dw = dw if dw is not None else _library.nothing(rstd)
    db = db if db is not None else _library.nothing(rstd)
    return dx2d.view(x.shape), dw, db


@_norm_bwd.register_fake
def _(dy, dh, x, weight, mean, rstd, is_rms, n_norm_dims, compute_dw, compute_db):
    n_cols = math.prod(x.shape[x.dim() - n_norm_dims :])
    dw = rstd.new_empty((n_cols,)) if compute_dw else _library.nothing(rstd)
    db = rstd.new_empty((n_cols,)) if compute_db else _library.nothing(rstd)
    return x.new_empty(x.shape), dw, db


def _setup_context(ctx, inputs, output):
    x, residual, weight, bias, _, is_rms, n_norm_dims = inputs
    _, h, mean, rstd, copy = output
    # The normalised rows are h with a residual, x without (the forward's copy of x, if any).
    rows = h if residual is not None else (copy if copy.numel() else x)
    ctx.save_for_backward(rows, weight, mean, rstd)
    ctx.is_rms, ctx.n_norm_dims = is_rms, n_norm_dims
    ctx.has_residual = residual is not None
    ctx.bias = (bias.shape, bias.dtype) if bias is not None else None
    ctx.mark_non_differentiable(mean, rstd, copy)
    ctx.set_materialize_grads(False)


def _backward(ctx, dy, dh, _dmean, _drstd, _dcopy):
    _autograd.refuse_double_backward("norm")
    saved_x, weight, mean, rstd = ctx.saved_tensors
    needs = ctx.needs_input_grad
    if dy is None:  # only h was used
        dy = torch.zeros_like(saved_x)
    compute_dw, compute_db = needs[2] and weight is not None, needs[3] and ctx.bias is not None
    dx, dw, db = _norm_bwd(
        dy, dh if ctx.has_residual else None, saved_x, weight, mean, rstd, ctx.is_rms,
        ctx.n_norm_dims, compute_dw, compute_db,
    )  # fmt: skip
    dres = dx if ctx.has_residual and needs[1] else None
    dweight = dw.view(weight.shape).to(weight.dtype) if compute_dw else None
    dbias = db.view(ctx.bias[0]).to(ctx.bias[1]) if compute_db else None
    return dx if needs[0] else None, dres, dweight, dbias, None, None, None


_norm_fwd.register_autograd(_backward, setup_context=_setup_context)


@_ranges.named_op(lambda arguments: "rms_norm" if arguments["is_rms"] else "layer_norm")
def _norm(x, normalized_shape, weight, bias, eps, residual, is_rms):
    _checks.check_tensor("x", x)
    _checks.check_float_dtype("x", x)
    shape = _checks.check_normalized_shape(normalized_shape, x)
    _checks.check_param("weight", weight, shape, x)
    _checks.check_param("bias", bias, shape, x)
    eps = _checks.check_eps(eps)
    if residual is not None:
        _checks.check_tensor("residual", residual)
        _checks.check_like("residual", residual, "x", x)
    y, h, *_ = _norm_fwd(x, residual, weight, bias, eps, is_rms, len(shape))
    return y if residual is None else (y, h)


@_fallback.falls_back_to(reference.layer_norm)
def layer_norm(
    x: torch.Tensor,
    normalized_shape,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-5,
    residual: torch.Tensor | None = None,
):
    """``torch.nn.functional.layer_norm`` on fastformer's kernel.

    Args:
        x: (..., *normalized_shape), fp32/fp16/bf16.
        normalized_shape: int or sequence of ints, the trailing dims to normalise over.
        weight, bias: normalized_shape, x's dtype or fp32, or None.
        eps: added to the variance.
        residual: like x, or None.
    Returns:
        ``norm(x)``, or ``(norm(x + residual), x + residual)`` when ``residual`` is given.
    """
    return _norm(x, normalized_shape, weight, bias, eps, residual, is_rms=False)


@_fallback.falls_back_to(reference.rms_norm)
def rms_norm(
    x: torch.Tensor,
    normalized_shape,
    weight: torch.Tensor | None = None,
    eps: float | None = None,
    residual: torch.Tensor | None = None,
):
    """``torch.nn.functional.rms_norm`` on fastformer's kernel.

    ``eps=None`` means fp32's epsilon for every supported dtype, as in torch (which takes the
    epsilon of the dtype it computes in, fp32 for fp16 and bf16 too). Other arguments and the
    return value as in :func:`layer_norm` (there is no bias).
    """
    if eps is None:
        eps = torch.finfo(torch.float32).eps
    return _norm(x, normalized_shape, weight, None, eps, residual, is_rms=True)
