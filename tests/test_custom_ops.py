"""Every public op runs its kernels through torch.library custom ops (``fastformer_kernels::*``)
whose registrations are consistent: ``torch.library.opcheck`` runs each op for real, on fake
tensors, under AOTAutograd with dynamic shapes, and through its registered autograd, and checks
the schema (mutations declared, no aliasing), the fake outputs' shapes, dtypes and strides
against the real ones, and the gradients. Inputs are small fresh random tensors; ops with
options are checked in each form (residual or not, gated, masks, dropout, packed, paged).
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import fastformer
from fastformer.functional import _library
from fastformer.kernels import attention_common as common

OPS = torch.ops.fastformer_kernels
OPCHECK_TESTS = ("test_schema", "test_autograd_registration", "test_faketensor",
                 "test_aot_dispatch_dynamic")  # fmt: skip


def _leaf(*shape, grad=True, dtype=torch.float32):
    return torch.randn(*shape, dtype=dtype).requires_grad_(grad)


def _lengths(*values):
    return torch.tensor(values, dtype=torch.int32)


def _norm_cases():
    x, r, w, b = _leaf(2, 3, 16), _leaf(2, 3, 16), _leaf(16), _leaf(16)
    yield "layer_norm+residual", (x, r, w, b, 1e-5, False, 1)
    yield "rms_norm", (x, None, w, None, 1e-6, True, 1)
    yield "layer_norm 2 dims, no affine", (_leaf(2, 4, 8), None, None, None, 1e-5, False, 2)


def _linear_cases():
    x, w, w_up, b = _leaf(2, 5, 24), _leaf(40, 24), _leaf(40, 24), _leaf(40)
    yield "bias+gelu", (x, w, None, b, "gelu", True)
    yield "gated silu", (x, w, w_up, None, "silu", True)
    yield "plain, inference", (x.detach(), w.detach(), None, None, None, False)


def _attention_cases():
    seed = torch.tensor([12345])
    q, k, v = _leaf(2, 4, 5, 16), _leaf(2, 2, 7, 16), _leaf(2, 2, 7, 16)
    bool_mask = torch.rand(2, 1, 5, 7) > 0.3
    # scale, causal, bottom_right, dropout_p, window, for_backward
    options = (0.25, True, False, 0.0, [], True)
    yield "bool mask, causal, GQA", (q, k, v, bool_mask, None, None, None, None, None,
                                     common.MASK_BOOL, *options)  # fmt: skip
    yield "trainable float mask, dropout, window", (
        q, k, v, _leaf(1, 4, 5, 7), None, None, None, None, seed, common.MASK_FLOAT,
        0.25, False, True, 0.2, [3, 1], True,
    )  # fmt: skip
    half = [_leaf(2, h, n, 16, dtype=torch.bfloat16) for h, n in ((4, 5), (2, 7), (2, 7))]
    yield "bf16, dropout (an fp32 output for the backward)", (
        *half, None, None, None, None, None, seed, common.MASK_NONE, 0.25, True, False, 0.2, [],
        True,
    )  # fmt: skip
    cu_q, cu_k = _lengths(0, 3, 3, 7), _lengths(0, 2, 6, 9)
    yield "packed, GQA", (_leaf(7, 4, 16), _leaf(9, 2, 16), _leaf(9, 2, 16), None, cu_q, cu_k,
                          None, 4, None, common.MASK_NONE, *options)  # fmt: skip


def _rotary_cases():
    inv_freq = 1.0 / 10000 ** (torch.arange(0, 8, 2) / 8)
    positions = torch.randint(0, 50, (2, 5))
    yield "bshd, positions", (_leaf(2, 5, 4, 16), _leaf(2, 5, 2, 16), inv_freq, positions, 3,
                              False, "bshd", 1.0, False)  # fmt: skip
    yield "bhsd, interleaved, conjugate", (_leaf(2, 4, 5, 8), _leaf(2, 2, 5, 8), inv_freq,
                                           None, 0, True, "bhsd", 0.5, True)  # fmt: skip


def _rotary_inplace_cases():
    inv_freq = 1.0 / 10000 ** (torch.arange(0, 8, 2) / 8)
    yield "in place", (_leaf(2, 5, 4, 16, grad=False), _leaf(2, 5, 2, 16, grad=False), inv_freq,
                       None, 7, False, "bshd", 1.0)  # fmt: skip


def _decode_cases():
    q = _leaf(3, 6, 1, 16, grad=False)
    k_cache, v_cache = _leaf(3, 2, 20, 16, grad=False), _leaf(3, 2, 20, 16, grad=False)
    yield "dense, lse", (q, k_cache, v_cache, _lengths(20, 0, 9), None, 0.25, None, True, True)
    pages_k, pages_v = _leaf(8, 4, 2, 16, grad=False), _leaf(8, 4, 2, 16, grad=False)
    table = torch.randperm(8, dtype=torch.int32)[:6].view(3, 2)
    yield "paged, 2 splits", (q, pages_k, pages_v, _lengths(5, 8, 1), table, 0.25, 2, False,
                              True)  # fmt: skip


def _append_cases():
    k_cache, v_cache = _leaf(2, 2, 12, 16, grad=False), _leaf(2, 2, 12, 16, grad=False)
    k_new, v_new = _leaf(2, 2, 3, 16, grad=False), _leaf(2, 2, 3, 16, grad=False)
    inv_freq = 1.0 / 10000 ** (torch.arange(0, 8, 2) / 8)
    yield "dense, rotary, ragged", (k_cache, v_cache, k_new, v_new, _lengths(4, 9),
                                    _lengths(3, 1), None, inv_freq, False, 1.0, True)  # fmt: skip


CASES = {
    "norm_fwd": _norm_cases,
    "linear_fwd": _linear_cases,
    "attention_fwd": _attention_cases,
    "rotary": _rotary_cases,
    "rotary_": _rotary_inplace_cases,
    "decode_attention": _decode_cases,
    "kv_cache_append": _append_cases,
}


def _all_cases():
    for op_name, cases in CASES.items():
        for label, args in cases():
            yield pytest.param(op_name, args, id=f"{op_name}: {label}")


@pytest.mark.parametrize("op_name, args", list(_all_cases()))
def test_opcheck(op_name, args):
    results = torch.library.opcheck(getattr(OPS, op_name), args, test_utils=OPCHECK_TESTS)
    assert results == dict.fromkeys(OPCHECK_TESTS, "SUCCESS"), results


def test_every_registered_op_is_checked():
    """A kernel op added later without an opcheck case fails here (backward ops are checked
    through their forward's autograd, and again by the compile tests' backward)."""
    registered = {name for name in dir(OPS) if not name.startswith("_") and name != "name"}
    backward = {name for name in registered if name.endswith("_bwd")}
    assert registered - backward == set(CASES), registered


class _KernelOps(TorchDispatchMode):
    """Records the fastformer kernel ops dispatched inside the block."""

    def __init__(self):
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == _library.NAMESPACE:
            self.seen.append(func.__name__.split(".")[0])
        return func(*args, **(kwargs or {}))


def _public_calls():
    """One call of every public op (decode_positions excepted: plain torch arithmetic)."""
    x, w = torch.randn(2, 3, 16), torch.randn(16)
    q, k, v = (torch.randn(1, 2, 4, 8) for _ in range(3))
    inv_freq = torch.rand(4)
    cache_k, cache_v = torch.randn(1, 2, 6, 8), torch.randn(1, 2, 6, 8)
    lengths = _lengths(2)
    packed = torch.randn(4, 2, 8)
    cu = _lengths(0, 4)
    return {
        "layer_norm": lambda: fastformer.layer_norm(x, 16, w, w),
        "rms_norm": lambda: fastformer.rms_norm(x, 16, w, residual=x),
        "linear": lambda: fastformer.linear(x, torch.randn(8, 16), activation="gelu"),
        "gated_linear": lambda: fastformer.gated_linear(x, torch.randn(8, 16), torch.randn(8, 16)),
        "scaled_dot_product_attention": lambda: fastformer.scaled_dot_product_attention(q, k, v),
        "varlen_attention": lambda: fastformer.varlen_attention(packed, packed, packed, cu, cu),
        "apply_rotary": lambda: fastformer.apply_rotary(q, k, inv_freq, layout="bhsd"),
        "rotate_queries": lambda: fastformer.rotate_queries(q, inv_freq, lengths),
        "decode_attention": lambda: fastformer.decode_attention(q, cache_k, cache_v, lengths),
        "kv_cache_append_": lambda: fastformer.kv_cache_append_(cache_k, cache_v, k, v, lengths),
    }


def test_every_public_op_runs_through_a_kernel_op():
    calls = _public_calls()
    public = set(fastformer.functional.__all__) - {"decode_positions"}
    assert set(calls) == public
    for name, call in calls.items():
        with _KernelOps() as mode:
            call()
        assert mode.seen, f"{name} dispatched no fastformer_kernels op"


def test_direct_call_only_when_nothing_could_observe_it():
    """Kernel ops skip the dispatcher (its Python wrappers cost ~20 us per call) only for plain
    tensors with no gradient to record, outside torch.compile and every mode."""
    allowed = _library.direct_call_allowed
    x = torch.randn(3)
    assert allowed((x, None, 1.0, [2, 3], "gelu"))
    assert allowed((torch.nn.Parameter(torch.randn(3), requires_grad=False), x))
    grad = torch.randn(3, requires_grad=True)
    assert not allowed((x, grad))
    with torch.no_grad():
        assert allowed((x, grad))
    assert not allowed((torch.empty(3, device="meta"),))
    with _KernelOps():
        assert not allowed((x,))
    with torch.overrides.TorchFunctionMode():
        assert not allowed((x,))

    def traced(t):
        return t + int(allowed((t,)))

    assert torch.compile(traced, backend="eager", fullgraph=True)(torch.zeros(1)).item() == 0


def test_direct_and_dispatched_calls_agree():
    from fastformer.functional.norm import _norm_fwd

    args = (torch.randn(4, 16), torch.randn(4, 16), torch.randn(16), torch.randn(16), 1e-5, False,
            1)  # fmt: skip
    direct = _norm_fwd(*args)
    dispatched = _norm_fwd.overload(*args)
    for got, want in zip(direct, dispatched, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("op", ["layer_norm", "linear"])
def test_backward_reuses_the_forward_copy_of_an_unfoldable_layout(op, monkeypatch):
    """x whose leading dims fold into no two row strides is copied once, in the forward; the
    kernel op returns that copy for the backward, which then copies nothing (a custom op may
    not return x itself, so without it the backward would copy x again)."""
    from fastformer.kernels import _runtime

    x = torch.randn(4, 3, 5, 16).permute(2, 0, 1, 3)[:, ::2].requires_grad_()
    assert _runtime.as_rows(x, 1).tensor is not x  # this layout needs the copy
    weight = torch.randn(16, requires_grad=True)
    proj = torch.randn(8, 16, requires_grad=True)
    calls = {
        "layer_norm": lambda: fastformer.layer_norm(x, 16, weight, weight),
        "linear": lambda: fastformer.linear(x, proj, activation="gelu"),
    }
    copies = []
    contiguous = torch.Tensor.contiguous

    def counting(self, *args, **kwargs):
        out = contiguous(self, *args, **kwargs)
        if out is not self:
            copies.append(tuple(self.shape))
        return out

    monkeypatch.setattr(torch.Tensor, "contiguous", counting)
    out = calls[op]()
    forward_copies = len(copies)
    torch.autograd.grad(out.sum(), x)
    assert forward_copies == 1 and len(copies) == 1, copies
