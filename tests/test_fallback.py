"""The opt-in eager fallback: cases the kernels do not handle raise by default (naming the
argument, the value and the limit, before any launch); with the switch on they run the eager
reference, warn once per op and reason, and give the reference's result and gradients. Bad
input still raises either way."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import pytest
import torch

import fastformer
from fastformer import reference
from fastformer.functional import _fallback
from fastformer.kernels import _runtime


@pytest.fixture(autouse=True)
def fresh_warnings():
    """Each test starts with the switch off and no reason warned yet."""
    previous = _fallback.set_eager_fallback(False)
    _fallback._warned.clear()
    yield
    _fallback.set_eager_fallback(previous)
    _fallback._warned.clear()


def _f64(*shape, grad=False):
    return torch.randn(*shape, dtype=torch.float64).requires_grad_(grad)


def _cases():
    """(op, args, kwargs, what the default error says) for unsupported but valid inputs."""
    x, w = _f64(2, 3, 16, grad=True), _f64(16, grad=True)
    inv_freq = 1.0 / 10000 ** (torch.arange(0, 8, 2) / 8)
    q300 = torch.randn(1, 2, 3, 300, requires_grad=True)
    cache = (torch.randn(1, 2, 5, 272), torch.randn(1, 2, 5, 272))
    lengths = torch.tensor([4], dtype=torch.int32)
    return {
        "layer_norm": ("layer_norm", (x, 16, w, w), {}, r"x.dtype=torch.float64"),
        "rms_norm": ("rms_norm", (x, 16, w), {"residual": _f64(2, 3, 16)}, r"torch.float64"),
        "linear": ("linear", (x, _f64(8, 16, grad=True)), {"activation": "gelu"}, "float64"),
        "gated_linear": ("gated_linear", (x, _f64(8, 16), _f64(8, 16)), {}, "float64"),
        "sdpa head_dim": (
            "scaled_dot_product_attention",
            (q300, q300, q300),
            {"is_causal": True},
            r"head_dim=300; at most 256",
        ),  # fmt: skip
        "sdpa v head_dim": (
            "scaled_dot_product_attention",
            (torch.randn(1, 2, 3, 16), torch.randn(1, 2, 4, 16), torch.randn(1, 2, 4, 8)),
            {},
            r"v head_dim=8 differs",
        ),  # fmt: skip
        "apply_rotary inv_freq grad": (
            "apply_rotary",
            (torch.randn(1, 4, 2, 8), torch.randn(1, 4, 2, 8), inv_freq.clone().requires_grad_()),
            {},
            r"inv_freq.requires_grad",
        ),  # fmt: skip
        "decode head_dim": (
            "decode_attention",
            (torch.randn(1, 4, 1, 272), *cache, lengths),
            {},
            r"head_dim=272; at most 256",
        ),  # fmt: skip
    }


CASES = _cases()


def _result_and_grads(fn, args, kwargs):
    out = fn(*args, **kwargs)
    outs = out if isinstance(out, tuple) else (out,)
    leaves = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
    if not leaves:
        return [o.detach() for o in outs]
    torch.manual_seed(0)
    loss = sum((o * torch.randn_like(o)).sum() for o in outs)
    return [o.detach() for o in outs] + list(torch.autograd.grad(loss, leaves))


@pytest.mark.parametrize("case", list(CASES))
def test_unsupported_raises_by_default_naming_the_value(case):
    op, args, kwargs, message = CASES[case]
    with pytest.raises(_runtime.Unsupported, match=message.replace("(", r"\(")):
        getattr(fastformer, op)(*args, **kwargs)


@pytest.mark.parametrize("case", list(CASES))
def test_fallback_runs_the_reference_with_its_gradients(case):
    op, args, kwargs, _ = CASES[case]
    with fastformer.eager_fallback(), pytest.warns(_fallback.EagerFallbackWarning, match=op):
        got = _result_and_grads(getattr(fastformer, op), args, kwargs)
    want = _result_and_grads(getattr(reference, op), args, kwargs)
    assert len(got) == len(want)
    for index, (g, w) in enumerate(zip(got, want, strict=True)):
        torch.testing.assert_close(g, w, rtol=0, atol=0, msg=f"{case}: result {index}")


def test_warns_once_per_op_and_reason():
    x = _f64(2, 8)
    with fastformer.eager_fallback(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            fastformer.layer_norm(x, 8)
            fastformer.rms_norm(x, 8)
        fastformer.layer_norm(x.to(torch.float8_e4m3fn).to(torch.float64), 8)  # same reason
        q = torch.randn(1, 1, 2, 300)
        fastformer.scaled_dot_product_attention(q, q, q)  # another reason
    messages = [str(w.message) for w in caught if w.category is _fallback.EagerFallbackWarning]
    assert len(messages) == 3, messages
    assert "fastformer.layer_norm: dtype torch.float64" in messages[0]
    assert "fastformer.rms_norm: dtype torch.float64" in messages[1]
    assert "head_dim above 256" in messages[2] and "head_dim=300" in messages[2]


def test_bad_input_still_raises_with_the_fallback_on():
    x32 = torch.randn(2, 8)
    with fastformer.eager_fallback():
        with pytest.raises(ValueError, match="weight"):
            fastformer.layer_norm(x32, 8, torch.randn(7))
        with pytest.raises(TypeError, match="x.dtype=torch.int64"):
            fastformer.layer_norm(torch.ones(2, 8, dtype=torch.long), 8)
        with pytest.raises(ValueError, match="activation"):
            fastformer.linear(x32, torch.randn(4, 8), activation="swish2")
        # A bad input that also takes the fallback gets eager PyTorch's own error, not a result.
        with pytest.raises(RuntimeError, match="weight"):
            fastformer.layer_norm(_f64(2, 8), 8, _f64(7))


def test_switch_and_context_restore():
    assert not fastformer.functional._fallback.eager_fallback_enabled()
    with fastformer.eager_fallback():
        assert _fallback.eager_fallback_enabled()
        with fastformer.eager_fallback(False):
            assert not _fallback.eager_fallback_enabled()
        assert _fallback.eager_fallback_enabled()
    assert not _fallback.eager_fallback_enabled()
    assert fastformer.set_eager_fallback(True) is False
    assert fastformer.set_eager_fallback(False) is True
    with pytest.raises(TypeError, match="enabled must be a bool"):
        fastformer.set_eager_fallback("yes")


@pytest.mark.parametrize("value, enabled", [("1", True), ("0", False), ("", False)])
def test_environment_variable_turns_it_on(value, enabled):
    code = "from fastformer.functional import _fallback; print(_fallback.eager_fallback_enabled())"
    env = {**os.environ, _fallback.ENV_VAR: value}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(enabled)


def test_under_torch_compile_the_fallback_warns_and_fullgraph_refuses_it():
    q = torch.randn(1, 2, 3, 300)

    def attend(q):
        return fastformer.scaled_dot_product_attention(q, q, q, is_causal=True)

    expected = reference.scaled_dot_product_attention(q, q, q, is_causal=True)
    torch._dynamo.reset()
    with fastformer.eager_fallback(), pytest.warns(_fallback.EagerFallbackWarning):
        got = torch.compile(attend, backend="aot_eager")(q)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    torch._dynamo.reset()
    with fastformer.eager_fallback(), pytest.raises(Exception, match="[Gg]raph break"):
        torch.compile(attend, backend="aot_eager", fullgraph=True)(q)


def test_optimized_model_cast_to_float64_says_which_parts_run_eager():
    """A model optimized and then cast to float64: every replaced part runs eager's formula
    (the result is eager's) and says so once per module class and reason."""
    from test_optimize_families import build, inputs

    model = build("bert").double()
    kwargs, _ = inputs("bert")
    expected = model(**kwargs).logits
    optimized = fastformer.optimize(build("bert")).double()
    optimized.load_state_dict(model.state_dict())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            got = optimized(**kwargs).logits
    fallbacks = [str(w.message) for w in caught if w.category is _fallback.EagerFallbackWarning]
    assert any("fastformer LayerNorm: dtype torch.float64" in m for m in fallbacks), fallbacks
    assert any("LinearActivation: dtype torch.float64" in m for m in fallbacks), fallbacks
    assert any("eager attention" in m for m in fallbacks), fallbacks
    assert len(fallbacks) == len(set(fallbacks))  # once per module class and reason
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
