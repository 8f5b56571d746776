"""Attention dropout (CASES A12): reproducible, fresh per call, the right rate, and a backward
that matches eager computed with the mask actually used."""

from __future__ import annotations

import pytest
import torch

import fastformer
from fastformer import reference
from fastformer.functional.attention import draw_seed
from fastformer.kernels import attention_common

RATE = 0.1


def _qkv(device, dtype=torch.float32, seq_q=24, seq_k=40, heads=2, kv_heads=2):
    def make(h, s):
        return torch.randn(2, h, s, 32, device=device).to(dtype).requires_grad_()

    return make(heads, seq_q), make(kv_heads, seq_k), make(kv_heads, seq_k)


def _mask_for(seed_value, q, k, device):
    """The keep mask that a call made right after torch.manual_seed(seed_value) used."""
    torch.manual_seed(seed_value)
    problem = attention_common.Problem(
        q.shape[0], q.shape[1], k.shape[1], q.shape[2], k.shape[2], q.shape[3]
    )
    return attention_common.dropout_mask(draw_seed(), problem, RATE, device)


def test_same_seed_same_output_and_new_mask_per_call(device):
    q, k, v = _qkv(device)
    torch.manual_seed(7)
    first = fastformer.scaled_dot_product_attention(q, k, v, dropout_p=RATE)
    second = fastformer.scaled_dot_product_attention(q, k, v, dropout_p=RATE)
    torch.manual_seed(7)
    again = fastformer.scaled_dot_product_attention(q, k, v, dropout_p=RATE)
    assert torch.equal(first, again)
    assert not torch.equal(first, second)


def test_kept_fraction(device):
    problem = attention_common.Problem(2, 4, 4, 64, 64, 32)
    keep = attention_common.dropout_mask(draw_seed(), problem, RATE, device)
    assert abs(keep.float().mean().item() - (1 - RATE)) <= 0.01
    other = attention_common.dropout_mask(draw_seed(), problem, RATE, device)
    assert not torch.equal(keep, other)


@pytest.mark.parametrize("is_causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_matches_eager_with_the_mask_used(check, device, dtype, is_causal):
    q, k, v = _qkv(device, dtype, heads=4, kv_heads=2)
    mask = _mask_for(11, q, k, device)

    def kernel(q, k, v):
        torch.manual_seed(11)
        return fastformer.scaled_dot_product_attention(
            q, k, v, dropout_p=RATE, is_causal=is_causal, enable_gqa=True
        )

    def eager(q, k, v):
        return reference.scaled_dot_product_attention(
            q, k, v, dropout_p=RATE, is_causal=is_causal, enable_gqa=True, dropout_mask=mask
        )

    check(kernel, eager, [q, k, v], names=["q", "k", "v"])


def test_packed_sequences_with_dropout(check, device):
    lengths = [9, 0, 17]
    cu = torch.tensor([0, 9, 9, 26], device=device)
    q, k, v = (torch.randn(26, 2, 32, device=device, requires_grad=True) for _ in range(3))
    problem = attention_common.Problem(3, 2, 2, max(lengths), max(lengths), 32, cu, cu)
    torch.manual_seed(5)
    mask = attention_common.dropout_mask(draw_seed(), problem, RATE, device)

    def kernel(q, k, v):
        torch.manual_seed(5)
        return fastformer.varlen_attention(q, k, v, cu, cu, dropout_p=RATE, is_causal=True)

    def eager(q, k, v):
        outs = []
        for b, (start, n) in enumerate(zip([0, 9, 9], lengths, strict=True)):
            rows = slice(start, start + n)
            out = reference.scaled_dot_product_attention(
                q[rows].transpose(0, 1), k[rows].transpose(0, 1), v[rows].transpose(0, 1),
                dropout_p=RATE, is_causal=True, dropout_mask=mask[b, :, :n, :n],
            )  # fmt: skip
            outs.append(out.transpose(0, 1))
        return torch.cat(outs)

    check(kernel, eager, [q, k, v], names=["q", "k", "v"])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_gradient_through_a_single_key_cancels(check, device, dtype):
    """Found by the layout fuzz test: every row sees one key, so the exact dq and dk are 0 and
    eager's softmax backward gives exactly 0. The backward's delta = rowsum(dO * O) must come
    from the unrounded output: from the fp16 output (1 / (1 - p) times a value, rounded) it
    missed dP by a unit of fp16 and dq, dk were ~1e-2."""
    for trial in range(6):
        q, k, v = ((3 * torch.randn(4, 4, n, 2, device=device)).to(dtype) for n in (3, 1, 1))
        q, k, v = (t.requires_grad_() for t in (q, k, v))
        keep = _mask_for(trial, q, k, device)

        def kernel(q, k, v, trial=trial):
            torch.manual_seed(trial)
            return fastformer.scaled_dot_product_attention(q, k, v, dropout_p=RATE)

        def eager(q, k, v, keep=keep):
            return reference.scaled_dot_product_attention(
                q, k, v, dropout_p=RATE, dropout_mask=keep
            )

        check(kernel, eager, [q, k, v], grad_output_fn=lambda out: 3 * torch.randn_like(out))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_causal_first_row_gets_a_zero_query_gradient(device, dtype):
    """Causal self-attention: query 0 sees key 0 alone, so its dq is exactly 0 in eager."""
    q, k, v = _qkv(device, dtype)
    q, k, v = ((3 * t.detach()).requires_grad_() for t in (q, k, v))
    torch.manual_seed(3)
    out = fastformer.scaled_dot_product_attention(q, k, v, dropout_p=RATE, is_causal=True)
    out.backward(3 * torch.randn_like(out))
    first_row = q.grad[:, :, 0].float().abs().max().item()
    assert q.grad[:, :, 1:].float().abs().max().item() > 1.0  # the other rows' gradients
    assert first_row <= 1e-3, first_row


def test_fp32_output_is_kept_only_for_a_backward(device, monkeypatch):
    """The fp32 copy of the output (for the backward's delta) is written only when a backward
    can run: not under no_grad, not for inputs without grad; the output is the same bits."""
    from fastformer.functional import attention as attention_api

    kept = []
    launch = attention_api.attention_fwd

    def recording(*args, **kwargs):
        result = launch(*args, **kwargs)
        kept.append(result[3] is not None)
        return result

    monkeypatch.setattr(attention_api, "attention_fwd", recording)
    q, k, v = _qkv(device, torch.bfloat16)
    outputs = []
    for grad, inputs in ((False, (q, k, v)), (True, [t.detach() for t in (q, k, v)]),
                         (True, (q, k, v))):  # fmt: skip
        torch.manual_seed(2)
        with torch.set_grad_enabled(grad):
            outputs.append(fastformer.scaled_dot_product_attention(*inputs, dropout_p=RATE))
    assert kept == [False, False, True]
    assert all(torch.equal(out.detach(), outputs[-1].detach()) for out in outputs)
