"""The parts of the project's kernel-breaking cases that no other test file checks in full (each
test names its case id): the head_dim limit, lengths 8 and 1025, the launch grid at batch x heads
= 65536 on the CPU, every repeated backward correct, qk and v head dims that differ, and one op
called with other head dims, dtypes and argument forms in a row."""

from __future__ import annotations

import collections
import functools

import pytest
import torch

import fastformer
from fastformer import reference, testing
from fastformer.kernels import attention_bwd, attention_fwd

SDPA = fastformer.scaled_dot_product_attention
# CUDA's grid limits: axis 0 up to 2**31 - 1, axes 1 and 2 up to 65535.
GRID_LIMITS = (2**31 - 1, 65535, 65535)


def _qkv(batch, heads, seq_q, seq_k, head_dim, dtype, device, v_dim=None):
    def make(seq, dim):
        return torch.randn(batch, heads, seq, dim, device=device).to(dtype).requires_grad_()

    return make(seq_q, head_dim), make(seq_k, head_dim), make(seq_k, v_dim or head_dim)


def _check_sdpa(check, q, k, v, **kwargs):
    check(
        functools.partial(SDPA, **kwargs),
        functools.partial(reference.scaled_dot_product_attention, **kwargs),
        [q, k, v],
        names=["q", "k", "v"],
    )


@pytest.mark.parametrize("head_dim", [257, 320, 512])
def test_head_dim_above_the_limit_names_value_and_limit(head_dim):
    """CASES A7: a head_dim above the supported maximum raises an error naming both."""
    q = torch.randn(1, 1, 4, head_dim)
    with pytest.raises(NotImplementedError, match=rf"head_dim={head_dim}\b.*256"):
        SDPA(q, q, q)


@pytest.mark.parametrize("is_causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("seqs", [(8, 8), (1025, 5), (5, 1025)], ids=str)
def test_sequence_lengths_8_and_1025(check, device, seqs, is_causal):
    """CASES A8: the lengths test_attention.py's pairs leave out (8, and 1025 = 1024 + 1, against
    a short side so that the interpreter stays fast; the GPU test below runs 1025 x 1025), with
    the kernels' outputs poisoned (NaN-filled) so that an unwritten element fails."""
    q, k, v = _qkv(1, 1, *seqs, 16, torch.float16, device)
    _check_sdpa(check, q, k, v, is_causal=is_causal)


@pytest.mark.gpu
@pytest.mark.parametrize("is_causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("seq", [1, 8, 17, 63, 65, 127, 129, 1025])
def test_sequence_lengths_on_gpu(check, device, seq, is_causal):
    """CASES A8 at head_dim 64 and 4 heads on the GPU, every length of the list."""
    q, k, v = _qkv(2, 4, seq, seq, 64, torch.float16, device)
    _check_sdpa(check, q, k, v, is_causal=is_causal)


def test_every_repeated_backward_is_correct_and_identical(device):
    """CASES A10: 50 backwards on the same inputs (GQA, causal): each one passes the rule against
    the float64 reference, with the same bits as the first (test_attention_inputs.py checks the
    bits alone)."""
    q, k, v = _qkv(1, 4, 9, 11, 16, torch.float16, device)
    k, v = (t.detach()[:, :2].requires_grad_() for t in (k, v))
    options = dict(is_causal=True, enable_gqa=True)
    do = torch.randn_like(q)

    def grads(fn, dtype):
        leaves = [t.detach().to(dtype).requires_grad_() for t in (q, k, v)]
        out = fn(*leaves, **options)
        return torch.autograd.grad(out, leaves, do.to(dtype))

    expected = grads(reference.scaled_dot_product_attention, torch.float64)
    eager = grads(reference.scaled_dot_product_attention, torch.float16)
    out = SDPA(q, k, v, **options)
    first = None
    for _ in range(50):
        got = torch.autograd.grad(out, (q, k, v), do, retain_graph=True)
        first = first or got
        assert all(torch.equal(a, b) for a, b in zip(got, first, strict=True))
        for name, g, r, e in zip("qkv", got, expected, eager, strict=True):
            result = testing.compare(f"d{name}", g, r, e)
            assert result.ok, str(result)


class _GridRecorder:
    """Stands in for an autotuned kernel: records the grid each launch would get, runs nothing."""

    def __init__(self, grids, name):
        self.grids, self.name = grids, name

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            meta = collections.defaultdict(lambda: 16, kwargs)  # BLOCK_M / BLOCK_N: smallest tile
            self.grids[self.name] = tuple(grid(meta) if callable(grid) else grid)

        return launch


def test_batch_times_heads_65536_grid_fits_cuda_limits(device, monkeypatch):
    """CASES A11 on the CPU: batch 8192 x heads 8 (the GPU test's shape, with seq 1 and head_dim
    16 so that it is cheap): every attention launch, forward and both backward kernels, puts
    batch * heads on grid axis 0, and no axis passes CUDA's limits. (Running 65536 programs
    through the interpreter would take minutes; the GPU test runs them.)"""
    grids = {}
    monkeypatch.setattr(attention_fwd, "_attn_fwd", _GridRecorder(grids, "fwd"))
    monkeypatch.setattr(attention_bwd, "_attn_bwd_dkdv", _GridRecorder(grids, "dkdv"))
    monkeypatch.setattr(attention_bwd, "_attn_bwd_dq", _GridRecorder(grids, "dq"))
    q, k, v = _qkv(8192, 8, 1, 1, 16, torch.float16, device)
    out = SDPA(q, k, v)
    assert out.shape == q.shape
    torch.autograd.grad(out, (q, k, v), torch.randn_like(out))
    assert set(grids) == {"fwd", "dkdv", "dq"}
    for name, grid in grids.items():
        assert grid[0] == 8192 * 8, f"{name}: grid {grid}"
        assert all(n <= limit for n, limit in zip(grid, GRID_LIMITS, strict=False)), grid


@pytest.mark.parametrize(
    ("qk_dim", "v_dim"), [(192, 128), (24, 16), (16, 32)], ids=["192-128", "24-16", "16-32"]
)
def test_qk_and_v_head_dims_that_differ_are_refused(qk_dim, v_dim):
    """CASES A14: qk head_dim != v head_dim is not supported: a clear error naming both dims,
    from the dense and the packed entry points, before any launch."""
    q, k, v = _qkv(1, 2, 3, 5, qk_dim, torch.float32, "cpu", v_dim=v_dim)
    with pytest.raises(NotImplementedError, match=rf"v head_dim={v_dim}.*{qk_dim}"):
        SDPA(q, k, v)
    packed = [t.detach()[0].transpose(0, 1) for t in (q, k, v)]
    cu = torch.tensor([0, 3]), torch.tensor([0, 5])
    with pytest.raises(NotImplementedError, match=rf"v head_dim={v_dim}.*{qk_dim}"):
        fastformer.varlen_attention(*packed, *cu)


def _one_round(check, device, head_dim, dtype):
    """Attention, norms, linear and rotary at one head_dim and dtype, positional then keyword."""
    ref_sdpa = reference.scaled_dot_product_attention
    q, k, v = _qkv(1, 2, 5, 7, head_dim, dtype, device)
    mask = torch.rand(5, 7, device=device) > 0.3
    scale = 0.9 / head_dim**0.5  # not the default
    check(lambda q, k, v: SDPA(q, k, v, mask), lambda q, k, v: ref_sdpa(q, k, v, mask), [q, k, v])
    check(
        lambda q, k, v: SDPA(q=q, k=k, v=v, attn_mask=mask, is_causal=False, scale=scale),
        lambda q, k, v: ref_sdpa(q, k, v, attn_mask=mask, scale=scale),
        [q, k, v],
    )
    shape = (head_dim,)
    x = torch.randn(3, head_dim, device=device).to(dtype).requires_grad_()
    w, b = (torch.randn(head_dim, device=device).to(dtype).requires_grad_() for _ in "wb")
    ref_ln, ref_rms = reference.layer_norm, reference.rms_norm
    check(
        lambda x, w, b: fastformer.layer_norm(x, shape, w, b, 1e-5),
        lambda x, w, b: ref_ln(x, shape, w, b, 1e-5),
        [x, w, b],
    )
    check(
        lambda x, w, b: fastformer.layer_norm(x, normalized_shape=shape, weight=w, bias=b),
        lambda x, w, b: ref_ln(x, shape, w, b),
        [x, w, b],
    )
    check(lambda x, w: fastformer.rms_norm(x, shape, w), lambda x, w: ref_rms(x, shape, w), [x, w])
    check(
        lambda x, w: fastformer.rms_norm(x, normalized_shape=shape, weight=w, eps=1e-6),
        lambda x, w: ref_rms(x, shape, w, eps=1e-6),
        [x, w],
    )
    weight = (torch.randn(9, head_dim, device=device) / head_dim**0.5).to(dtype)
    leaves = [x, weight.requires_grad_()]
    check(
        lambda x, w: fastformer.linear(x, w, None, "gelu"),
        lambda x, w: reference.linear(x, w, None, "gelu"),
        leaves,
    )
    check(
        lambda x, w: fastformer.linear(x, weight=w, activation="silu"),
        lambda x, w: reference.linear(x, w, activation="silu"),
        leaves,
    )
    half = head_dim // 2
    inv_freq = 1.0 / 10000.0 ** (torch.arange(half, device=device).float() / half)
    qr, kr = (
        torch.randn(1, 4, 2, head_dim, device=device).to(dtype).requires_grad_() for _ in "qk"
    )
    check(
        lambda q, k: fastformer.apply_rotary(q, k, inv_freq),
        lambda q, k: reference.apply_rotary(q, k, inv_freq),
        [qr, kr],
    )
    check(
        lambda q, k: fastformer.apply_rotary(q=q, k=k, inv_freq=inv_freq, offset=3),
        lambda q, k: reference.apply_rotary(q, k, inv_freq, offset=3),
        [qr, kr],
    )


def test_calls_in_a_row_with_other_head_dims_dtypes_and_argument_forms(check, device):
    """CASES I2: the same kernels called in a row with head_dim 64 then 128, fp16 then fp32,
    positional then keyword arguments (attention, norms, linear, rotary): every call correct, so
    no cached launch configuration outlives the arguments it was chosen for."""
    for head_dim, dtype in ((64, torch.float16), (128, torch.float16), (64, torch.float32)):
        _one_round(check, device, head_dim, dtype)
