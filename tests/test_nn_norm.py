"""fastformer.nn.LayerNorm / RMSNorm: drop-in for torch's, state_dicts unchanged."""

from __future__ import annotations

import pytest
import torch

import fastformer.nn

PAIRS = {
    "layer_norm": (torch.nn.LayerNorm, fastformer.nn.LayerNorm),
    "rms_norm": (torch.nn.RMSNorm, fastformer.nn.RMSNorm),
}


@pytest.mark.parametrize("kwargs", [{}, {"elementwise_affine": False}, {"eps": 1e-3}], ids=str)
@pytest.mark.parametrize("op", list(PAIRS))
def test_state_dict_loads_and_outputs_match(check, device, op, kwargs):
    torch_cls, ours_cls = PAIRS[op]
    if op == "layer_norm" and kwargs.get("elementwise_affine", True):
        kwargs = {**kwargs, "bias": True}
    theirs = torch_cls((4, 32), **kwargs).to(device)
    with torch.no_grad():
        for param in theirs.parameters():
            param.copy_(torch.randn_like(param))
    ours = ours_cls((4, 32), **kwargs).to(device)
    ours.load_state_dict(theirs.state_dict())
    assert list(ours.state_dict()) == list(theirs.state_dict())
    names = [name for name, _ in theirs.named_parameters()]
    x = torch.randn(3, 5, 4, 32, device=device).requires_grad_()

    def call(module):
        def run(x, *params):
            return torch.func.functional_call(module, dict(zip(names, params, strict=True)), (x,))

        return run

    # Parameters are leaves, so their gradients are checked too (and upcast for the reference).
    params = [p.detach().clone().requires_grad_() for p in theirs.parameters()]
    check(call(ours), call(theirs), [x, *params], names=["x", *names])


@pytest.mark.parametrize("op", list(PAIRS))
def test_residual_forward(device, op):
    _, ours_cls = PAIRS[op]
    norm = ours_cls(64).to(device)
    x, r = torch.randn(2, 3, 64, device=device), torch.randn(2, 3, 64, device=device)
    out, h = norm(x, residual=r)
    torch.testing.assert_close(h, x + r)
    torch.testing.assert_close(out, norm(x + r))


def test_bias_free_layer_norm_has_no_bias_key(device):
    norm = fastformer.nn.LayerNorm(16, bias=False).to(device)
    assert set(norm.state_dict()) == {"weight"}
    x = torch.randn(4, 16, device=device)
    torch.testing.assert_close(norm(x), torch.nn.functional.layer_norm(x, (16,), norm.weight))


def test_is_a_drop_in_subclass():
    assert isinstance(fastformer.nn.LayerNorm(8), torch.nn.LayerNorm)
    assert isinstance(fastformer.nn.RMSNorm(8), torch.nn.RMSNorm)
