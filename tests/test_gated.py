"""fastformer.gated_linear (GeGLU, SwiGLU) against the float64 reference: outputs and every
gradient, at decode and batch sizes, odd shapes, layouts and empty tensors."""

from __future__ import annotations

import functools

import pytest
import torch

import fastformer
from fastformer import reference

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
DTYPE_IDS = ["fp32", "fp16", "bf16"]
ACTIVATIONS = ["silu", "gelu", "gelu_tanh", "relu"]
# (M, K, N): K and N not multiples of any block.
SHAPES = [(1, 100, 300), (7, 130, 333), (64, 200, 260)]
NAMES = ["x", "weight_gate", "weight_up"]


def _shape_id(shape):
    return "M{}_K{}_N{}".format(*shape)


def _leaves(m, k, n, dtype, device, *, lead=()):
    x = torch.randn(*lead, m, k, device=device).to(dtype).requires_grad_()
    w_gate = (torch.randn(n, k, device=device) / k**0.5).to(dtype).requires_grad_()
    w_up = (torch.randn(n, k, device=device) / k**0.5).to(dtype).requires_grad_()
    return [x, w_gate, w_up]


def _check_gated(check, leaves, activation, *, view=None):
    view = view or (lambda x: x)

    def run(fn, x, w_gate, w_up):
        return fn(view(x), w_gate, w_up, activation)

    check(
        functools.partial(run, fastformer.gated_linear),
        functools.partial(run, reference.gated_linear),
        leaves,
        names=NAMES,
    )


@pytest.mark.parametrize("shape", SHAPES, ids=_shape_id)
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_matches_reference(check, device, dtype, activation, shape):
    _check_gated(check, _leaves(*shape, dtype, device), activation)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_3d_input(check, device, dtype):
    _check_gated(check, _leaves(9, 96, 200, dtype, device, lead=(3,)), "gelu_tanh")


def test_non_contiguous_x(check, device):
    """x seq-major (transposed leading dims) and every other feature: read in place."""
    x = torch.randn(5, 3, 2 * 64, device=device, dtype=torch.bfloat16).requires_grad_()
    w_gate = (torch.randn(120, 64, device=device) / 8).to(torch.bfloat16).requires_grad_()
    w_up = (torch.randn(120, 64, device=device) / 8).to(torch.bfloat16).requires_grad_()
    _check_gated(check, [x, w_gate, w_up], "silu", view=lambda x: x.transpose(0, 1)[..., ::2])


def test_single_row_large_odd_sizes(check, device):
    """CASES F3 for the gated form: M = 1, K = 1000, N = 3000."""
    _check_gated(check, _leaves(1, 1000, 3000, torch.bfloat16, device), "silu")


@pytest.mark.parametrize("shape", [(0, 16, 24), (5, 0, 24), (5, 16, 0)], ids=_shape_id)
def test_empty(device, shape):
    """CASES A5: empty outputs and gradients of the right shape, no launch error."""
    m, k, n = shape
    leaves = _leaves(m, k, n, torch.float32, device, lead=(2,))
    y = fastformer.gated_linear(*leaves, "gelu")
    ref_leaves = [t.detach().double().requires_grad_() for t in leaves]
    expected = reference.gated_linear(*ref_leaves, "gelu")
    assert y.shape == expected.shape
    torch.testing.assert_close(y.double(), expected.detach())
    dy = torch.randn_like(y)
    grads = torch.autograd.grad(y, leaves, dy)
    want = torch.autograd.grad(expected, ref_leaves, dy.double())
    for got, ref in zip(grads, want, strict=True):
        assert got.shape == ref.shape
        torch.testing.assert_close(got.double(), ref)


def test_inference_builds_no_graph(device):
    leaves = _leaves(7, 64, 96, torch.float16, device)
    with torch.no_grad():
        y = fastformer.gated_linear(*leaves)
    assert y.grad_fn is None
    torch.testing.assert_close(y, fastformer.gated_linear(*leaves).detach())


@pytest.mark.gpu
@pytest.mark.parametrize("m", [1, 512, 4096])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_benchmark_shapes_on_gpu(check, device, dtype, m):
    """LLaMA-7B's gate/up GEMM (4096 -> 11008), every gradient."""
    _check_gated(check, _leaves(m, 4096, 11008, dtype, device), "silu")
