"""Norms on edge cases: constant rows, empty tensors, NaN and inf, repeats, huge tensors."""

from __future__ import annotations

import pytest
import torch

import fastformer
from fastformer import reference

OPS = {
    "layer_norm": (fastformer.layer_norm, reference.layer_norm),
    "rms_norm": (fastformer.rms_norm, reference.rms_norm),
}


@pytest.mark.parametrize("n_cols", [7, 1000, 20000])
def test_constant_rows_with_tiny_eps_give_the_bias(device, n_cols):
    """Zero variance with eps=1e-12 in fp16: rstd is huge, yet x - mean is exactly 0."""
    x = torch.full((3, n_cols), 0.3, device=device, dtype=torch.float16)
    x[1] = -2.5
    x.requires_grad_()
    w = torch.randn(n_cols, device=device, dtype=torch.float16, requires_grad=True)
    b = torch.randn(n_cols, device=device, dtype=torch.float16, requires_grad=True)
    out = fastformer.layer_norm(x, n_cols, w, b, eps=1e-12)
    assert torch.equal(out, b.detach().expand_as(out))
    out.backward(torch.randn_like(out))
    # dx is of order 1/sqrt(eps) = 1e6: past fp16's range it is inf, as in eager, but never NaN.
    assert not torch.isnan(x.grad).any()
    assert torch.isfinite(w.grad).all() and torch.isfinite(b.grad).all()


@pytest.mark.parametrize("shape", [(0, 16), (2, 0, 16), (4, 0)], ids=["rows0", "batch0", "cols0"])
@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("op", list(OPS))
def test_empty_inputs(device, op, shape, residual):
    """CASES A5 for norms: empty outputs and gradients of the right shape, no launch error."""
    kernel, ref = OPS[op]
    n_cols = shape[-1]
    x = torch.randn(shape, device=device, requires_grad=True)
    r = torch.randn(shape, device=device, requires_grad=True) if residual else None
    w = torch.randn(n_cols, device=device, requires_grad=True)
    out = kernel(x, n_cols, w, residual=r)
    expected = ref(x.detach(), (n_cols,), w.detach(), residual=r)
    outs = out if residual else (out,)
    expected = expected if residual else (expected,)
    for got, want in zip(outs, expected, strict=True):
        assert got.shape == want.shape and got.dtype == want.dtype
    sum(o.sum() for o in outs).backward()
    assert x.grad.shape == x.shape
    assert torch.equal(w.grad, torch.zeros_like(w))
    if residual:
        assert r.grad.shape == r.shape


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")], ids=str)
@pytest.mark.parametrize("op", list(OPS))
def test_nan_and_inf_propagate_as_in_eager(check, device, op, bad):
    """A non-finite element poisons its own row exactly as in eager; other rows are untouched."""
    kernel, ref = OPS[op]
    x = torch.randn(5, 64, device=device)
    x[2, 10] = bad
    w = torch.randn(64, device=device)
    check(lambda x, w: kernel(x, 64, w), lambda x, w: ref(x, (64,), w), [x, w])


@pytest.mark.parametrize("n_cols", [512, 20000], ids=["fused", "long_row"])
@pytest.mark.parametrize("op", list(OPS))
def test_repeated_backward_is_bitwise_identical(device, op, n_cols):
    """CASES N4 at a CPU-sized shape: the dweight/dbias reduction gives the same bits every time."""
    kernel, _ = OPS[op]
    n_rows = 64 if n_cols == 512 else 9
    x = torch.randn(n_rows, n_cols, device=device, dtype=torch.float16, requires_grad=True)
    w = torch.randn(n_cols, device=device, dtype=torch.float16, requires_grad=True)
    dy = torch.randn(n_rows, n_cols, device=device, dtype=torch.float16)
    grads = [torch.autograd.grad(kernel(x, n_cols, w), (x, w), dy) for _ in range(20)]
    for dx, dw in grads[1:]:
        assert torch.equal(dx, grads[0][0]) and torch.equal(dw, grads[0][1])


@pytest.mark.gpu
@pytest.mark.parametrize("op", list(OPS))
def test_repeated_backward_at_scale(check, device, op):
    """CASES N4: 8192 x 2048 fp16, 20 backwards, dweight correct and identical every time."""
    kernel, ref = OPS[op]
    x = torch.randn(8192, 2048, device=device, dtype=torch.float16, requires_grad=True)
    w = torch.randn(2048, device=device, dtype=torch.float16, requires_grad=True)
    check(lambda x, w: kernel(x, 2048, w), lambda x, w: ref(x, (2048,), w), [x, w])
    dy = torch.randn_like(x)
    first = torch.autograd.grad(kernel(x, 2048, w), w, dy)[0]
    for _ in range(19):
        assert torch.equal(torch.autograd.grad(kernel(x, 2048, w), w, dy)[0], first)


@pytest.mark.gpu
def test_more_than_2_31_elements(device):
    """CASES N3: int64 offsets; the last rows are right (and no illegal memory access)."""
    n_cols = 4096
    n_rows = 2**31 // n_cols + 8
    x = torch.randn(n_rows, n_cols, device=device, dtype=torch.bfloat16)
    w = torch.randn(n_cols, device=device, dtype=torch.bfloat16)
    out = fastformer.layer_norm(x, n_cols, w)
    tail = slice(n_rows - 16, n_rows)
    expected = reference.layer_norm(x[tail].double(), (n_cols,), w.double())
    torch.testing.assert_close(out[tail].double(), expected, atol=3e-2, rtol=2e-2)
