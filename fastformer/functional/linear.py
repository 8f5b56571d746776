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

from fastformer.functional import _autograd, _checks, _ranges
from fastformer.kernels import _runtime
from fastformer.kernels.linear import ACTIVATIONS, linear_bwd, linear_fwd

GATED_ACTIVATIONS = ("gelu", "gelu_tanh", "relu", "silu")


class _LinearFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, weight_up, bias, activation):
        x_rows = _runtime.as_rows(x, 1)
        out_shape = (*x.shape[:-1], weight.shape[0])
        store_pre = activation is not None or weight_up is not None
        y, z, z_up = linear_fwd(
            x_rows,
            weight,
            bias,
            activation,
            weight_up=weight_up,
            store_pre=store_pre,
            out_shape=out_shape,
        )
        # Save the rows' tensor (x itself or its one copy), so the backward makes no copy.
        ctx.save_for_backward(x_rows.tensor, weight, weight_up, z, z_up)
        ctx.activation = activation
        ctx.x_shape = x.shape
        ctx.has_bias = bias is not None
        return y

    @staticmethod
    def backward(ctx, dy):
        _autograd.refuse_double_backward("linear")
        x_saved, weight, weight_up, z, z_up = ctx.saved_tensors
        needs = ctx.needs_input_grad
        dx, dw, dw_up, db = linear_bwd(
            _runtime.as_rows(dy, 1),
            _runtime.as_rows(x_saved, 1),
            weight,
            z,
            ctx.activation,
            weight_up=weight_up,
            z_up=z_up,
            compute_dx=needs[0],
            compute_dw=needs[1] or needs[2],
            compute_db=needs[3] and ctx.has_bias,
        )
        dx = dx.view(ctx.x_shape) if dx is not None else None
        return (
            dx,
            dw if needs[1] else None,
            dw_up if needs[2] else None,
            db if needs[3] else None,
            None,
        )


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
    if torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, weight, weight_up, bias)
    ):
        return _LinearFunction.apply(x, weight, weight_up, bias, activation)
    # Inference: no autograd node, and the pre-activation is never written.
    out_shape = (*x.shape[:-1], weight.shape[0])
    x_rows = _runtime.as_rows(x, 1)
    return linear_fwd(x_rows, weight, bias, activation, weight_up=weight_up, out_shape=out_shape)[0]


# torch.compile runs these ops eagerly (a graph break) instead of tracing into Triton's launcher.
@torch.compiler.disable
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


@torch.compiler.disable
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
