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

import torch

from fastformer.functional import _autograd, _checks, _ranges
from fastformer.kernels import _runtime
from fastformer.kernels.norm import norm_bwd, norm_fwd


class _NormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, residual, weight, bias, eps, is_rms, n_norm_dims):
        x_rows = _runtime.as_rows(x, n_norm_dims)
        res_rows = _runtime.as_rows(residual, n_norm_dims) if residual is not None else None
        w1d = weight.reshape(-1) if weight is not None else None
        b1d = bias.reshape(-1) if bias is not None else None
        y, h, mean, rstd = norm_fwd(
            x_rows, w1d, b1d, eps, is_rms=is_rms, residual=res_rows, out_shape=x.shape
        )
        # Save the rows' tensor (x itself, its one copy, or h), not x: no second copy later.
        ctx.save_for_backward(h if h is not None else x_rows.tensor, weight, mean, rstd)
        ctx.is_rms = is_rms
        ctx.n_norm_dims = n_norm_dims
        ctx.has_residual = residual is not None
        ctx.has_bias = bias is not None
        ctx.bias_shape = bias.shape if bias is not None else None
        ctx.bias_dtype = bias.dtype if bias is not None else None
        ctx.shape = x.shape
        # y and h are created in x's shape, not viewed into it: in-place ops on them stay legal.
        return y if h is None else (y, h)

    @staticmethod
    def backward(ctx, dy, dh=None):
        _autograd.refuse_double_backward("norm")
        saved_x, weight, mean, rstd = ctx.saved_tensors
        n_norm_dims = ctx.n_norm_dims
        needs = ctx.needs_input_grad
        dx2d, dw, db = norm_bwd(
            _runtime.as_rows(dy, n_norm_dims),
            _runtime.as_rows(saved_x, n_norm_dims),
            weight.reshape(-1) if weight is not None else None,
            mean,
            rstd,
            is_rms=ctx.is_rms,
            dh=_runtime.as_rows(dh, n_norm_dims) if dh is not None else None,
            compute_dw=needs[2],
            compute_db=needs[3] and ctx.has_bias,
        )
        dx = dx2d.view(ctx.shape) if needs[0] or needs[1] else None
        dres = dx if ctx.has_residual and needs[1] else None
        dweight = dw.view(weight.shape).to(weight.dtype) if dw is not None else None
        dbias = db.view(ctx.bias_shape).to(ctx.bias_dtype) if db is not None else None
        return dx if needs[0] else None, dres, dweight, dbias, None, None, None


# torch.compile runs these ops eagerly (a graph break) instead of tracing into Triton's launcher,
# which it cannot do under the interpreter; registering them as custom ops removes the break.
@torch.compiler.disable
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
    return _NormFunction.apply(x, residual, weight, bias, eps, is_rms, len(shape))


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
