"""``linear`` and ``gated_linear``: the feed-forward GEMMs with a fused epilogue, with autograd.

``linear(x, weight, bias, activation)`` is ``torch.nn.functional.linear`` followed by an
activation, computed by one kernel that never writes the pre-activation when no gradient is
needed. ``gated_linear(x, weight_gate, weight_up, activation)`` is ``act(x @ weight_gate.T) *
(x @ weight_up.T)`` (SwiGLU with "silu", GeGLU with "gelu" or "gelu_tanh") from one kernel that
reads x once and writes neither product.

Inputs: x of any shape (..., in_features), fp32, fp16 or bf16, any strides (leading dims that
fold into two strides are read in place, else x is copied once); weights in ``nn.Linear``
layout (out_features, in_features), any strides; every tensor in x's dtype and on x's device.
fp32 follows ``torch.backends.cuda.matmul.allow_tf32`` as ``F.linear`` does (full fp32 by
default). Outputs are new contiguous tensors; nothing is written in place.

Memory: when a gradient is needed, the forward also writes the pre-activation (gated: both
projections) in x's dtype and saves it for the backward, out_features values per row (gated:
twice that), as eager PyTorch saves its activation's input; with ``activation=None`` nothing
extra is saved. Under ``torch.no_grad`` or without inputs that require grad, nothing extra is
written. Double backward is not supported.
"""

from __future__ import annotations

import torch

from fastformer import reference
from fastformer.functional import _autograd, _checks, _fallback, _library, _ranges
from fastformer.kernels import _runtime
from fastformer.kernels.linear import ACTIVATIONS, linear_bwd, linear_fwd

GATED_ACTIVATIONS = ("gelu", "gelu_tanh", "relu", "silu")


@_library.kernel_op("linear_fwd")
def _linear_fwd(
    x: torch.Tensor,
    weight: torch.Tensor,
    weight_up: torch.Tensor | None,
    bias: torch.Tensor | None,
    activation: str | None,
    store_pre: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(y, z, z_up, x's copy): the output, when ``store_pre`` the pre-activations, and the
    copy of x the rows needed (each empty when not made)."""
    out_shape = (*x.shape[:-1], weight.shape[0])
    x_rows = _runtime.as_rows(x, 1)
    y, z, z_up = linear_fwd(
        x_rows, weight, bias, activation, weight_up=weight_up, store_pre=store_pre,
        out_shape=out_shape,
    )  # fmt: skip
    z = z if z is not None else _library.nothing(x)
    z_up = z_up if z_up is not None else _library.nothing(x)
    return y, z, z_up, _library.rows_copy(x_rows.tensor, x)


@_linear_fwd.register_fake
def _(x, weight, weight_up, bias, activation, store_pre):
    n_rows, n = x.numel() // max(x.shape[-1], 1), weight.shape[0]
    y = x.new_empty((*x.shape[:-1], n))
    z = x.new_empty((n_rows, n)) if store_pre else _library.nothing(x)
    z_up = x.new_empty((n_rows, n)) if store_pre and weight_up is not None else _library.nothing(x)
    return y, z, z_up, _library.rows_copy(_runtime.as_rows(x, 1).tensor, x)


@_library.kernel_op("linear_bwd")
def _linear_bwd(
    dy: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    z: torch.Tensor | None,
    activation: str | None,
    weight_up: torch.Tensor | None,
    z_up: torch.Tensor | None,
    compute_dx: bool,
    compute_dw: bool,
    compute_db: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dx in x's shape, dweight, dweight_up, dbias); the ones not asked for are empty."""
    dx, dw, dw_up, db = linear_bwd(
        _runtime.as_rows(dy, 1), _runtime.as_rows(x, 1), weight, z, activation,
        weight_up=weight_up, z_up=z_up, compute_dx=compute_dx, compute_dw=compute_dw,
        compute_db=compute_db,
    )  # fmt: skip
    grads = (dx.view(x.shape) if dx is not None else None, dw, dw_up, db)
    return tuple(g if g is not None else _library.nothing(x) for g in grads)


@_linear_bwd.register_fake
def _(dy, x, weight, z, activation, weight_up, z_up, compute_dx, compute_dw, compute_db):
    dx = x.new_empty(x.shape) if compute_dx else _library.nothing(x)
    dw = weight.new_empty(weight.shape) if compute_dw else _library.nothing(x)
    gated = compute_dw and weight_up is not None
    dw_up = weight.new_empty(weight.shape) if gated else _library.nothing(x)
    db = weight.new_empty((weight.shape[0],)) if compute_db else _library.nothing(x)
    return dx, dw, dw_up, db


def _setup_context(ctx, inputs, output):
    x, weight, weight_up, bias, activation, _ = inputs
    _, z, z_up, copy = output
    # The forward's copy of x, if its layout needed one: the backward then makes none.
    ctx.save_for_backward(copy if copy.numel() else x, weight, weight_up, z, z_up)
    ctx.mark_non_differentiable(copy)
    ctx.activation = activation
    ctx.stored = inputs[5]  # store_pre
    ctx.has_bias = bias is not None


def _backward(ctx, dy, _dz, _dz_up, _dcopy):
    _autograd.refuse_double_backward("linear")
    x, weight, weight_up, z, z_up = ctx.saved_tensors
    needs = ctx.needs_input_grad
    compute_db = needs[3] and ctx.has_bias
    dx, dw, dw_up, db = _linear_bwd(
        dy, x, weight, z if ctx.stored else None, ctx.activation, weight_up,
        z_up if weight_up is not None else None, needs[0], needs[1] or needs[2], compute_db,
    )  # fmt: skip
    return (
        dx if needs[0] else None,
        dw if needs[1] else None,
        dw_up if needs[2] else None,
        db if compute_db else None,
        None,
        None,
    )


_linear_fwd.register_autograd(_backward, setup_context=_setup_context)


def _check_activation(activation, allowed) -> None:
    if activation is not None and not isinstance(activation, str):
        raise TypeError(f"activation must be a str or None, got {type(activation).__name__}")
    if activation not in allowed:
        raise ValueError(f"activation={activation!r} is not one of {allowed}")


def _check_weight(name: str, weight, x: torch.Tensor) -> None:
    _checks.check_tensor(name, weight)
    if weight.device != x.device:
        raise ValueError(f"{name} is on {weight.device} but x is on {x.device}")
    if weight.dtype != x.dtype:
        raise TypeError(f"{name}.dtype={weight.dtype} must equal x.dtype={x.dtype}")
    if weight.dim() != 2:
        raise ValueError(
            f"{name}.shape={tuple(weight.shape)} must be 2-D (out_features, in_features)"
        )
    if weight.shape[1] != x.shape[-1]:
        raise ValueError(
            f"{name}.shape={tuple(weight.shape)} does not match x.shape={tuple(x.shape)}: "
            f"in_features={weight.shape[1]} must equal x.shape[-1]={x.shape[-1]}"
        )


def _check_bias(bias, weight: torch.Tensor, x: torch.Tensor) -> None:
    _checks.check_tensor("bias", bias)
    if bias.device != x.device:
        raise ValueError(f"bias is on {bias.device} but x is on {x.device}")
    if bias.dtype != x.dtype:
        raise TypeError(f"bias.dtype={bias.dtype} must equal x.dtype={x.dtype}")
    if tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(
            f"bias.shape={tuple(bias.shape)} must equal (out_features,)=({weight.shape[0]},)"
        )


def _check_x(x) -> None:
    _checks.check_tensor("x", x)
    _checks.check_float_dtype("x", x)
    if x.dim() == 0:
        raise ValueError("x.shape=() is 0-D; expected at least one dim (in_features)")


def _apply(x, weight, weight_up, bias, activation):
    # The pre-activations are written only when a gradient will need them.
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, weight, weight_up, bias)
    )
    store_pre = needs_grad and (activation is not None or weight_up is not None)
    return _linear_fwd(x, weight, weight_up, bias, activation, store_pre)[0]


@_fallback.falls_back_to(reference.linear)
@_ranges.named_op("linear")
def linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
) -> torch.Tensor:
    """``activation(torch.nn.functional.linear(x, weight, bias))`` in one kernel.

    Args:
        x: (..., in_features), fp32/fp16/bf16.
        weight: (out_features, in_features), x's dtype and device.
        bias: (out_features,), x's dtype and device, or None.
        activation: "gelu" (erf), "gelu_tanh", "relu", "silu" or None.
    Returns:
        (..., out_features), x's dtype, a new contiguous tensor.
    """
    _check_x(x)
    _check_weight("weight", weight, x)
    if bias is not None:
        _check_bias(bias, weight, x)
    _check_activation(activation, ACTIVATIONS)
    return _apply(x, weight, None, bias, activation)


@_fallback.falls_back_to(reference.gated_linear)
@_ranges.named_op("gated_linear")
def gated_linear(
    x: torch.Tensor,
    weight_gate: torch.Tensor,
    weight_up: torch.Tensor,
    activation: str = "silu",
) -> torch.Tensor:
    """``activation(x @ weight_gate.T) * (x @ weight_up.T)`` in one kernel (no biases).

    "silu" gives SwiGLU (LLaMA's MLP), "gelu" and "gelu_tanh" GeGLU, "relu" ReGLU.

    Args:
        x: (..., in_features), fp32/fp16/bf16.
        weight_gate, weight_up: (out_features, in_features), x's dtype and device.
        activation: "silu", "gelu", "gelu_tanh" or "relu".
    Returns:
        (..., out_features), x's dtype, a new contiguous tensor.
    """
    _check_x(x)
    _check_weight("weight_gate", weight_gate, x)
    _check_weight("weight_up", weight_up, x)
    if weight_up.shape != weight_gate.shape:
        raise ValueError(
            f"weight_up.shape={tuple(weight_up.shape)} must equal "
            f"weight_gate.shape={tuple(weight_gate.shape)}"
        )
    _check_activation(activation, GATED_ACTIVATIONS)
    return _apply(x, weight_gate, weight_up, None, activation)
