"""Inputs that broke these norms once (found by trying to break them); each stays fixed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fastformer
from fastformer import reference
from fastformer.kernels import _runtime


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_rms_norm_default_eps_is_torchs(device, dtype):
    """eps=None is fp32's epsilon, as in torch; small inputs make any other eps visible."""
    x = (0.01 * torch.randn(4, 1024, device=device)).to(dtype)
    w = torch.randn(1024, device=device).to(dtype)
    expected = F.rms_norm(x.float(), (1024,), w.float())
    torch.testing.assert_close(
        fastformer.rms_norm(x, 1024, w).float(), expected, atol=0.05, rtol=0.02
    )
    module = fastformer.nn.RMSNorm(1024).to(device=device, dtype=dtype)
    theirs = torch.nn.RMSNorm(1024).to(device=device)
    torch.testing.assert_close(module(x).float(), theirs(x.float()), atol=0.05, rtol=0.02)


def test_column_offsets_past_int32_are_copied_not_overflowed():
    """A transposed view of a huge tensor: its rows are copied, never addressed past int32."""
    n_cols, n_rows_base = 4096, 2**31 // 4095 + 1000
    huge = torch.empty(n_cols, n_rows_base, device="meta")
    rows = _runtime.as_rows(huge.t()[:3], 1)
    assert rows.stride_col == 1 and rows.tensor.is_contiguous()
    small = torch.empty(n_cols, 1000, device="meta")
    assert _runtime.as_rows(small.t()[:3], 1).stride_col == 1000  # still read in place


@pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])
def test_in_place_ops_on_outputs_under_autograd(device, op):
    kernel, ref = getattr(fastformer, op), getattr(reference, op)
    x = torch.randn(4, 3, 64, device=device, requires_grad=True)
    r = torch.randn(4, 3, 64, device=device, requires_grad=True)
    y, h = kernel(x, 64, residual=r)
    y.mul_(2).add_(1)
    (y.sum() + h.sum()).backward()
    xe, re = x.detach().clone().requires_grad_(), r.detach().clone().requires_grad_()
    ye, he = ref(xe, (64,), residual=re)
    ((2 * ye + 1).sum() + he.sum()).backward()
    torch.testing.assert_close(x.grad, xe.grad, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(r.grad, re.grad, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("n_cols", [256, 20000], ids=["fused", "long_row"])
def test_bf16_results_round_to_nearest(device, n_cols):
    """The residual sum is exactly eager's bf16 x + r (rounded, not truncated)."""
    x = torch.randn(3, n_cols, device=device).bfloat16()
    r = torch.randn(3, n_cols, device=device).bfloat16()
    y, h = fastformer.rms_norm(x, n_cols, residual=r)
    assert torch.equal(h, x + r)
    expected = reference.rms_norm(h.double(), (n_cols,), eps=1e-6)
    assert (y.double() - expected).abs().max() <= 2**-8 * expected.abs().max()


@pytest.mark.parametrize("value", [1000.1, 3.3, -0.1])
@pytest.mark.parametrize("n_cols", [1000, 20000], ids=["fused", "long_row"])
def test_fp32_constant_rows_normalise_to_exact_zero(device, value, n_cols):
    x = torch.full((2, n_cols), value, device=device)
    assert torch.equal(fastformer.layer_norm(x, n_cols), torch.zeros_like(x))
    y, _ = fastformer.layer_norm(x - 1.0, n_cols, residual=torch.ones_like(x))
    assert torch.equal(y, torch.zeros_like(x))


def test_torch_compile_of_a_module_matches_eager(device):
    """torch.compile (dynamo + AOTAutograd) around the op: same forward and gradients."""
    module = torch.nn.Sequential(torch.nn.Linear(32, 32), fastformer.nn.LayerNorm(32)).to(device)
    compiled = torch.compile(module, backend="aot_eager")
    x = torch.randn(4, 32, device=device)
    out, out_compiled = module(x), compiled(x)
    torch.testing.assert_close(out_compiled, out)
    grads = torch.autograd.grad(out.sum(), list(module.parameters()))
    grads_compiled = torch.autograd.grad(compiled(x).sum(), list(module.parameters()))
    for ours, theirs in zip(grads_compiled, grads, strict=True):
        torch.testing.assert_close(ours, theirs)


@pytest.mark.parametrize(
    "normalized_shape",
    [np.int64(8), torch.Size([8]), torch.tensor(8), [8], (np.int32(8),)],
    ids=str,
)
def test_normalized_shape_accepts_integer_likes(device, normalized_shape):
    x = torch.randn(3, 8, device=device)
    torch.testing.assert_close(fastformer.layer_norm(x, normalized_shape), F.layer_norm(x, (8,)))


@pytest.mark.parametrize(
    "normalized_shape",
    [None, 8.0, (8.0,), (n for n in [8])],
    ids=["None", "float", "floats", "generator"],
)
def test_normalized_shape_rejects_non_integers(normalized_shape):
    with pytest.raises(TypeError, match="normalized_shape must be an int or a sequence of ints"):
        fastformer.layer_norm(torch.randn(3, 8), normalized_shape)


def test_sparse_input_is_rejected_by_name():
    with pytest.raises(TypeError, match="x.layout=torch.sparse_coo"):
        fastformer.rms_norm(torch.randn(3, 8).to_sparse(), 8)


def test_submodules_are_reachable_from_the_package():
    import fastformer as package

    assert package.nn.LayerNorm is fastformer.nn.LayerNorm
    with pytest.raises(AttributeError, match="no attribute 'missing'"):
        package.missing  # noqa: B018
