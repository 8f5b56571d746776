"""Rotary embedding kernel against the float64 reference: outputs and the gradients of q and k.

Every case rotates q and k in one call and checks both outputs and both gradients with the
tolerance rule (``check``): styles, dtypes, layouts, partial rotary, GQA, positions, packed
sequences, strided views, in place, empty tensors.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

import fastformer
from fastformer import reference
from fastformer.functional.rope_scaling import RopeParameters, rope_init

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
DTYPE_IDS = ["fp32", "fp16", "bf16"]
STYLES = [False, True]
STYLE_IDS = ["neox", "gptj"]


def _inv_freq(rotary_dim, device, theta=10000.0):
    return rope_init(RopeParameters(head_dim=rotary_dim, rope_theta=theta), device=device)[0]


def _leaf(shape, dtype, device):
    return torch.randn(shape, device=device).to(dtype).requires_grad_()


def _shapes(layout, batch, seqlen, n_heads_q, n_heads_k, head_dim):
    if layout == "bhsd":
        return (batch, n_heads_q, seqlen, head_dim), (batch, n_heads_k, seqlen, head_dim)
    return (batch, seqlen, n_heads_q, head_dim), (batch, seqlen, n_heads_k, head_dim)


def _check_rotary(check, device, dtype, *, layout="bshd", batch=2, seqlen=5, heads=(4, 2),
                  head_dim=16, rotary_dim=None, **kwargs):  # fmt: skip
    rotary_dim = rotary_dim or head_dim
    inv_freq = _inv_freq(rotary_dim, device)
    shape_q, shape_k = _shapes(layout, batch, seqlen, *heads, head_dim)
    leaves = [_leaf(shape_q, dtype, device), _leaf(shape_k, dtype, device)]
    options = dict(layout=layout, **kwargs)
    check(
        functools.partial(fastformer.apply_rotary, inv_freq=inv_freq, **options),
        functools.partial(reference.apply_rotary, inv_freq=inv_freq, **options),
        leaves,
        names=["q", "k"],
    )


@pytest.mark.parametrize("layout", ["bshd", "bhsd"])
@pytest.mark.parametrize("interleaved", STYLES, ids=STYLE_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_styles_dtypes_layouts(check, device, dtype, interleaved, layout):
    _check_rotary(check, device, dtype, layout=layout, interleaved=interleaved)


@pytest.mark.parametrize("dims", [(16, 4), (32, 8), (64, 16), (80, 32), (24, 24)], ids=str)
@pytest.mark.parametrize("interleaved", STYLES, ids=STYLE_IDS)
def test_partial_rotary(check, device, interleaved, dims):
    """GPT-NeoX (rotary_pct 0.25) and GPT-J (rotary_dim 64 of 256) rotate the first features."""
    head_dim, rotary_dim = dims
    _check_rotary(
        check, device, torch.float16, head_dim=head_dim, rotary_dim=rotary_dim,
        interleaved=interleaved, offset=7,
    )  # fmt: skip


@pytest.mark.parametrize("heads", [(2, 1), (8, 1), (12, 4), (1, 3)], ids=lambda h: f"{h[0]}:{h[1]}")
@pytest.mark.parametrize("layout", ["bshd", "bhsd"])
def test_gqa(check, device, layout, heads):
    _check_rotary(check, device, torch.bfloat16, layout=layout, heads=heads, seqlen=3)


@pytest.mark.parametrize("head_dim", [2, 6, 72, 128, 256])
def test_head_dims(check, device, head_dim):
    _check_rotary(check, device, torch.float32, head_dim=head_dim, batch=1, seqlen=3, heads=(2, 1))


def test_position_ids_left_padded(check, device):
    """Per-row positions (a left-padded batch), int32, with an offset on top."""
    position_ids = torch.tensor([[0, 0, 0, 1, 2, 3], [0, 1, 2, 3, 4, 5]], device=device)
    _check_rotary(
        check, device, torch.bfloat16, seqlen=6,
        position_ids=position_ids.to(torch.int32), offset=3,
    )  # fmt: skip


def test_position_ids_broadcast_row(check, device):
    position_ids = torch.randint(0, 100_000, (1, 5), device=device)
    _check_rotary(check, device, torch.float32, position_ids=position_ids, interleaved=True)


def test_position_ids_strided(check, device):
    """position_ids read through strides: a transposed int64 tensor and an expanded row."""
    position_ids = torch.randint(0, 50, (5, 2), device=device).t()
    _check_rotary(check, device, torch.float16, position_ids=position_ids)
    position_ids = torch.arange(5, device=device).expand(2, 5)
    _check_rotary(check, device, torch.float16, position_ids=position_ids, offset=11)


@pytest.mark.parametrize("offset", [0, 1, 8191, 100_000, 2**31 + 3], ids=str)
def test_offsets(check, device, offset):
    """Decoding at any cache length; offsets past int32 take the int64 path."""
    _check_rotary(check, device, torch.float32, seqlen=2, offset=offset)


def test_numpy_offset_equals_int_offset(device):
    q, k = torch.randn(1, 3, 2, 8, device=device), torch.randn(1, 3, 1, 8, device=device)
    inv_freq = _inv_freq(8, device)
    by_numpy = fastformer.apply_rotary(q, k, inv_freq, offset=np.int64(9))
    by_int = fastformer.apply_rotary(q, k, inv_freq, offset=9)
    assert all(torch.equal(a, b) for a, b in zip(by_numpy, by_int, strict=True))


def test_attention_scaling(check, device):
    _check_rotary(check, device, torch.float32, attention_scaling=1.2, interleaved=True)


@pytest.mark.parametrize("interleaved", STYLES, ids=STYLE_IDS)
@pytest.mark.parametrize(
    "lengths", [(3, 5, 1), (0, 4, 0, 2), (6,), (0,)], ids=lambda s: "-".join(map(str, s))
)
def test_packed_sequences(check, device, lengths, interleaved):
    """CASES R3: positions restart at each sequence start (empty sequences included)."""
    bounds = torch.tensor([0, *lengths], device=device).cumsum(0)
    total = int(bounds[-1])
    inv_freq = _inv_freq(8, device)
    leaves = [
        _leaf((total, 3, 12), torch.float16, device),
        _leaf((total, 1, 12), torch.float16, device),
    ]
    for cu_seqlens in (bounds, bounds.to(torch.int32)):
        options = dict(
            inv_freq=inv_freq, cu_seqlens=cu_seqlens, layout="thd", interleaved=interleaved
        )
        check(
            functools.partial(fastformer.apply_rotary, **options, offset=2),
            functools.partial(reference.apply_rotary, **options, offset=2),
            leaves,
        )


def test_packed_positions_restart(device):
    """The positions themselves: a packed call equals separate calls per sequence."""
    inv_freq = _inv_freq(8, device)
    lengths = (3, 4)
    q = torch.randn(sum(lengths), 2, 8, device=device)
    k = torch.randn(sum(lengths), 1, 8, device=device)
    cu_seqlens = torch.tensor([0, 3, 7], device=device)
    q_rot, k_rot = fastformer.apply_rotary(q, k, inv_freq, cu_seqlens=cu_seqlens, layout="thd")
    for start, end in ((0, 3), (3, 7)):
        q_one, k_one = fastformer.apply_rotary(q[None, start:end], k[None, start:end], inv_freq)
        assert torch.equal(q_rot[start:end], q_one[0])
        assert torch.equal(k_rot[start:end], k_one[0])


@pytest.mark.parametrize("layout", ["bshd", "bhsd"])
def test_slices_of_fused_qkv(check, device, layout):
    """CASES A9: q and k as views of one fused qkv projection, never copied."""
    batch, seqlen, n_heads_q, n_heads_k, head_dim = 2, 4, 4, 2, 16
    width = (n_heads_q + 2 * n_heads_k) * head_dim
    inv_freq = _inv_freq(head_dim, device)
    split = n_heads_q * head_dim

    def call(fn, qkv):
        q = qkv[..., :split].unflatten(-1, (n_heads_q, head_dim))  # (B, S, Hq, D)
        k = qkv[..., split : split + n_heads_k * head_dim].unflatten(-1, (n_heads_k, head_dim))
        if layout == "bhsd":
            q, k = q.transpose(1, 2), k.transpose(1, 2)  # (B, H, S, D)
        return fn(q, k, inv_freq, layout=layout)

    qkv = _leaf((batch, seqlen, width), torch.bfloat16, device)
    check(
        functools.partial(call, fastformer.apply_rotary),
        functools.partial(call, reference.apply_rotary),
        [qkv],
    )


def test_strided_head_dim(check, device):
    """Features read with a stride (x[..., ::2]) and q, k in different layouts' strides."""
    inv_freq = _inv_freq(8, device)

    def call(fn, q, k):
        return fn(q[..., ::2], k.transpose(1, 2).contiguous().transpose(1, 2), inv_freq)

    check(
        functools.partial(call, fastformer.apply_rotary),
        functools.partial(call, reference.apply_rotary),
        [_leaf((2, 3, 2, 16), torch.float32, device), _leaf((2, 3, 1, 8), torch.float32, device)],
    )


def test_inputs_unchanged_out_of_place(device):
    q = torch.randn(2, 5, 4, 16, device=device, dtype=torch.bfloat16)
    k = torch.randn(2, 5, 2, 16, device=device, dtype=torch.bfloat16)
    q0, k0 = q.clone(), k.clone()
    q_rot, k_rot = fastformer.apply_rotary(q, k, _inv_freq(8, device), offset=3)
    assert torch.equal(q, q0) and torch.equal(k, k0)
    assert q_rot.data_ptr() != q.data_ptr() and k_rot.data_ptr() != k.data_ptr()
    assert not torch.equal(q_rot, q) and q_rot.is_contiguous()


@pytest.mark.parametrize("layout", ["bshd", "bhsd"])
@pytest.mark.parametrize("interleaved", STYLES, ids=STYLE_IDS)
def test_in_place(check, device, interleaved, layout):
    """In place: q and k themselves are rotated and returned, and gradients still flow."""
    inv_freq = _inv_freq(12, device)
    shape_q, shape_k = _shapes(layout, 2, 4, 4, 2, 16)

    def call(fn, q, k):
        q, k = q * 1, k * 1  # non-leaf tensors may be modified in place
        q_rot, k_rot = fn(q, k, inv_freq, layout=layout, interleaved=interleaved, inplace=True)
        assert q_rot is q and k_rot is k
        return q_rot, k_rot

    check(
        functools.partial(call, fastformer.apply_rotary),
        functools.partial(call, reference.apply_rotary),
        [_leaf(shape_q, torch.float16, device), _leaf(shape_k, torch.float16, device)],
    )


def test_in_place_on_fused_qkv_leaves_v_alone(device):
    qkv = torch.randn(2, 3, 3, 2, 8, device=device)  # (B, S, q/k/v, H, D)
    before = qkv.clone()
    q, k = qkv[:, :, 0], qkv[:, :, 1]
    expected = reference.apply_rotary(q.clone(), k.clone(), _inv_freq(8, device))
    fastformer.apply_rotary(q, k, _inv_freq(8, device), inplace=True)
    torch.testing.assert_close(qkv[:, :, 0], expected[0])
    torch.testing.assert_close(qkv[:, :, 1], expected[1])
    assert torch.equal(qkv[:, :, 2], before[:, :, 2])


def _linear_views(lin, x, shape_q, shape_k):
    q = lin(x)[..., : shape_q[-2] * shape_q[-1]].view(shape_q)  # (B, S, Hq, D), a view
    k = lin(x).view(shape_k)  # (B, S, Hk, D), a view of another Linear output
    return q, k


def _fused_views(lin, x, n_heads_q, n_heads_k, head_dim):
    qkv = lin(x).unflatten(-1, (n_heads_q + 2 * n_heads_k, head_dim))  # (B, S, Hq + 2 Hk, D)
    return qkv[:, :, :n_heads_q], qkv[:, :, n_heads_q : n_heads_q + n_heads_k]


@pytest.mark.parametrize("source", ["linear_views", "fused_qkv_slices", "transposed"])
@pytest.mark.parametrize("interleaved", STYLES, ids=STYLE_IDS)
def test_in_place_on_views_under_autograd(device, interleaved, source):
    """In place on views (a Linear output reshaped, slices of a fused qkv projection, a
    transpose): autograd accepts it, and outputs and gradients equal the out-of-place call's."""
    batch, seqlen, n_heads_q, n_heads_k, head_dim = 2, 5, 4, 2, 16
    inv_freq = _inv_freq(12, device)
    x = torch.randn(batch, seqlen, 32, device=device)
    width = (n_heads_q + 2 * n_heads_k) * head_dim
    lin = torch.nn.Linear(32, width, device=device)

    def run(inplace):
        lin.zero_grad()
        layout = "bshd"
        if source == "fused_qkv_slices":
            q, k = _fused_views(lin, x, n_heads_q, n_heads_k, head_dim)
        else:
            shape_k = (batch, seqlen, width // head_dim, head_dim)
            q, k = _linear_views(lin, x, (batch, seqlen, n_heads_q, head_dim), shape_k)
        if source == "transposed":
            q, k, layout = q.transpose(1, 2), k.transpose(1, 2), "bhsd"  # (B, H, S, D)
        q_rot, k_rot = fastformer.apply_rotary(
            q, k, inv_freq, interleaved=interleaved, layout=layout, inplace=inplace
        )
        assert (q_rot is q and k_rot is k) == inplace
        weights = torch.linspace(-1, 1, q_rot.numel(), device=device).view(q_rot.shape)
        ((q_rot * weights).sum() + (k_rot * k_rot).sum()).backward()
        return q_rot.detach(), k_rot.detach(), lin.weight.grad.clone(), lin.bias.grad.clone()

    expected, got = run(inplace=False), run(inplace=True)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_in_place_one_launch_forward(device, monkeypatch):
    """The in-place forward still rotates q and k in one launch (the backward takes two)."""
    import fastformer.functional.rotary as functional_rotary

    calls = []
    original = functional_rotary.rotary_fwd
    monkeypatch.setattr(
        functional_rotary, "rotary_fwd", lambda *a, **kw: calls.append(1) or original(*a, **kw)
    )
    lin = torch.nn.Linear(8, 64, device=device)
    q, k = _fused_views(lin, torch.randn(1, 3, 8, device=device), 2, 1, 16)
    q_rot, k_rot = fastformer.apply_rotary(q, k, _inv_freq(16, device), inplace=True)
    assert len(calls) == 1
    (q_rot.sum() + k_rot.sum()).backward()
    assert len(calls) == 3


@pytest.mark.parametrize("scale", [np.float32(1.2), np.float64(1.2), np.float16(1.5), 2], ids=str)
def test_attention_scaling_real_scalars(device, scale):
    """Any real scalar (numpy floats of any width included) scales like the same Python float."""
    q = torch.randn(1, 3, 2, 8, device=device)
    k = torch.randn(1, 3, 1, 8, device=device)
    inv_freq = _inv_freq(8, device)
    got = fastformer.apply_rotary(q, k, inv_freq, attention_scaling=scale)
    expected = fastformer.apply_rotary(q, k, inv_freq, attention_scaling=float(scale))
    for a, b in zip(got, expected, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    "sizes",
    [(0, 5, 4, 2), (2, 0, 4, 2), (2, 5, 0, 2), (2, 5, 4, 0), (2, 5, 0, 0)],
    ids=["batch0", "seq0", "q_heads0", "k_heads0", "heads0"],
)
@pytest.mark.parametrize("layout", ["bshd", "bhsd"])
def test_empty(device, layout, sizes):
    """CASES A5: empty outputs and gradients of the right shape, no launch error."""
    shape_q, shape_k = _shapes(layout, *sizes, 8)
    q = torch.randn(shape_q, device=device, requires_grad=True)
    k = torch.randn(shape_k, device=device, requires_grad=True)
    inv_freq = _inv_freq(8, device)
    q_rot, k_rot = fastformer.apply_rotary(q, k, inv_freq, layout=layout)
    assert q_rot.shape == q.shape and k_rot.shape == k.shape
    (q_rot.sum() + k_rot.sum()).backward()
    assert q.grad.shape == q.shape and k.grad.shape == k.shape
    if k.numel():
        torch.testing.assert_close(k_rot, reference.apply_rotary(q, k, inv_freq, layout=layout)[1])


def test_backward_is_the_inverse_rotation(device):
    """Rotating by the angle, then feeding the result back as the gradient, gives the input:
    the backward is R(-angle), the exact inverse (fp32, up to rounding)."""
    q = torch.randn(1, 6, 2, 16, device=device, requires_grad=True)
    k = torch.randn(1, 6, 1, 16, device=device, requires_grad=True)
    q_rot, k_rot = fastformer.apply_rotary(q, k, _inv_freq(16, device), offset=1000)
    torch.autograd.backward((q_rot, k_rot), (q_rot.detach(), k_rot.detach()))
    torch.testing.assert_close(q.grad, q.detach())
    torch.testing.assert_close(k.grad, k.detach())


def test_offset_changes_result_r2(check, device):
    """CASES R2: the same call at offset 0 then 5 differs, and both are right."""
    q = torch.randn(1, 4, 2, 16, device=device)
    k = torch.randn(1, 4, 2, 16, device=device)
    inv_freq = _inv_freq(16, device)
    first = fastformer.apply_rotary(q, k, inv_freq, offset=0)
    second = fastformer.apply_rotary(q, k, inv_freq, offset=5)
    assert not torch.allclose(first[0], second[0])
    for offset, got in ((0, first), (5, second)):
        expected = reference.apply_rotary(q.double(), k.double(), inv_freq, offset=offset)
        for a, b in zip(got, expected, strict=True):
            torch.testing.assert_close(a.double(), b, atol=1e-5, rtol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("interleaved", STYLES, ids=STYLE_IDS)
@pytest.mark.parametrize(
    "dims",
    [(32, 32, 128, 128), (32, 8, 128, 128), (64, 64, 96, 24)],
    ids=["llama-7b", "llama3-8b", "gpt-neox-20b"],
)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_benchmark_shapes_on_gpu(check, device, dtype, dims, interleaved):
    """The benchmark's shapes (4096 tokens), with positions past 4096 via an offset."""
    n_heads_q, n_heads_k, head_dim, rotary_dim = dims
    _check_rotary(
        check, device, dtype, batch=1, seqlen=4096, heads=(n_heads_q, n_heads_k),
        head_dim=head_dim, rotary_dim=rotary_dim, interleaved=interleaved, offset=4096,
    )  # fmt: skip
