"""LayerNorm and RMSNorm in Triton, forward and backward, with an optional fused residual add.

One kernel family serves both norms (``IS_RMS`` drops the mean) and both block forms: with a
residual, the forward reads ``x`` and ``residual``, writes ``h = x + residual`` (rounded to the
input dtype, as eager PyTorch rounds it) and normalises ``h``: the pre-LN block in one pass.

Design:
- Rows up to ``MAX_FUSED_COLS`` wide (``Sizing.max_fused_cols_bwd`` in the backward) are held
  in registers whole; narrow rows are stacked ``BLOCK_M`` to a program so that every program has
  a useful amount of work. Wider rows loop over the row in chunks (``Sizing``): the
  forward merges per-chunk mean and M2 (Chan et al.'s parallel variance) in one pass, then
  normalises in a second; the backward makes two passes per row. Any width works.
- Statistics are fp32 whatever the input dtype; the centred values are masked before they are
  squared, so padding lanes never enter the variance.
- Rows are addressed through two row strides and a column stride (``_runtime.Rows``): sliced,
  transposed, permuted and expanded layouts are read in place; row offsets are int64, so
  tensors past 2**31 elements work.
- The backward runs a persistent grid: each program owns a contiguous band of rows, accumulates
  dweight and dbias for its band in fp32, and writes one partial row; the partial rows are summed
  by ``torch.sum`` afterwards. No atomics and no locks: the result is the same on every run.
  The looping backward adds each row into its program's own partial row (read-modify-write:
  extra traffic on rows above 8192; 4096 where the launch is not 16-byte aligned).
- Launches that Triton cannot specialise as 16-byte aligned (odd widths, strides or offsets)
  take smaller programs (``UNALIGNED_SIZING``): element-by-element accesses hold more registers.

Backward (x̂ = (h - mean) * rstd, g = weight * dy, n = number of columns):
    dh = rstd * (g - x̂ * mean(g * x̂) - mean(g))     LayerNorm
    dh = rstd * (g - x̂ * mean(g * x̂))               RMSNorm (x̂ = h * rstd)
    dweight = Σ_rows dy * x̂,  dbias = Σ_rows dy
With a residual, the gradient arriving on ``h`` is added to dh; x and the residual get the sum.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastformer.kernels import _runtime
from fastformer.kernels._jit import rounded_for_store, row_offset
from fastformer.kernels.norm_sizing import MAX_FUSED_COLS, sizing


@triton.jit
def _norm_fwd_kernel(
    x_ptr,  # (n_rows, n_cols)
    res_ptr,  # (n_rows, n_cols) or unused
    w_ptr,  # (n_cols,) or unused
    b_ptr,  # (n_cols,) or unused
    y_ptr,  # (n_rows, n_cols), out
    h_ptr,  # (n_rows, n_cols), out: x + residual, or unused
    mean_ptr,  # (n_rows,) fp32, out, or unused
    rstd_ptr,  # (n_rows,) fp32, out
    n_rows,
    n_cols,
    x_rows_inner,
    stride_x_outer,
    stride_x_inner,
    stride_x_col,
    res_rows_inner,
    stride_res_outer,
    stride_res_inner,
    stride_res_col,
    stride_w_col,
    stride_b_col,
    stride_y_row,
    stride_h_row,
    eps,
    IS_RMS: tl.constexpr,
    HAS_RES: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BF16_RNE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """Normalise BLOCK_M whole rows held in registers (n_cols <= BLOCK_N)."""
    pid_m = tl.program_id(0)
    offs_m = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    mask_m = offs_m < n_rows
    mask_n = offs_n < n_cols
    mask = mask_m[:, None] & mask_n[None, :]

    x_rows = row_offset(offs_m, x_rows_inner, stride_x_outer, stride_x_inner)
    x = tl.load(x_ptr + x_rows[:, None] + offs_n[None, :] * stride_x_col, mask=mask, other=0.0)
    if HAS_RES:
        res_rows = row_offset(offs_m, res_rows_inner, stride_res_outer, stride_res_inner)
        res = tl.load(
            res_ptr + res_rows[:, None] + offs_n[None, :] * stride_res_col, mask=mask, other=0.0
        )
        # Round the sum to the storage dtype first: the norm sees what eager's `x + r` holds.
        h = rounded_for_store(x.to(tl.float32) + res.to(tl.float32), BF16_RNE)
        x = h.to(h_ptr.dtype.element_ty)
        tl.store(h_ptr + offs_m[:, None] * stride_h_row + offs_n[None, :], x, mask=mask)
    x = x.to(tl.float32)

    if IS_RMS:
        xc = x
    else:
        # Sum x - x[:, 0], not x: a constant row then has a mean equal to its value exactly.
        pivot = tl.sum(tl.where(offs_n[None, :] == 0, x, 0.0), axis=1)
        shifted = tl.where(mask, x - pivot[:, None], 0.0)
        mean = pivot + tl.sum(shifted, axis=1) / n_cols
        xc = tl.where(mask, x - mean[:, None], 0.0)
        tl.store(mean_ptr + offs_m, mean, mask=mask_m)
    var = tl.sum(xc * xc, axis=1) / n_cols
    rstd = 1.0 / tl.sqrt(var + eps)
    tl.store(rstd_ptr + offs_m, rstd, mask=mask_m)

    y = xc * rstd[:, None]
    if HAS_WEIGHT:
        w = tl.load(w_ptr + offs_n * stride_w_col, mask=mask_n, other=0.0).to(tl.float32)
        y = y * w[None, :]
    if HAS_BIAS:
        b = tl.load(b_ptr + offs_n * stride_b_col, mask=mask_n, other=0.0).to(tl.float32)
        y = y + b[None, :]
    y = rounded_for_store(y, BF16_RNE)
    tl.store(y_ptr + offs_m[:, None] * stride_y_row + offs_n[None, :], y, mask=mask)


@triton.jit
def _norm_fwd_long_row_kernel(
    x_ptr,
    res_ptr,
    w_ptr,
    b_ptr,
    y_ptr,
    h_ptr,
    mean_ptr,
    rstd_ptr,
    n_rows,
    n_cols,
    x_rows_inner,
    stride_x_outer,
    stride_x_inner,
    stride_x_col,
    res_rows_inner,
    stride_res_outer,
    stride_res_inner,
    stride_res_col,
    stride_w_col,
    stride_b_col,
    stride_y_row,
    stride_h_row,
    eps,
    IS_RMS: tl.constexpr,
    HAS_RES: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BF16_RNE: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """Normalise one row of any width in chunks of BLOCK_N; pointers as in _norm_fwd_kernel."""
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row_offset(row, x_rows_inner, stride_x_outer, stride_x_inner)
    res_row = res_ptr + row_offset(row, res_rows_inner, stride_res_outer, stride_res_inner)
    h_row = h_ptr + row * stride_h_row
    y_row = y_ptr + row * stride_y_row

    # Pass 1: statistics, merging each chunk's mean and M2 into the running ones. Values are
    # shifted by the row's first element, so that a constant row's mean is exact.
    pivot = tl.load(x_row).to(tl.float32)
    if HAS_RES:
        pivot = rounded_for_store(pivot + tl.load(res_row).to(tl.float32), BF16_RNE)
        pivot = pivot.to(h_ptr.dtype.element_ty).to(tl.float32)
    count = 0.0
    mean = 0.0
    m2 = 0.0
    for start in range(0, n_cols, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        mask_n = offs_n < n_cols
        x = tl.load(x_row + offs_n * stride_x_col, mask=mask_n, other=0.0)
        if HAS_RES:
            res = tl.load(res_row + offs_n * stride_res_col, mask=mask_n, other=0.0)
            h = rounded_for_store(x.to(tl.float32) + res.to(tl.float32), BF16_RNE)
            x = h.to(h_ptr.dtype.element_ty)
            tl.store(h_row + offs_n, x, mask=mask_n)
        x = x.to(tl.float32)
        if IS_RMS:
            m2 += tl.sum(x * x, axis=0)
        else:
            x = tl.where(mask_n, x - pivot, 0.0)
            chunk_count = tl.minimum(n_cols - start, BLOCK_N).to(tl.float32)
            chunk_mean = tl.sum(x, axis=0) / chunk_count
            centred = tl.where(mask_n, x - chunk_mean, 0.0)
            chunk_m2 = tl.sum(centred * centred, axis=0)
            total = count + chunk_count
            delta = chunk_mean - mean
            mean += delta * (chunk_count / total)
            m2 += chunk_m2 + delta * delta * (count * chunk_count / total)
            count = total
    mean += pivot
    rstd = 1.0 / tl.sqrt(m2 / n_cols + eps)
    tl.store(rstd_ptr + row, rstd)
    if not IS_RMS:
        tl.store(mean_ptr + row, mean)
    if HAS_RES:
        # Pass 2 reads back h, written above by this program's own threads.
        tl.debug_barrier()

    # Pass 2: normalise.
    for start in range(0, n_cols, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        mask_n = offs_n < n_cols
        if HAS_RES:
            x = tl.load(h_row + offs_n, mask=mask_n, other=0.0).to(tl.float32)
        else:
            x = tl.load(x_row + offs_n * stride_x_col, mask=mask_n, other=0.0).to(tl.float32)
        if IS_RMS:
            y = x * rstd
        else:
            y = (x - mean) * rstd
        if HAS_WEIGHT:
            w = tl.load(w_ptr + offs_n * stride_w_col, mask=mask_n, other=0.0).to(tl.float32)
            y = y * w
        if HAS_BIAS:
            b = tl.load(b_ptr + offs_n * stride_b_col, mask=mask_n, other=0.0).to(tl.float32)
            y = y + b
        tl.store(y_row + offs_n, rounded_for_store(y, BF16_RNE), mask=mask_n)


@triton.jit
def _norm_bwd_kernel(
    dy_ptr,  # (n_rows, n_cols)
    x_ptr,  # (n_rows, n_cols): the normalised input (h when there was a residual)
    w_ptr,  # (n_cols,) or unused
    mean_ptr,  # (n_rows,) fp32, or unused
    rstd_ptr,  # (n_rows,) fp32
    dh_ptr,  # (n_rows, n_cols): gradient arriving on the h output, or unused
    dx_ptr,  # (n_rows, n_cols), out
    dw_partial_ptr,  # (n_programs, n_cols) fp32, out, or unused
    db_partial_ptr,  # (n_programs, n_cols) fp32, out, or unused
    n_rows,
    n_cols,
    rows_per_program,
    dy_rows_inner,
    stride_dy_outer,
    stride_dy_inner,
    stride_dy_col,
    x_rows_inner,
    stride_x_outer,
    stride_x_inner,
    stride_x_col,
    stride_w_col,
    dh_rows_inner,
    stride_dh_outer,
    stride_dh_inner,
    stride_dh_col,
    stride_dx_row,
    IS_RMS: tl.constexpr,
    HAS_DH: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    COMPUTE_DW: tl.constexpr,
    COMPUTE_DB: tl.constexpr,
    BF16_RNE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """dx for a band of whole rows, and the band's partial dweight and dbias (n_cols <= BLOCK_N)."""
    pid = tl.program_id(0)
    row_start = pid.to(tl.int64) * rows_per_program
    row_end = tl.minimum(row_start + rows_per_program, n_rows)
    offs_n = tl.arange(0, BLOCK_N)
    mask_n = offs_n < n_cols

    if HAS_WEIGHT:
        w = tl.load(w_ptr + offs_n * stride_w_col, mask=mask_n, other=0.0).to(tl.float32)
    dw_acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    db_acc = tl.zeros((BLOCK_N,), dtype=tl.float32)

    for block_start in range(row_start, row_end, BLOCK_M):
        offs_m = block_start + tl.arange(0, BLOCK_M)
        mask_m = offs_m < row_end
        mask = mask_m[:, None] & mask_n[None, :]

        dy_rows = row_offset(offs_m, dy_rows_inner, stride_dy_outer, stride_dy_inner)
        x_rows = row_offset(offs_m, x_rows_inner, stride_x_outer, stride_x_inner)
        dy = tl.load(
            dy_ptr + dy_rows[:, None] + offs_n[None, :] * stride_dy_col, mask=mask, other=0.0
        )
        x = tl.load(x_ptr + x_rows[:, None] + offs_n[None, :] * stride_x_col, mask=mask, other=0.0)
        dy = dy.to(tl.float32)
        x = x.to(tl.float32)
        rstd = tl.load(rstd_ptr + offs_m, mask=mask_m, other=0.0)

        if IS_RMS:
            xhat = x * rstd[:, None]
        else:
            mean = tl.load(mean_ptr + offs_m, mask=mask_m, other=0.0)
            xhat = tl.where(mask, (x - mean[:, None]) * rstd[:, None], 0.0)
        if HAS_WEIGHT:
            g = dy * w[None, :]
        else:
            g = dy
        c1 = tl.sum(g * xhat, axis=1) / n_cols
        if IS_RMS:
            dx = (g - xhat * c1[:, None]) * rstd[:, None]
        else:
            c2 = tl.sum(g, axis=1) / n_cols
            dx = (g - xhat * c1[:, None] - c2[:, None]) * rstd[:, None]
        if HAS_DH:
            dh_rows = row_offset(offs_m, dh_rows_inner, stride_dh_outer, stride_dh_inner)
            dh = tl.load(
                dh_ptr + dh_rows[:, None] + offs_n[None, :] * stride_dh_col, mask=mask, other=0.0
            )
            dx += dh.to(tl.float32)
        dx = rounded_for_store(dx, BF16_RNE)
        tl.store(dx_ptr + offs_m[:, None] * stride_dx_row + offs_n[None, :], dx, mask=mask)

        if COMPUTE_DW:
            dw_acc += tl.sum(dy * xhat, axis=0)
        if COMPUTE_DB:
            db_acc += tl.sum(dy, axis=0)

    if COMPUTE_DW:
        tl.store(dw_partial_ptr + pid * n_cols + offs_n, dw_acc, mask=mask_n)
    if COMPUTE_DB:
        tl.store(db_partial_ptr + pid * n_cols + offs_n, db_acc, mask=mask_n)


@triton.jit
def _norm_bwd_long_row_kernel(
    dy_ptr,
    x_ptr,
    w_ptr,
    mean_ptr,
    rstd_ptr,
    dh_ptr,
    dx_ptr,
    dw_partial_ptr,  # (n_programs, n_cols) fp32, zero-filled: each program adds into its own row
    db_partial_ptr,  # (n_programs, n_cols) fp32, zero-filled, likewise
    n_rows,
    n_cols,
    rows_per_program,
    dy_rows_inner,
    stride_dy_outer,
    stride_dy_inner,
    stride_dy_col,
    x_rows_inner,
    stride_x_outer,
    stride_x_inner,
    stride_x_col,
    stride_w_col,
    dh_rows_inner,
    stride_dh_outer,
    stride_dh_inner,
    stride_dh_col,
    stride_dx_row,
    IS_RMS: tl.constexpr,
    HAS_DH: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    COMPUTE_DW: tl.constexpr,
    COMPUTE_DB: tl.constexpr,
    BF16_RNE: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """As _norm_bwd_kernel for rows of any width, one row at a time in chunks of BLOCK_N."""
    pid = tl.program_id(0)
    row_start = pid.to(tl.int64) * rows_per_program
    row_end = tl.minimum(row_start + rows_per_program, n_rows)
    dw_row = dw_partial_ptr + pid * n_cols
    db_row = db_partial_ptr + pid * n_cols

    for row in range(row_start, row_end):
        dy_row = dy_ptr + row_offset(row, dy_rows_inner, stride_dy_outer, stride_dy_inner)
        x_row = x_ptr + row_offset(row, x_rows_inner, stride_x_outer, stride_x_inner)
        dh_row = dh_ptr + row_offset(row, dh_rows_inner, stride_dh_outer, stride_dh_inner)
        rstd = tl.load(rstd_ptr + row)
        mean = 0.0
        if not IS_RMS:
            mean = tl.load(mean_ptr + row)

        # Pass 1: the row's two reductions.
        c1 = 0.0
        c2 = 0.0
        for start in range(0, n_cols, BLOCK_N):
            offs_n = start + tl.arange(0, BLOCK_N)
            mask_n = offs_n < n_cols
            dy = tl.load(dy_row + offs_n * stride_dy_col, mask=mask_n, other=0.0).to(tl.float32)
            x = tl.load(x_row + offs_n * stride_x_col, mask=mask_n, other=0.0).to(tl.float32)
            xhat = tl.where(mask_n, (x - mean) * rstd, 0.0)
            g = dy
            if HAS_WEIGHT:
                w = tl.load(w_ptr + offs_n * stride_w_col, mask=mask_n, other=0.0).to(tl.float32)
                g = dy * w
            c1 += tl.sum(g * xhat, axis=0)
            c2 += tl.sum(g, axis=0)
        c1 = c1 / n_cols
        c2 = c2 / n_cols

        # Pass 2: dx, and this row's share of dweight and dbias.
        for start in range(0, n_cols, BLOCK_N):
            offs_n = start + tl.arange(0, BLOCK_N)
            mask_n = offs_n < n_cols
            dy = tl.load(dy_row + offs_n * stride_dy_col, mask=mask_n, other=0.0).to(tl.float32)
            x = tl.load(x_row + offs_n * stride_x_col, mask=mask_n, other=0.0).to(tl.float32)
            xhat = tl.where(mask_n, (x - mean) * rstd, 0.0)
            g = dy
            if HAS_WEIGHT:
                w = tl.load(w_ptr + offs_n * stride_w_col, mask=mask_n, other=0.0).to(tl.float32)
                g = dy * w
            if IS_RMS:
                dx = (g - xhat * c1) * rstd
            else:
                dx = (g - xhat * c1 - c2) * rstd
            if HAS_DH:
                dh = tl.load(dh_row + offs_n * stride_dh_col, mask=mask_n, other=0.0)
                dx += dh.to(tl.float32)
            dx = rounded_for_store(dx, BF16_RNE)
            tl.store(dx_ptr + row * stride_dx_row + offs_n, dx, mask=mask_n)
            if COMPUTE_DW:
                dw = tl.load(dw_row + offs_n, mask=mask_n, other=0.0)
                tl.store(dw_row + offs_n, dw + dy * xhat, mask=mask_n)
            if COMPUTE_DB:
                db = tl.load(db_row + offs_n, mask=mask_n, other=0.0)
                tl.store(db_row + offs_n, db + dy, mask=mask_n)


def norm_fwd(
    x: _runtime.Rows,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
    *,
    is_rms: bool,
    residual: _runtime.Rows | None = None,
    out_shape: tuple[int, ...] | None = None,
):
    """Normalise each row of ``x``.

    Args:
        x: rows (n_rows, n_cols) of an fp32/fp16/bf16 tensor, any layout (``_runtime.as_rows``).
        weight, bias: (n_cols,) or None; bias is ignored when ``is_rms``.
        residual: rows like ``x``, same dtype, or None.
        out_shape: the shape of y and h (contiguous, n_rows * n_cols elements); default
            (n_rows, n_cols).
    Returns:
        y: out_shape, contiguous, x's dtype.
        h: x + residual, like y, or None without a residual.
        mean: (n_rows,) fp32, or None for RMSNorm.
        rstd: (n_rows,) fp32.
    Nothing is written in place.
    """
    n_rows, n_cols = x.n_rows, x.n_cols
    dtype, device = x.tensor.dtype, x.tensor.device
    out_shape = out_shape if out_shape is not None else (n_rows, n_cols)
    y = _runtime.empty(out_shape, dtype=dtype, device=device)
    h = _runtime.empty(out_shape, dtype=dtype, device=device) if residual else None
    mean = None if is_rms else _runtime.empty((n_rows,), dtype=torch.float32, device=device)
    rstd = _runtime.empty((n_rows,), dtype=torch.float32, device=device)
    if n_rows == 0 or n_cols == 0:
        return y, h, mean, rstd

    res = residual if residual is not None else x
    args = (
        x.tensor,
        res.tensor,
        weight if weight is not None else y,
        bias if bias is not None else y,
        y,
        h if h is not None else y,
        mean if mean is not None else rstd,
        rstd,
        n_rows,
        n_cols,
        *x.layout_args(),
        *res.layout_args(),
        weight.stride(0) if weight is not None else 0,
        bias.stride(0) if bias is not None else 0,
        n_cols,  # y and h are contiguous
        n_cols,
        eps,
    )
    flags = dict(
        IS_RMS=is_rms,
        HAS_RES=residual is not None,
        HAS_WEIGHT=weight is not None,
        HAS_BIAS=bias is not None and not is_rms,
        BF16_RNE=_runtime.software_bf16_rounding(_norm_fwd_kernel, dtype),
    )
    sizes = sizing(n_cols, (x, residual), (weight, bias))
    if n_cols <= MAX_FUSED_COLS:
        _runtime.check_runnable(_norm_fwd_kernel, "x", x.tensor)
        block_m, block_n, num_warps = sizes.fused(n_cols)
        grid = (triton.cdiv(n_rows, block_m),)
        _norm_fwd_kernel[grid](
            *args, **flags, BLOCK_M=block_m, BLOCK_N=block_n, num_warps=num_warps
        )
    else:
        _runtime.check_runnable(_norm_fwd_long_row_kernel, "x", x.tensor)
        block_n = sizes.long_row_block
        _norm_fwd_long_row_kernel[(n_rows,)](
            *args, **flags, BLOCK_N=block_n, num_warps=sizes.warps(block_n)
        )
    return y, h, mean, rstd


def norm_bwd(
    dy: _runtime.Rows,
    x: _runtime.Rows,
    weight: torch.Tensor | None,
    mean: torch.Tensor | None,
    rstd: torch.Tensor,
    *,
    is_rms: bool,
    dh: _runtime.Rows | None = None,
    compute_dw: bool = True,
    compute_db: bool = False,
):
    """Gradients of :func:`norm_fwd`.

    Args:
        dy: rows (n_rows, n_cols), gradient of y, any layout.
        x: rows (n_rows, n_cols), the normalised input (h when the forward had a residual).
        weight: (n_cols,) or None. mean, rstd: as :func:`norm_fwd` returned them.
        dh: rows (n_rows, n_cols), gradient arriving on the h output, or None.
    Returns:
        dx: (n_rows, n_cols) contiguous, x's dtype (also the residual's gradient).
        dw: (n_cols,) fp32, or None. db: (n_cols,) fp32, or None.
    """
    n_rows, n_cols = x.n_rows, x.n_cols
    dtype, device = x.tensor.dtype, x.tensor.device
    compute_dw = compute_dw and weight is not None
    dx = _runtime.empty((n_rows, n_cols), dtype=dtype, device=device)
    if n_rows == 0 or n_cols == 0:
        zeros = torch.zeros(n_cols, dtype=torch.float32, device=device)
        return dx, (zeros if compute_dw else None), (zeros.clone() if compute_db else None)

    sizes = sizing(n_cols, (dy, x, dh), (weight,))
    fused = n_cols <= sizes.max_fused_cols_bwd
    if fused:
        kernel = _norm_bwd_kernel
        block_m, block_n, num_warps = sizes.fused(n_cols)
        n_blocks = triton.cdiv(n_rows, block_m)
    else:
        kernel = _norm_bwd_long_row_kernel
        block_m, block_n, n_blocks = 1, sizes.long_row_block, n_rows
        num_warps = sizes.warps(block_n)
    _runtime.check_runnable(kernel, "x", x.tensor)
    # Whole row blocks per program, so that no two programs share a block.
    blocks_per_program = triton.cdiv(n_blocks, min(n_blocks, _runtime.max_programs(device)))
    rows_per_program = blocks_per_program * block_m
    n_programs = triton.cdiv(n_rows, rows_per_program)

    # The looping kernel adds into its partial rows; the fused one writes each partial row once.
    new_partial = _runtime.empty if fused else torch.zeros
    shape = (n_programs, n_cols)
    dw_partial = new_partial(shape, dtype=torch.float32, device=device) if compute_dw else None
    db_partial = new_partial(shape, dtype=torch.float32, device=device) if compute_db else None
    grad_h = dh if dh is not None else dy
    args = (
        dy.tensor,
        x.tensor,
        weight if weight is not None else dx,
        mean if mean is not None else rstd,
        rstd,
        grad_h.tensor,
        dx,
        dw_partial if dw_partial is not None else rstd,
        db_partial if db_partial is not None else rstd,
        n_rows,
        n_cols,
        rows_per_program,
        *dy.layout_args(),
        *x.layout_args(),
        weight.stride(0) if weight is not None else 0,
        *grad_h.layout_args(),
        dx.stride(0),
    )
    flags = dict(
        IS_RMS=is_rms,
        HAS_DH=dh is not None,
        HAS_WEIGHT=weight is not None,
        COMPUTE_DW=compute_dw,
        COMPUTE_DB=compute_db,
        BF16_RNE=_runtime.software_bf16_rounding(kernel, dtype),
    )
    blocks = dict(BLOCK_M=block_m, BLOCK_N=block_n) if fused else dict(BLOCK_N=block_n)
    kernel[(n_programs,)](*args, **flags, **blocks, num_warps=num_warps)
    dw = dw_partial.sum(dim=0) if compute_dw else None
    db = db_partial.sum(dim=0) if compute_db else None
    return dx, dw, db
