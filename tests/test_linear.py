"""fastformer.linear against the float64 reference: outputs and every gradient (CASES F1-F3, A5)."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F

import fastformer
from fastformer import reference

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
DTYPE_IDS = ["fp32", "fp16", "bf16"]
ACTIVATIONS = [None, "gelu", "gelu_tanh", "relu", "silu"]
ACTIVATION_IDS = ["none", "gelu", "gelu_tanh", "relu", "silu"]
# (M, K, N): decode-sized and batch-sized M, K and N not multiples of any block.
SHAPES = [(1, 100, 300), (7, 130, 333), (64, 257, 384)]
NAMES = ["x", "weight", "bias"]
# F1: the GELUs must match torch's to this absolute error in fp32.
GELU_ATOL = 1e-6
GELU_RANGE = 10.0
GELU_POINTS = 2001


def _shape_id(shape):
    return "M{}_K{}_N{}".format(*shape)


def _leaves(m, k, n, dtype, device, *, bias=True, lead=()):
    """x, weight and bias with nn.Linear's initial scale (outputs of order one)."""
    x = torch.randn(*lead, m, k, device=device).to(dtype).requires_grad_()
    w = (torch.randn(n, k, device=device) / k**0.5).to(dtype).requires_grad_()
    b = torch.randn(n, device=device).to(dtype).requires_grad_() if bias else None
    return [x, w, b]


def _check_linear(check, leaves, activation, *, view=None):
    """Kernel vs reference on ``view(x)`` (default: x itself), gradients taken on the leaves."""
    view = view or (lambda x: x)

    def run(fn, x, w, b):
        return fn(view(x), w, b, activation)

    check(
        functools.partial(run, fastformer.linear),
        functools.partial(run, reference.linear),
        leaves,
        names=NAMES,
    )


@pytest.mark.parametrize("shape", SHAPES, ids=_shape_id)
@pytest.mark.parametrize("activation", ACTIVATIONS, ids=ACTIVATION_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_matches_reference(check, device, dtype, activation, shape):
    _check_linear(check, _leaves(*shape, dtype, device), activation)


@pytest.mark.parametrize("shape", SHAPES, ids=_shape_id)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_without_bias(check, device, dtype, shape):
    _check_linear(check, _leaves(*shape, dtype, device, bias=False), "gelu")


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_3d_input(check, device, dtype):
    _check_linear(check, _leaves(9, 96, 200, dtype, device, lead=(3,)), "gelu_tanh")


VIEWS = {
    # (batch, seq) stored seq-major: two row strides, read in place.
    "transposed_rows": (lambda x: x.transpose(0, 1), (5, 3)),
    # Every other feature: a column stride of 2.
    "strided_cols": (lambda x: x[..., ::2], (4, 6)),
    # A slice of a wider buffer, as from a fused projection.
    "sliced_cols": (lambda x: x[..., 40:], (4, 6)),
}


@pytest.mark.parametrize("view_name", list(VIEWS))
def test_non_contiguous_x(check, device, view_name):
    view, (a, b) = VIEWS[view_name]
    k = 96
    width = {"strided_cols": 2 * k, "sliced_cols": k + 40}.get(view_name, k)
    x = torch.randn(a, b, width, device=device, dtype=torch.float16).requires_grad_()
    w = (torch.randn(150, k, device=device) / k**0.5).half().requires_grad_()
    bias = torch.randn(150, device=device, dtype=torch.float16).requires_grad_()
    _check_linear(check, [x, w, bias], "silu", view=view)


def test_transposed_weight(check, device):
    """A weight stored (in, out) and passed as its transpose, as a Conv1D's is."""
    x = torch.randn(7, 64, device=device).requires_grad_()
    w_t = (torch.randn(64, 120, device=device) / 8).requires_grad_()
    check(
        lambda x, w_t: fastformer.linear(x, w_t.T, None, "gelu"),
        lambda x, w_t: reference.linear(x, w_t.T, None, "gelu"),
        [x, w_t],
    )


def test_expanded_grad_output(device):
    """dy with stride 0 (the gradient of a sum) is read in place."""
    x = torch.randn(5, 32, device=device, requires_grad=True)
    w = torch.randn(48, 32, device=device, requires_grad=True)
    b = torch.randn(48, device=device, requires_grad=True)
    fastformer.linear(x, w, b, "relu").sum().backward()
    x64, w64, b64 = (t.detach().double().requires_grad_() for t in (x, w, b))
    reference.linear(x64, w64, b64, "relu").sum().backward()
    for got, want in ((x.grad, x64.grad), (w.grad, w64.grad), (b.grad, b64.grad)):
        torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("activation", ["gelu", "gelu_tanh"])
def test_gelu_over_minus_10_to_10(device, activation):
    """CASES F1: fp32 GELU through the epilogue (K = 1, weight 1, so z = x exactly) within 1e-6
    of torch's, the negative tail included; its derivative likewise."""
    x = torch.linspace(-GELU_RANGE, GELU_RANGE, GELU_POINTS, device=device)[:, None]
    x.requires_grad_()
    w = torch.ones(1, 1, device=device)
    approximate = "tanh" if activation == "gelu_tanh" else "none"
    y = fastformer.linear(x, w, None, activation)
    expected = F.gelu(x.detach(), approximate=approximate)
    torch.testing.assert_close(y, expected, atol=GELU_ATOL, rtol=0)
    (dx,) = torch.autograd.grad(y, x, torch.ones_like(y))
    x_ref = x.detach().clone().requires_grad_()
    (dx_ref,) = torch.autograd.grad(F.gelu(x_ref, approximate=approximate).sum(), x_ref)
    torch.testing.assert_close(dx, dx_ref, atol=GELU_ATOL, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_single_row_large_odd_sizes(check, device, dtype):
    """CASES F3: M = 1, K = 1000, N = 3000 (no dimension a multiple of a block)."""
    _check_linear(check, _leaves(1, 1000, 3000, dtype, device), "gelu")


EMPTY = [(0, 16, 24), (5, 0, 24), (5, 16, 0)]


@pytest.mark.parametrize("activation", ["gelu", None], ids=["gelu", "none"])
@pytest.mark.parametrize("shape", EMPTY, ids=_shape_id)
def test_empty(device, shape, activation):
    """CASES A5: empty outputs and gradients of the right shape; K = 0 gives act(bias)."""
    m, k, n = shape
    x, w, b = _leaves(m, k, n, torch.float32, device, lead=(2,))
    y = fastformer.linear(x, w, b, activation)
    x64, w64, b64 = (t.detach().double().requires_grad_() for t in (x, w, b))
    expected = reference.linear(x64, w64, b64, activation)
    assert y.shape == expected.shape and y.dtype == x.dtype
    torch.testing.assert_close(y.double(), expected.detach())
    dy = torch.randn_like(y)
    grads = torch.autograd.grad(y, (x, w, b), dy)
    want = torch.autograd.grad(expected, (x64, w64, b64), dy.double())
    for got, ref in zip(grads, want, strict=True):
        assert got.shape == ref.shape
        torch.testing.assert_close(got.double(), ref, atol=1e-5, rtol=1e-5)


def test_inference_writes_no_pre_activation(device):
    """Without grad the op builds no autograd node (so nothing is saved) and gives the same y."""
    x, w, b = _leaves(7, 64, 96, torch.float32, device)
    with torch.no_grad():
        y = fastformer.linear(x, w, b, "gelu")
    assert y.grad_fn is None
    torch.testing.assert_close(y, fastformer.linear(x, w, b, "gelu").detach())


def test_one_dimensional_input(check, device):
    """x of shape (in_features,), as F.linear accepts it."""
    x = torch.randn(64, device=device, requires_grad=True)
    w = torch.randn(80, 64, device=device, requires_grad=True)
    b = torch.randn(80, device=device, requires_grad=True)
    _check_linear(check, [x, w, b], "silu")


def test_only_weight_requires_grad(device):
    x, w, b = _leaves(7, 64, 96, torch.float16, device)
    x.requires_grad_(False)
    b.requires_grad_(False)
    y = fastformer.linear(x, w, b, "gelu")
    (dw,) = torch.autograd.grad(y, w, torch.ones_like(y))
    assert dw.shape == w.shape and dw.dtype == w.dtype and torch.isfinite(dw).all()


@pytest.mark.gpu
def test_output_past_2_31_elements(device):
    """CASES F2: an output of more than 2**31 elements; the last rows are right."""
    n, k = 4096, 64
    m = 2**31 // n + 64
    x = torch.randn(m, k, device=device, dtype=torch.bfloat16)
    w = (torch.randn(n, k, device=device) / k**0.5).to(torch.bfloat16)
    b = torch.randn(n, device=device, dtype=torch.bfloat16)
    y = fastformer.linear(x, w, b, "gelu")
    tail = slice(m - 128, m)
    expected = reference.linear(x[tail].double(), w.double(), b.double(), "gelu")
    torch.testing.assert_close(y[tail].double(), expected, atol=3e-2, rtol=2e-2)


@pytest.mark.gpu
@pytest.mark.parametrize("m", [1, 512, 4096])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_benchmark_shapes_on_gpu(check, device, dtype, m):
    """BERT-base's first GEMM (768 -> 3072) at decode and batch sizes, every gradient."""
    _check_linear(check, _leaves(m, 768, 3072, dtype, device), "gelu")


@pytest.mark.parametrize("gated", [False, True], ids=["linear", "gated"])
def test_int64_offset_path(check, device, monkeypatch, gated):
    """The kernels' int64-offset variant (taken for tensors past 2**31 elements, CASES F2), forced
    on a small shape so that it runs here too, forward and backward."""
    from fastformer.kernels import linear as linear_kernels

    monkeypatch.setattr(linear_kernels, "_needs_int64", lambda *tensors: True)
    x, w, b = _leaves(7, 130, 200, torch.bfloat16, device)
    if gated:
        w_up = (torch.randn_like(w, dtype=torch.float32) / 130**0.5).to(w.dtype)
        check(fastformer.gated_linear, reference.gated_linear, [x, w, w_up.requires_grad_()])
    else:
        _check_linear(check, [x, w, b], "gelu")


def test_repeated_backward_is_bitwise_identical(device):
    """No atomics: every dW/db tile is reduced by one program, so repeats give the same bits."""
    x, w, b = _leaves(70, 96, 200, torch.bfloat16, device)
    dy = torch.randn(70, 200, device=device).to(torch.bfloat16)
    first = torch.autograd.grad(fastformer.linear(x, w, b, "gelu"), (x, w, b), dy)
    for _ in range(3):
        again = torch.autograd.grad(fastformer.linear(x, w, b, "gelu"), (x, w, b), dy)
        assert all(torch.equal(a, f) for a, f in zip(again, first, strict=True))
