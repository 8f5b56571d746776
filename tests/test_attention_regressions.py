"""Inputs that broke the attention once (found by trying to break it); each stays fixed."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

import fastformer
from fastformer import reference

SDPA = fastformer.scaled_dot_product_attention


def _qkv(shape_q, shape_kv, device, dtype=torch.float32, scale=1.0):
    def make(shape):
        return (scale * torch.randn(shape, device=device)).to(dtype).requires_grad_()

    return make(shape_q), make(shape_kv), make(shape_kv)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_finfo_min_padding_mask(check, device, dtype):
    """A Hugging Face padding mask (finfo.min, not -inf): a fully padded row averages its keys
    as eager does, and no bias overflows to -inf."""
    q, k, v = _qkv((2, 2, 9, 32), (2, 2, 9, 32), device, dtype)
    mask = torch.zeros(2, 1, 9, 9, device=device, dtype=dtype)
    mask[0, :, :, 6:] = torch.finfo(dtype).min
    mask[1, :, 3, :] = torch.finfo(dtype).min
    check(
        functools.partial(SDPA, attn_mask=mask),
        functools.partial(reference.scaled_dot_product_attention, attn_mask=mask),
        [q, k, v],
    )


def test_double_backward_raises_even_for_a_linear_loss(device):
    q, k, v = _qkv((1, 2, 5, 16), (1, 2, 5, 16), device)
    out = SDPA(q, k, v)
    with pytest.raises(RuntimeError, match="no double backward"):
        torch.autograd.grad(out.sum(), q, create_graph=True)
    x = torch.randn(3, 8, device=device, requires_grad=True)
    with pytest.raises(RuntimeError, match="no double backward"):
        torch.autograd.grad(fastformer.layer_norm(x, 8).sum(), x, create_graph=True)


@pytest.mark.parametrize("is_causal", [False, True], ids=["full", "causal"])
def test_gradient_through_the_returned_lse(check, device, is_causal):
    """A loss on the log-sum-exp too (z-loss, merging split-KV chunks): its gradient reaches
    q and k."""
    q, k, v = _qkv((1, 2, 13, 32), (1, 2, 13, 32), device)
    kwargs = dict(is_causal=is_causal, return_lse=True)
    check(
        functools.partial(SDPA, **kwargs),
        functools.partial(reference.scaled_dot_product_attention, **kwargs),
        [q, k, v],
    )


@pytest.mark.parametrize("window", [(0, 2**31 - 1), (2**31 - 1, 0), (3, 2**31 - 20)], ids=str)
def test_window_reaches_near_int32_limit(check, device, window):
    q, k, v = _qkv((1, 2, 40, 32), (1, 2, 40, 32), device)
    check(
        functools.partial(SDPA, window=window),
        functools.partial(reference.scaled_dot_product_attention, window=window),
        [q, k, v],
    )


def test_integer_likes_and_flags():
    q = torch.randn(10, 2, 16)
    cu = torch.tensor([0, 4, 10])
    out = fastformer.varlen_attention(q, q, q, cu, cu, np.int64(6), torch.tensor(6))
    assert out.shape == q.shape
    with pytest.raises(TypeError, match="is_causal='no' must be a bool"):
        SDPA(q[None], q[None], q[None], is_causal="no")
    with pytest.raises(ValueError, match="has a batch dim but q"):
        SDPA(q, q, q, attn_mask=torch.ones(1, 2, 10, 10, dtype=torch.bool))


def test_fp32_gradients_with_a_larger_scale(check, device):
    """q, k, v (1, 2, 5|7, 64) fp32 with scale=0.5 (logits ~4x the default's; T5 does not scale
    at all), 6 fresh draws: dq, dk, dv pass the rule as at the default scale. Found by the
    fuzz tests: the backward's recomputed scores must round as the forward's did."""
    for _ in range(6):
        q, k, v = (torch.randn(1, 2, n, 64, device=device, requires_grad=True) for n in (5, 7, 7))
        check(
            functools.partial(fastformer.scaled_dot_product_attention, scale=0.5),
            functools.partial(reference.scaled_dot_product_attention, scale=0.5),
            [q, k, v],
            names=["q", "k", "v"],
        )
