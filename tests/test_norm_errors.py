"""Every rejection path of the norms: a clear exception naming the argument, before any launch."""

from __future__ import annotations

import pytest
import torch

import fastformer
from fastformer.kernels import _runtime
from fastformer.kernels.norm import norm_fwd

LN, RMS = fastformer.layer_norm, fastformer.rms_norm


def _x():
    return torch.randn(4, 8)


CASES = [
    ("x_not_tensor", lambda: LN([1.0, 2.0], 2), TypeError, "x must be"),
    ("x_int", lambda: LN(torch.ones(4, 8, dtype=torch.int32), 8), TypeError, "x.dtype=torch.int32"),
    ("x_fp64", lambda: RMS(_x().double(), 8), TypeError, "x.dtype=torch.float64"),
    ("shape_mismatch", lambda: LN(_x(), 7), ValueError, "normalized_shape=(7,)"),
    ("shape_too_long", lambda: LN(_x(), (2, 4, 8)), ValueError, "normalized_shape=(2, 4, 8)"),
    ("shape_empty", lambda: LN(_x(), ()), ValueError, "normalized_shape=()"),
    ("shape_not_int", lambda: LN(_x(), "8"), TypeError, "normalized_shape"),
    ("weight_shape", lambda: LN(_x(), 8, torch.ones(7)), ValueError, "weight.shape=(7,)"),
    ("bias_shape", lambda: LN(_x(), 8, None, torch.ones(4, 2)), ValueError, "bias.shape=(4, 2)"),
    (
        "weight_dtype",
        lambda: LN(_x().half(), 8, torch.ones(8, dtype=torch.bfloat16)),
        TypeError,
        "weight.dtype=torch.bfloat16",
    ),
    (
        "weight_int",
        lambda: RMS(_x(), 8, torch.ones(8, dtype=torch.int64)),
        TypeError,
        "weight.dtype=torch.int64",
    ),
    (
        "weight_device",
        lambda: LN(_x(), 8, torch.ones(8, device="meta")),
        ValueError,
        "weight is on meta",
    ),
    ("weight_not_tensor", lambda: LN(_x(), 8, [1.0] * 8), TypeError, "weight must be"),
    (
        "residual_shape",
        lambda: LN(_x(), 8, residual=torch.ones(2, 8)),
        ValueError,
        "residual.shape=(2, 8)",
    ),
    (
        "residual_dtype",
        lambda: RMS(_x(), 8, residual=torch.ones(4, 8).half()),
        TypeError,
        "residual.dtype=torch.float16",
    ),
    (
        "residual_device",
        lambda: RMS(_x(), 8, residual=torch.ones(4, 8, device="meta")),
        ValueError,
        "residual is on meta",
    ),
    ("eps_negative", lambda: LN(_x(), 8, eps=-1e-5), ValueError, "eps=-1e-05"),
    ("eps_nan", lambda: RMS(_x(), 8, eps=float("nan")), ValueError, "eps=nan"),
    ("eps_not_number", lambda: RMS(_x(), 8, eps="small"), TypeError, "eps must be"),
]


@pytest.mark.parametrize(
    ("call", "error", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_rejects_bad_input(call, error, message):
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        call()


def test_kernels_refuse_tensors_they_cannot_run_on():
    """A kernel compiled for CUDA refuses CPU tensors with instructions, never a raw error."""

    def compiled_kernel():  # stands in for a kernel defined without the interpreter
        pass

    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        _runtime.check_runnable(compiled_kernel, "x", torch.ones(2))


def test_interpreted_kernels_refuse_non_cpu_tensors():
    from fastformer.kernels.norm import _norm_fwd_kernel

    if not _runtime.is_interpreted(_norm_fwd_kernel):
        pytest.skip("kernels are compiled for CUDA in this run, not interpreted")
    with pytest.raises(RuntimeError, match="interpreter"):
        norm_fwd(
            _runtime.as_rows(torch.ones(2, 8, device="meta"), 1), None, None, 1e-5, is_rms=True
        )
