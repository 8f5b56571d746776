"""The feed-forward GEMMs in Triton: ``act(x @ W.T + b)`` and gated ``act(x @ Wg.T) * (x @ Wu.T)``.

One kernel family serves both forms (``IS_GATED`` adds a second weight and accumulator):

- Forward, ``_linear_fwd_kernel``: one (BLOCK_M, BLOCK_N) output tile per program, the K loop
  accumulating in fp32; the epilogue adds the bias, applies the activation and stores the result
  once. The pre-activation never goes to memory unless the caller asks for it (``store_pre``,
  which the autograd layer sets when a gradient is needed). The gated form loads each x tile once
  for both GEMMs and writes neither product.
- Backward (g = dy * act'(z); gated, h = act(zg) * zu: dg = dh * zu * act'(zg), du = dh * act(zg)):
  ``_linear_bwd_dx_kernel`` computes dx = g @ W (+ du @ Wu), forming g from dy and the saved
  pre-activation in its prologue, tile by tile; ``_linear_bwd_dw_kernel`` computes dW = g.T @ x
  (and dWu = du.T @ x from the same x tile), and the programs of the first K column also reduce
  db = Σ_rows g. Each output tile belongs to one program looping over the whole reduction: no
  atomics, the same bits on every run.
- Saved for the backward: the pre-activation z (gated: zg and zu) in the input dtype, M * N
  elements (gated 2 * M * N), as eager keeps; recomputing it would cost a second forward GEMM.

Precision: fp16/bf16 operands run on tensor cores with fp32 accumulation; the bias, activation
and gating are computed in fp32 and rounded once on store. In the backward, g is rounded to the
operand dtype before its GEMMs (as eager PyTorch's g is), db is summed from fp32 g. fp32 operands
follow ``torch.backends.cuda.matmul.allow_tf32`` (False by default): full fp32 (``ieee``) unless
the caller allows tf32, as ``torch.nn.functional.linear``. The interpreter's dots run in fp32.

Addressing: x and dy are rows (``_runtime.Rows``: two row strides and a column stride, so
permuted and sliced leading dims are read in place); weights take any two strides. Offsets are
int32 unless a tensor's offsets reach 2**31 (outputs or inputs past 2**31 elements, or strides
that span as much), when the launcher switches ``INT64_OFFSETS`` on: int64 offsets on every
tile, at the cost of registers (read off the sm_90 compile: int64 tile addresses made most
128-row configs spill).

Configs are autotuned on a GPU, keyed on N, K, a power-of-two bucket of M, the activation, the
form, the offset width and (through the autotuner) every tensor's dtype; a launch tries only the
tiles that compile without spills for its kernel, form and GPU (``gpu_tiles``). The tuning cache
is not keyed on the GPU: a process that launches one key on GPUs of two architectures keeps the
first one's choice. Under the interpreter each kernel has one config: the autotuner benchmarks
through a GPU driver whenever it has more than one.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastformer.kernels import _runtime
from fastformer.kernels._jit import activation, activation_grad, rounded_for_store, row_offset
from fastformer.kernels.linear_tiles import autotuned, gpu_tiles  # noqa: F401  (gpu_tiles: public)

ACTIVATIONS = (None, "gelu", "gelu_tanh", "relu", "silu")
# Output tiles are taken GROUP_M row blocks at a time, so that neighbouring programs share
# weight tiles in L2 (the ordering of Triton's matmul tutorial).
GROUP_M = tl.constexpr(8)


@triton.jit
def _tile_ids(pid, n_rows, n_cols, BLOCK_ROWS: tl.constexpr, BLOCK_COLS: tl.constexpr):
    """(row block, column block) of program ``pid``, GROUP_M row blocks at a time."""
    n_row_blocks = tl.cdiv(n_rows, BLOCK_ROWS)
    # At least one column block: the dW kernel runs one for db when K == 0.
    n_col_blocks = tl.maximum(tl.cdiv(n_cols, BLOCK_COLS), 1)
    per_group = GROUP_M * n_col_blocks
    first_row_block = (pid // per_group) * GROUP_M
    group_rows = tl.minimum(n_row_blocks - first_row_block, GROUP_M)
    pid_row = first_row_block + (pid % per_group) % group_rows
    pid_col = (pid % per_group) // group_rows
    return pid_row, pid_col


@triton.jit
def _widened(offsets, INT64_OFFSETS: tl.constexpr):
    """``offsets`` as int64 when INT64_OFFSETS (the launcher sets it for tensors whose offsets
    reach 2**31), else unchanged: int32 offsets keep a 128-row tile's addresses in half the
    registers, which the sm_90 compile needs to avoid spills."""
    # One return: the GPU compiler rejects returns of two types even when one is never taken.
    if INT64_OFFSETS:
        offsets = tl.cast(offsets, tl.int64)  # a cast, not .to(): a stride of 1 arrives as an int
    return offsets


@triton.jit
def _linear_fwd_kernel(
    x_ptr,  # (M, K) rows
    w_ptr,  # (N, K): the weight, or the gate weight when gated
    w_up_ptr,  # (N, K): the up weight when gated, else unused
    b_ptr,  # (N,) or unused
    y_ptr,  # (M, N) contiguous, out
    z_ptr,  # (M, N) contiguous, out: pre-activation (gated: gate's), or unused
    z_up_ptr,  # (M, N) contiguous, out: the up projection when gated and stored, or unused
    M,
    N,
    K,
    M_BUCKET,  # autotuning key only
    x_rows_inner,
    stride_x_outer,
    stride_x_inner,
    stride_x_k,
    stride_w_n,
    stride_w_k,
    stride_w_up_n,
    stride_w_up_k,
    stride_b_n,
    stride_y_m,
    ACTIVATION: tl.constexpr,
    IS_GATED: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    STORE_PRE: tl.constexpr,
    DOT_FP32: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    BF16_RNE: tl.constexpr,
    INT64_OFFSETS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """One (BLOCK_M, BLOCK_N) tile of y = act(x @ W.T + b), or act(x @ Wg.T) * (x @ Wu.T)."""
    pid_m, pid_n = _tile_ids(tl.program_id(0), M, N, BLOCK_M, BLOCK_N)
    offs_m = _widened(pid_m * BLOCK_M + tl.arange(0, BLOCK_M), INT64_OFFSETS)
    offs_n = _widened(pid_n * BLOCK_N + tl.arange(0, BLOCK_N), INT64_OFFSETS)
    offs_k = _widened(tl.arange(0, BLOCK_K), INT64_OFFSETS)
    mask_m = offs_m < M
    mask_n = offs_n < N

    x_rows = row_offset(offs_m, x_rows_inner, stride_x_outer, stride_x_inner)
    x_ptrs = x_ptr + x_rows[:, None] + offs_k[None, :] * stride_x_k  # (BLOCK_M, BLOCK_K)
    w_ptrs = (
        w_ptr + offs_k[:, None] * stride_w_k + offs_n[None, :] * stride_w_n
    )  # (BLOCK_K, BLOCK_N)
    w_up_ptrs = w_up_ptr + offs_k[:, None] * stride_w_up_k + offs_n[None, :] * stride_w_up_n
    x_step = _widened(stride_x_k, INT64_OFFSETS) * BLOCK_K
    w_step = _widened(stride_w_k, INT64_OFFSETS) * BLOCK_K
    w_up_step = _widened(stride_w_up_k, INT64_OFFSETS) * BLOCK_K
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_up = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)

    for k_start in range(0, K, BLOCK_K):
        mask_k = offs_k < K - k_start
        x = tl.load(x_ptrs, mask=mask_m[:, None] & mask_k[None, :], other=0.0)
        w = tl.load(w_ptrs, mask=mask_k[:, None] & mask_n[None, :], other=0.0)
        if DOT_FP32:
            x = x.to(tl.float32)
            w = w.to(tl.float32)
        acc = tl.dot(x, w, acc, input_precision=INPUT_PRECISION)
        if IS_GATED:
            w_up = tl.load(w_up_ptrs, mask=mask_k[:, None] & mask_n[None, :], other=0.0)
            if DOT_FP32:
                w_up = w_up.to(tl.float32)
            acc_up = tl.dot(x, w_up, acc_up, input_precision=INPUT_PRECISION)
            w_up_ptrs += w_up_step
        x_ptrs += x_step
        w_ptrs += w_step

    # Epilogue: bias, the saved pre-activations if asked, activation (and gating), one store.
    mask = mask_m[:, None] & mask_n[None, :]
    out_offs = offs_m[:, None] * stride_y_m + offs_n[None, :]
    if HAS_BIAS:
        b = tl.load(b_ptr + offs_n * stride_b_n, mask=mask_n, other=0.0).to(tl.float32)
        acc += b[None, :]
    if STORE_PRE:
        tl.store(z_ptr + out_offs, rounded_for_store(acc, BF16_RNE), mask=mask)
        if IS_GATED:
            tl.store(z_up_ptr + out_offs, rounded_for_store(acc_up, BF16_RNE), mask=mask)
    y = activation(acc, ACTIVATION)
    if IS_GATED:
        y = y * acc_up
    tl.store(y_ptr + out_offs, rounded_for_store(y, BF16_RNE), mask=mask)


@triton.jit
def _grads_of_pre(dy, z_ptrs, z_up_ptrs, mask, ACTIVATION: tl.constexpr, IS_GATED: tl.constexpr):
    """fp32 gradients on the pre-activations of a tile, from dy and the saved pre-activations.

    Plain: (dy * act'(z), unused). Gated: (dy * zu * act'(zg), dy * act(zg)).
    """
    dy = dy.to(tl.float32)
    if IS_GATED:
        z = tl.load(z_ptrs, mask=mask, other=0.0).to(tl.float32)
        z_up = tl.load(z_up_ptrs, mask=mask, other=0.0).to(tl.float32)
        return dy * z_up * activation_grad(z, ACTIVATION), dy * activation(z, ACTIVATION)
    elif ACTIVATION is None:
        return dy, dy
    else:
        z = tl.load(z_ptrs, mask=mask, other=0.0).to(tl.float32)
        return dy * activation_grad(z, ACTIVATION), dy


@triton.jit
def _linear_bwd_dx_kernel(
    dy_ptr,  # (M, N) rows
    z_ptr,  # (M, N) contiguous: saved pre-activation (gated: gate's), or unused without one
    z_up_ptr,  # (M, N) contiguous: saved up projection when gated, else unused
    w_ptr,  # (N, K)
    w_up_ptr,  # (N, K) when gated, else unused
    dx_ptr,  # (M, K) contiguous, out
    M,
    N,
    K,
    M_BUCKET,  # autotuning key only
    dy_rows_inner,
    stride_dy_outer,
    stride_dy_inner,
    stride_dy_n,
    stride_z_m,
    stride_w_n,
    stride_w_k,
    stride_w_up_n,
    stride_w_up_k,
    stride_dx_m,
    ACTIVATION: tl.constexpr,
    IS_GATED: tl.constexpr,
    DOT_FP32: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    BF16_RNE: tl.constexpr,
    INT64_OFFSETS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """One (BLOCK_M, BLOCK_K) tile of dx = g @ W (+ du @ Wu), g formed in the prologue."""
    pid_m, pid_k = _tile_ids(tl.program_id(0), M, K, BLOCK_M, BLOCK_K)
    offs_m = _widened(pid_m * BLOCK_M + tl.arange(0, BLOCK_M), INT64_OFFSETS)
    offs_k = _widened(pid_k * BLOCK_K + tl.arange(0, BLOCK_K), INT64_OFFSETS)
    offs_n = _widened(tl.arange(0, BLOCK_N), INT64_OFFSETS)
    mask_m = offs_m < M
    mask_k = offs_k < K

    dy_rows = row_offset(offs_m, dy_rows_inner, stride_dy_outer, stride_dy_inner)
    acc = tl.zeros((BLOCK_M, BLOCK_K), dtype=tl.float32)
    for n_start in range(0, N, BLOCK_N):
        cols = n_start + offs_n
        mask_n = cols < N
        mask = mask_m[:, None] & mask_n[None, :]
        dy = tl.load(dy_ptr + dy_rows[:, None] + cols[None, :] * stride_dy_n, mask=mask, other=0.0)
        z_offs = offs_m[:, None] * stride_z_m + cols[None, :]
        g, g_up = _grads_of_pre(dy, z_ptr + z_offs, z_up_ptr + z_offs, mask, ACTIVATION, IS_GATED)
        w_offs = cols[:, None] * stride_w_n + offs_k[None, :] * stride_w_k  # (BLOCK_N, BLOCK_K)
        w_mask = mask_n[:, None] & mask_k[None, :]
        w = tl.load(w_ptr + w_offs, mask=w_mask, other=0.0)
        if DOT_FP32:
            w = w.to(tl.float32)
        acc = tl.dot(g.to(w.dtype), w, acc, input_precision=INPUT_PRECISION)
        if IS_GATED:
            w_up_offs = cols[:, None] * stride_w_up_n + offs_k[None, :] * stride_w_up_k
            w_up = tl.load(w_up_ptr + w_up_offs, mask=w_mask, other=0.0)
            if DOT_FP32:
                w_up = w_up.to(tl.float32)
            acc = tl.dot(g_up.to(w_up.dtype), w_up, acc, input_precision=INPUT_PRECISION)

    out_offs = offs_m[:, None] * stride_dx_m + offs_k[None, :]
    mask = mask_m[:, None] & mask_k[None, :]
    tl.store(dx_ptr + out_offs, rounded_for_store(acc, BF16_RNE), mask=mask)


@triton.jit
def _linear_bwd_dw_kernel(
    dy_ptr,  # (M, N) rows
    z_ptr,  # (M, N) contiguous, as in _linear_bwd_dx_kernel
    z_up_ptr,  # (M, N) contiguous, as in _linear_bwd_dx_kernel
    x_ptr,  # (M, K) rows
    dw_ptr,  # (N, K) contiguous, out: dW (gated: dWg)
    dw_up_ptr,  # (N, K) contiguous, out: dWu when gated, else unused
    db_ptr,  # (N,) out, or unused
    M,
    N,
    K,
    M_BUCKET,  # autotuning key only
    dy_rows_inner,
    stride_dy_outer,
    stride_dy_inner,
    stride_dy_n,
    stride_z_m,
    x_rows_inner,
    stride_x_outer,
    stride_x_inner,
    stride_x_k,
    stride_dw_n,
    ACTIVATION: tl.constexpr,
    IS_GATED: tl.constexpr,
    COMPUTE_DB: tl.constexpr,
    DOT_FP32: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    BF16_RNE: tl.constexpr,
    INT64_OFFSETS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """One (BLOCK_N, BLOCK_K) tile of dW = g.T @ x (and dWu = du.T @ x); the programs of the
    first K block also write db = Σ_rows g for their BLOCK_N columns."""
    pid_n, pid_k = _tile_ids(tl.program_id(0), N, K, BLOCK_N, BLOCK_K)
    offs_n = _widened(pid_n * BLOCK_N + tl.arange(0, BLOCK_N), INT64_OFFSETS)
    offs_k = _widened(pid_k * BLOCK_K + tl.arange(0, BLOCK_K), INT64_OFFSETS)
    offs_m = _widened(tl.arange(0, BLOCK_M), INT64_OFFSETS)
    mask_n = offs_n < N
    mask_k = offs_k < K

    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    acc_up = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    db = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for m_start in range(0, M, BLOCK_M):
        rows = m_start + offs_m
        mask_m = rows < M
        mask_t = mask_n[:, None] & mask_m[None, :]  # (BLOCK_N, BLOCK_M): g transposed

        dy_rows = row_offset(rows, dy_rows_inner, stride_dy_outer, stride_dy_inner)
        dy_t = tl.load(
            dy_ptr + dy_rows[None, :] + offs_n[:, None] * stride_dy_n, mask=mask_t, other=0.0
        )
        z_offs = rows[None, :] * stride_z_m + offs_n[:, None]
        g_t, g_up_t = _grads_of_pre(
            dy_t, z_ptr + z_offs, z_up_ptr + z_offs, mask_t, ACTIVATION, IS_GATED
        )
        if COMPUTE_DB:
            db += tl.sum(g_t, axis=1)
        x_rows = row_offset(rows, x_rows_inner, stride_x_outer, stride_x_inner)
        x_offs = x_rows[:, None] + offs_k[None, :] * stride_x_k  # (BLOCK_M, BLOCK_K)
        x = tl.load(x_ptr + x_offs, mask=mask_m[:, None] & mask_k[None, :], other=0.0)
        if DOT_FP32:
            x = x.to(tl.float32)
        acc = tl.dot(g_t.to(x.dtype), x, acc, input_precision=INPUT_PRECISION)
        if IS_GATED:
            acc_up = tl.dot(g_up_t.to(x.dtype), x, acc_up, input_precision=INPUT_PRECISION)

    mask = mask_n[:, None] & mask_k[None, :]
    out_offs = offs_n[:, None] * stride_dw_n + offs_k[None, :]
    tl.store(dw_ptr + out_offs, rounded_for_store(acc, BF16_RNE), mask=mask)
    if IS_GATED:
        tl.store(dw_up_ptr + out_offs, rounded_for_store(acc_up, BF16_RNE), mask=mask)
    if COMPUTE_DB:
        first_block = tl.full((BLOCK_N,), pid_k, tl.int32) == 0  # only block 0 writes db
        tl.store(db_ptr + offs_n, rounded_for_store(db, BF16_RNE), mask=mask_n & first_block)


_fwd = autotuned(_linear_fwd_kernel)
_bwd_dx = autotuned(_linear_bwd_dx_kernel)
_bwd_dw = autotuned(_linear_bwd_dw_kernel)


def _offset_span(tensor: torch.Tensor) -> int:
    """One past the largest element offset ``tensor`` can reach from its start."""
    dims = zip(tensor.shape, tensor.stride(), strict=True)
    return 1 + sum((size - 1) * abs(stride) for size, stride in dims)


def _needs_int64(*tensors) -> bool:
    return any(t is not None and _offset_span(t) >= _runtime.INT32_LIMIT for t in tensors)


def _precision_flags(kernel, dtype: torch.dtype) -> dict:
    interpreted = _runtime.is_interpreted(kernel)
    full_fp32 = dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32
    return dict(
        DOT_FP32=interpreted,
        INPUT_PRECISION="ieee" if full_fp32 or interpreted else "tf32",
        BF16_RNE=_runtime.software_bf16_rounding(kernel, dtype),
    )


def _layout(x: _runtime.Rows) -> tuple[int, int, int, int]:
    """x's layout arguments; with K == 0 (nothing to read) a harmless one, as an empty tensor's
    folded row count can be 0 and the kernels divide by it."""
    return x.layout_args() if x.n_cols else (1, 0, 0, 0)


def _m_bucket(n_rows: int) -> int:
    return triton.next_power_of_2(max(n_rows, 1))


def _tile_grid(rows_block: str, cols_block: str, n_rows: int, n_cols: int):
    """A 1-D grid with one program per (rows_block, cols_block) tile of an (n_rows, n_cols)
    output, the block sizes read from the chosen config."""

    def grid(meta):
        return (triton.cdiv(n_rows, meta[rows_block]) * triton.cdiv(n_cols, meta[cols_block]),)

    return grid


def linear_fwd(
    x: _runtime.Rows,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    activation: str | None,
    *,
    weight_up: torch.Tensor | None = None,
    store_pre: bool = False,
    out_shape: tuple[int, ...] | None = None,
):
    """``act(x @ weight.T + bias)``, or with ``weight_up`` the gated ``act(x @ weight.T) *
    (x @ weight_up.T)``.

    Args:
        x: rows (M, K) of an fp32/fp16/bf16 tensor, any layout (``_runtime.as_rows``).
        weight, weight_up: (N, K), x's dtype, any strides.
        bias: (N,), x's dtype, or None (must be None when gated).
        activation: one of ``ACTIVATIONS``.
        store_pre: also return the pre-activations the backward needs.
        out_shape: the shape of y (contiguous, M * N elements); default (M, N).
    Returns:
        y: out_shape, contiguous, x's dtype.
        z: (M, N) the pre-activation (gated: x @ weight.T), or None unless ``store_pre``.
        z_up: (M, N) x @ weight_up.T when gated and ``store_pre``, else None.
    Nothing is written in place.
    """
    n_rows, k = x.n_rows, x.n_cols
    n = weight.shape[0]
    dtype, device = x.tensor.dtype, x.tensor.device
    gated = weight_up is not None
    out_shape = out_shape if out_shape is not None else (n_rows, n)
    y = _runtime.empty(out_shape, dtype=dtype, device=device)
    z = _runtime.empty((n_rows, n), dtype=dtype, device=device) if store_pre else None
    z_up = _runtime.empty((n_rows, n), dtype=dtype, device=device) if store_pre and gated else None
    if n_rows == 0 or n == 0:
        return y, z, z_up

    _runtime.check_runnable(_linear_fwd_kernel, "x", x.tensor)
    w_up = weight_up if gated else weight
    _fwd[_tile_grid("BLOCK_M", "BLOCK_N", n_rows, n)](
        x.tensor,
        weight,
        w_up,
        bias if bias is not None else y,
        y,
        z if z is not None else y,
        z_up if z_up is not None else y,
        n_rows,
        n,
        k,
        _m_bucket(n_rows),
        *_layout(x),
        weight.stride(0),
        weight.stride(1),
        w_up.stride(0),
        w_up.stride(1),
        bias.stride(0) if bias is not None else 0,
        n,  # y, z and z_up are contiguous
        ACTIVATION=activation,
        IS_GATED=gated,
        HAS_BIAS=bias is not None,
        STORE_PRE=store_pre,
        INT64_OFFSETS=_needs_int64(x.tensor, weight, w_up, y),
        **_precision_flags(_linear_fwd_kernel, dtype),
    )
    return y, z, z_up


def linear_bwd(
    dy: _runtime.Rows,
    x: _runtime.Rows,
    weight: torch.Tensor,
    z: torch.Tensor | None,
    activation: str | None,
    *,
    weight_up: torch.Tensor | None = None,
    z_up: torch.Tensor | None = None,
    compute_dx: bool = True,
    compute_dw: bool = True,
    compute_db: bool = False,
):
    """Gradients of :func:`linear_fwd`.

    Args:
        dy: rows (M, N), gradient of y, any layout. x: rows (M, K), the forward's input.
        weight, weight_up: as in the forward. z, z_up: the pre-activations the forward stored
            ((M, N) contiguous); z may be None when ``activation`` is None and not gated.
    Returns:
        dx: (M, K) contiguous, or None. dw: (N, K) contiguous, or None. dw_up: (N, K) when
        gated and ``compute_dw``, else None. db: (N,), or None. All in x's dtype.
    """
    n_rows, k = x.n_rows, x.n_cols
    n = weight.shape[0]
    dtype, device = x.tensor.dtype, x.tensor.device
    gated = weight_up is not None
    w_up = weight_up if gated else weight
    z_any = z if z is not None else dy.tensor
    z_up_any = z_up if z_up is not None else z_any
    dx = dw = dw_up = db = None
    if compute_dx:
        dx = _runtime.empty((n_rows, k), dtype=dtype, device=device)
        if n == 0:
            dx.zero_()
        elif n_rows and k:
            _runtime.check_runnable(_linear_bwd_dx_kernel, "dy", dy.tensor)
            _bwd_dx[_tile_grid("BLOCK_M", "BLOCK_K", n_rows, k)](
                dy.tensor,
                z_any,
                z_up_any,
                weight,
                w_up,
                dx,
                n_rows,
                n,
                k,
                _m_bucket(n_rows),
                *dy.layout_args(),
                n,  # z and z_up are contiguous
                weight.stride(0),
                weight.stride(1),
                w_up.stride(0),
                w_up.stride(1),
                k,  # dx is contiguous
                ACTIVATION=activation,
                IS_GATED=gated,
                INT64_OFFSETS=_needs_int64(dy.tensor, z, weight, w_up, dx),
                **_precision_flags(_linear_bwd_dx_kernel, dtype),
            )
    if compute_dw or compute_db:
        dw = _runtime.empty((n, k), dtype=dtype, device=device)
        dw_up = _runtime.empty((n, k), dtype=dtype, device=device) if gated else None
        db = _runtime.empty((n,), dtype=dtype, device=device) if compute_db else None
        if n_rows == 0:
            for grad in (dw, dw_up, db):
                if grad is not None:
                    grad.zero_()
        elif n:
            _runtime.check_runnable(_linear_bwd_dw_kernel, "dy", dy.tensor)
            # At least one K block, so that db is reduced even when K == 0.
            _bwd_dw[_tile_grid("BLOCK_N", "BLOCK_K", n, max(k, 1))](
                dy.tensor,
                z_any,
                z_up_any,
                x.tensor,
                dw,
                dw_up if dw_up is not None else dw,
                db if db is not None else dw,
                n_rows,
                n,
                k,
                _m_bucket(n_rows),
                *dy.layout_args(),
                n,  # z and z_up are contiguous
                *_layout(x),
                k,  # dw and dw_up are contiguous
                ACTIVATION=activation,
                IS_GATED=gated,
                COMPUTE_DB=compute_db,
                INT64_OFFSETS=_needs_int64(dy.tensor, z, x.tensor, dw),
                **_precision_flags(_linear_bwd_dw_kernel, dtype),
            )
        if not compute_dw:
            dw = dw_up = None
    return dx, dw, dw_up, db
