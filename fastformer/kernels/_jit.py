"""Small ``@triton.jit`` helpers shared by the kernel files."""

from __future__ import annotations

import triton
import triton.language as tl

# Rounding increment below bf16's last kept bit (round half to even on the upper 16 bits).
_BF16_HALF_ULP_MINUS_ONE = tl.constexpr(0x7FFF)
_BF16_KEEP_MASK = tl.constexpr(0xFFFF0000)


@triton.jit
def rounded_for_store(x, BF16_RNE: tl.constexpr):
    """fp32 ``x``, rounded to nearest-even bf16 when ``BF16_RNE`` (else returned as it is).

    Triton's interpreter converts fp32 to bf16 by truncation, where a GPU rounds to nearest even;
    launchers set ``BF16_RNE`` under the interpreter with bf16 outputs, so that the conversion
    which follows is exact and the CPU results round as the GPU's do.
    """
    if BF16_RNE:
        bits = x.to(tl.uint32, bitcast=True)
        bits = bits + (((bits >> 16) & 1) + _BF16_HALF_ULP_MINUS_ONE)
        rounded = (bits & _BF16_KEEP_MASK).to(tl.float32, bitcast=True)
        return tl.where(x != x, x, rounded)
    return x


@triton.jit
def row_offset(rows, rows_inner, stride_outer, stride_inner):
    """Offset of each row's first element, for rows addressed through two row strides
    (``_runtime.Rows``)."""
    return (rows // rows_inner) * stride_outer + (rows % rows_inner) * stride_inner


# Activations of the feed-forward kernels (kernels/linear.py), on fp32 tensors. Names match the
# public ``activation=`` strings; ``None`` is the identity.
_SQRT_HALF = tl.constexpr(0.7071067811865476)  # 1 / sqrt(2): the erf GELU's argument scale
_INV_SQRT_2PI = tl.constexpr(0.3989422804014327)  # 1 / sqrt(2 pi): the normal density's constant
_TANH_GELU_SCALE = tl.constexpr(
    0.7978845608028654
)  # sqrt(2 / pi), the tanh GELU's scale (Hendrycks & Gimpel)
_TANH_GELU_CUBIC = tl.constexpr(0.044715)  # the tanh GELU's cubic coefficient (Hendrycks & Gimpel)


@triton.jit
def activation(z, ACTIVATION: tl.constexpr):
    """``ACTIVATION`` ("gelu", "gelu_tanh", "relu", "silu" or None) of fp32 ``z``.

    The tanh GELU is written as ``z * sigmoid(2u)``, which equals ``0.5 z (1 + tanh(u))`` and
    needs no tanh; ReLU keeps NaN as torch does.
    """
    if ACTIVATION == "gelu":
        return 0.5 * z * (1.0 + tl.math.erf(z * _SQRT_HALF))
    elif ACTIVATION == "gelu_tanh":
        u = _TANH_GELU_SCALE * (z + _TANH_GELU_CUBIC * z * z * z)
        return z * tl.sigmoid(2.0 * u)
    elif ACTIVATION == "relu":
        return tl.where(z < 0.0, 0.0, z)
    elif ACTIVATION == "silu":
        return z * tl.sigmoid(z)
    else:
        return z


@triton.jit
def activation_grad(z, ACTIVATION: tl.constexpr):
    """The derivative of :func:`activation` at fp32 ``z`` (ReLU's is 0 at 0, as torch's)."""
    if ACTIVATION == "gelu":
        cdf = 0.5 * (1.0 + tl.math.erf(z * _SQRT_HALF))
        return cdf + z * _INV_SQRT_2PI * tl.exp(-0.5 * z * z)
    elif ACTIVATION == "gelu_tanh":
        u = _TANH_GELU_SCALE * (z + _TANH_GELU_CUBIC * z * z * z)
        # 1 - s as sigmoid(-2u): subtracting from one would lose the tail's digits.
        s = tl.sigmoid(2.0 * u)
        du = _TANH_GELU_SCALE * (1.0 + 3.0 * _TANH_GELU_CUBIC * z * z)
        return s + z * 2.0 * s * tl.sigmoid(-2.0 * u) * du
    elif ACTIVATION == "relu":
        return tl.where(z <= 0.0, 0.0, 1.0)
    elif ACTIVATION == "silu":
        s = tl.sigmoid(z)
        return s * (1.0 + z * tl.sigmoid(-z))
    else:
        return tl.full(z.shape, 1.0, tl.float32)
