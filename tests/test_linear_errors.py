"""Every rejection path of linear and gated_linear: a clear exception naming the argument,
raised before any launch."""

from __future__ import annotations

import pytest
import torch

import fastformer

LIN, GATED = fastformer.linear, fastformer.gated_linear


def _x(dtype=torch.float32):
    return torch.randn(4, 8, dtype=dtype)


def _w(n=6, k=8, dtype=torch.float32, device="cpu"):
    return torch.randn(n, k, dtype=dtype, device=device)


CASES = [
    ("x_not_tensor", lambda: LIN([1.0] * 8, _w()), TypeError, "x must be"),
    ("x_int", lambda: LIN(torch.ones(4, 8, dtype=torch.int32), _w()), TypeError, "x.dtype="),
    ("x_fp64", lambda: LIN(_x(torch.float64), _w()), TypeError, "x.dtype=torch.float64"),
    ("x_0d", lambda: LIN(torch.tensor(1.0), _w()), ValueError, "x.shape=()"),
    ("weight_not_tensor", lambda: LIN(_x(), [[1.0] * 8]), TypeError, "weight must be"),
    ("weight_1d", lambda: LIN(_x(), torch.ones(8)), ValueError, "weight.shape=(8,) must be 2-D"),
    ("k_mismatch", lambda: LIN(_x(), _w(6, 7)), ValueError, "in_features=7 must equal x.shape"),
    ("weight_dtype", lambda: LIN(_x(), _w().half()), TypeError, "weight.dtype=torch.float16"),
    ("weight_int", lambda: LIN(_x(), _w().long()), TypeError, "weight.dtype=torch.int64"),
    ("weight_device", lambda: LIN(_x(), _w(device="meta")), ValueError, "weight is on meta"),
    ("bias_shape", lambda: LIN(_x(), _w(), torch.ones(5)), ValueError, "bias.shape=(5,)"),
    ("bias_2d", lambda: LIN(_x(), _w(), torch.ones(1, 6)), ValueError, "bias.shape=(1, 6)"),
    ("bias_dtype", lambda: LIN(_x(), _w(), torch.ones(6).half()), TypeError, "bias.dtype="),
    ("bias_device", lambda: LIN(_x(), _w(), torch.ones(6, device="meta")), ValueError, "bias is"),
    ("bias_not_tensor", lambda: LIN(_x(), _w(), [0.0] * 6), TypeError, "bias must be"),
    ("activation_name", lambda: LIN(_x(), _w(), None, "tanh"), ValueError, "activation='tanh'"),
    ("activation_type", lambda: LIN(_x(), _w(), None, torch.nn.GELU()), TypeError, "activation"),
    ("gated_up_shape", lambda: GATED(_x(), _w(), _w(5)), ValueError, "weight_up.shape=(5, 8)"),
    ("gated_gate_k", lambda: GATED(_x(), _w(6, 9), _w()), ValueError, "weight_gate.shape=(6, 9)"),
    ("gated_up_dtype", lambda: GATED(_x(), _w(), _w().half()), TypeError, "weight_up.dtype="),
    (
        "gated_up_device",
        lambda: GATED(_x(), _w(), _w(device="meta")),
        ValueError,
        "weight_up is on meta",
    ),
    ("gated_no_activation", lambda: GATED(_x(), _w(), _w(), None), ValueError, "activation=None"),
    (
        "gated_bad_name",
        lambda: GATED(_x(), _w(), _w(), "swiglu"),
        ValueError,
        "activation='swiglu'",
    ),
    ("gated_x_int", lambda: GATED(_x().long(), _w(), _w()), TypeError, "x.dtype=torch.int64"),
]


@pytest.mark.parametrize(
    ("call", "error", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_rejects_bad_input(call, error, message):
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        call()


def test_interpreted_kernels_refuse_non_cpu_tensors():
    from fastformer.kernels import _runtime
    from fastformer.kernels.linear import _linear_fwd_kernel, linear_fwd

    if not _runtime.is_interpreted(_linear_fwd_kernel):
        pytest.skip("kernels are compiled for CUDA in this run, not interpreted")
    x = torch.ones(2, 8, device="meta")
    with pytest.raises(RuntimeError, match="interpreter"):
        linear_fwd(_runtime.as_rows(x, 1), torch.ones(4, 8, device="meta"), None, "gelu")


def test_double_backward_is_refused_even_for_a_linear_loss():
    x = torch.randn(3, 8, requires_grad=True)
    w = torch.randn(5, 8, requires_grad=True)
    out = fastformer.linear(x, w, None, "gelu")
    with pytest.raises(RuntimeError, match="no double backward"):
        torch.autograd.grad(out.sum(), x, create_graph=True)
