"""Small ``@triton.jit`` helpers shared by the kernel files."""

from __future__ import annotations

import triton
import triton.language as tl

# Rounding increment below bf16's last kept bit (round half to even on the upper 16 bits).
_BF16_HALF_ULP_MINUS_ONE = 0x7FFF
_BF16_KEEP_MASK = 0xFFFF0000


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
