"""LayerNorm and RMSNorm kernels against the float64 reference: outputs and every gradient."""

from __future__ import annotations

import functools

import pytest
import torch

import fastformer
from fastformer import reference

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
DTYPE_IDS = ["fp32", "fp16", "bf16"]
# Far from zero mean (CASES N1): masked lanes entering the variance would show at once.
MEAN_OFFSET = 5.0


def _ops(op: str):
    if op == "layer_norm":
        return fastformer.layer_norm, reference.layer_norm
    return fastformer.rms_norm, reference.rms_norm


def _leaves(shape, norm_shape, dtype, device, *, residual, affine, op):
    x = (torch.randn(shape, device=device) + MEAN_OFFSET).to(dtype).requires_grad_()
    r = torch.randn(shape, device=device).to(dtype).requires_grad_() if residual else None
    w = b = None
    if affine:
        w = (1 + 0.5 * torch.randn(norm_shape, device=device)).to(dtype).requires_grad_()
        if op == "layer_norm":
            b = torch.randn(norm_shape, device=device).to(dtype).requires_grad_()
    return x, r, w, b


def _call(fn, op, norm_shape, eps, x, r, w, b):
    if op == "layer_norm":
        return fn(x, norm_shape, w, b, eps, residual=r)
    return fn(x, norm_shape, w, eps, residual=r)


def _check_norm(check, op, shape, n_norm_dims, dtype, device, *, residual, affine, eps=1e-5):
    norm_shape = tuple(shape[len(shape) - n_norm_dims :])
    kernel, ref = _ops(op)
    leaves = _leaves(shape, norm_shape, dtype, device, residual=residual, affine=affine, op=op)
    check(
        functools.partial(_call, kernel, op, norm_shape, eps),
        functools.partial(_call, ref, op, norm_shape, eps),
        leaves,
        names=["x", "residual", "weight", "bias"],
    )


OPS = ["layer_norm", "rms_norm"]
# Many rows per program too ((259, 64), (37, 1000)): the cross-row dweight reduction is exercised.
SHAPES = [(6, 1), (3, 7, 64), (259, 64), (37, 1000), (2, 1536), (3, 4097)]


@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("op", OPS)
def test_matches_reference(check, device, op, dtype, shape, residual):
    _check_norm(check, op, shape, 1, dtype, device, residual=residual, affine=True)


@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("n_cols", [8192, 16384, 32768, 65536, 131072])
@pytest.mark.parametrize("dtype", DTYPES[1:], ids=DTYPE_IDS[1:])
@pytest.mark.parametrize("op", OPS)
def test_long_rows(check, device, op, dtype, n_cols, residual):
    """CASES N2: rows wider than one block loop over the row instead of failing.

    More rows than the interpreter's programs, so some program adds two rows into dweight.
    """
    n_rows = 6 if n_cols <= 32768 else 5
    _check_norm(check, op, (n_rows, n_cols), 1, dtype, device, residual=residual, affine=True)


@pytest.mark.parametrize("op", OPS)
def test_without_affine(check, device, op):
    _check_norm(check, op, (5, 300), 1, torch.float32, device, residual=True, affine=False)


def test_weight_without_bias_and_bias_without_weight(check, device):
    x = torch.randn(4, 96, device=device).requires_grad_()
    w = torch.randn(96, device=device).requires_grad_()
    for as_weight in (True, False):

        def params(p, as_weight=as_weight):
            return (p, None) if as_weight else (None, p)

        check(
            lambda x, p, params=params: fastformer.layer_norm(x, 96, *params(p)),
            lambda x, p, params=params: reference.layer_norm(x, (96,), *params(p)),
            [x, w],
        )


@pytest.mark.parametrize("op", OPS)
def test_multi_dim_normalized_shape(check, device, op):
    _check_norm(check, op, (3, 5, 4, 24), 2, torch.float16, device, residual=True, affine=True)


@pytest.mark.parametrize("dtype", DTYPES[1:], ids=DTYPE_IDS[1:])
@pytest.mark.parametrize("op", OPS)
def test_fp32_parameters_with_low_precision_input(check, device, op, dtype):
    """Mixed precision: fp32 weight and bias with fp16/bf16 activations; output in x's dtype."""
    kernel, ref = _ops(op)
    x = (torch.randn(4, 200, device=device) + MEAN_OFFSET).to(dtype).requires_grad_()
    w = torch.randn(200, device=device, requires_grad=True)
    b = torch.randn(200, device=device, requires_grad=True)
    bias = b if op == "layer_norm" else None
    out = _call(kernel, op, (200,), 1e-5, x, None, w, bias)
    assert out.dtype == dtype
    out.backward(torch.randn_like(out))
    assert w.grad.dtype == torch.float32
    leaves = [x, w, b] if op == "layer_norm" else [x, w, None]
    check(
        lambda x, w, b: _call(kernel, op, (200,), 1e-5, x, None, w, b),
        lambda x, w, b: _call(ref, op, (200,), 1e-5, x, None, w, b),
        leaves,
    )


@pytest.mark.gpu
@pytest.mark.parametrize("n_cols", [1024, 4096, 8192, 16384, 65536])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("op", OPS)
def test_realistic_sizes_on_gpu(check, device, op, dtype, n_cols):
    """The benchmark's shapes (4096 rows), every path: fused, wide fused and looping rows."""
    _check_norm(check, op, (4096, n_cols), 1, dtype, device, residual=True, affine=True)
