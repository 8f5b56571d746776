"""Every rejection path of the rotary embedding: a clear exception naming the argument, raised
before any launch (and before anything is written, in place or not)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import Gemma3TextConfig, GPTJConfig

import fastformer
from fastformer.functional.rope_scaling import RopeParameters, rope_init
from fastformer.nn import RotaryEmbedding

ROT = fastformer.apply_rotary


def _q(*shape, dtype=torch.float32):
    return torch.randn(*(shape or (2, 5, 4, 16)), dtype=dtype)


def _k(*shape, dtype=torch.float32):
    return torch.randn(*(shape or (2, 5, 2, 16)), dtype=dtype)


def _f(n=8, dtype=torch.float32):
    return torch.rand(n, dtype=dtype)


CASES = [
    ("q_not_tensor", lambda: ROT([1.0], _k(), _f()), TypeError, "q must be"),
    ("k_not_tensor", lambda: ROT(_q(), None, _f()), TypeError, "k must be"),
    ("q_int", lambda: ROT(_q().int(), _k(), _f()), TypeError, "q.dtype=torch.int32"),
    ("q_fp64", lambda: ROT(_q().double(), _k(), _f()), TypeError, "q.dtype=torch.float64"),
    ("k_dtype", lambda: ROT(_q(), _k().half(), _f()), TypeError, "k.dtype=torch.float16"),
    ("k_device", lambda: ROT(_q(), _k().to("meta"), _f()), ValueError, "k is on meta"),
    ("layout_unknown", lambda: ROT(_q(), _k(), _f(), layout="sbhd"), ValueError, "layout='sbhd'"),
    ("q_dims", lambda: ROT(_q(5, 4, 16), _k(), _f()), ValueError, "q.shape=(5, 4, 16)"),
    ("k_dims_bhsd", lambda: ROT(_q(), _k(5, 2, 16), _f(), layout="bhsd"), ValueError, "k.shape"),
    ("batch_differs", lambda: ROT(_q(), _k(3, 5, 2, 16), _f()), ValueError, "batch"),
    ("seqlen_differs", lambda: ROT(_q(), _k(2, 6, 2, 16), _f()), ValueError, "seqlen"),
    ("head_dim_differs", lambda: ROT(_q(), _k(2, 5, 2, 8), _f(4)), ValueError, "head_dim"),
    (
        "seqlen_differs_bhsd",
        lambda: ROT(_q(2, 4, 5, 16), _k(2, 2, 6, 16), _f(), layout="bhsd"),
        ValueError,
        "seqlen (6 != 5)",
    ),
    ("inv_freq_not_tensor", lambda: ROT(_q(), _k(), [1.0] * 8), TypeError, "inv_freq must be"),
    (
        "inv_freq_bf16",
        lambda: ROT(_q(), _k(), _f(dtype=torch.bfloat16)),
        TypeError,
        "inv_freq.dtype=torch.bfloat16",
    ),
    ("inv_freq_2d", lambda: ROT(_q(), _k(), _f().view(2, 4)), ValueError, "inv_freq.shape=(2, 4)"),
    ("inv_freq_empty", lambda: ROT(_q(), _k(), _f(0)), ValueError, "inv_freq.shape=(0,)"),
    (
        "inv_freq_device",
        lambda: ROT(_q(), _k(), _f().to("meta")),
        ValueError,
        "inv_freq is on meta",
    ),
    (
        "inv_freq_requires_grad",
        lambda: ROT(_q(), _k(), _f().requires_grad_()),
        NotImplementedError,
        "inv_freq.requires_grad",
    ),
    ("rotary_dim_odd", lambda: ROT(_q(), _k(), _f(), rotary_dim=7), ValueError, "rotary_dim=7"),
    (
        "rotary_dim_too_big",
        lambda: ROT(_q(), _k(), _f(), rotary_dim=18),
        ValueError,
        "rotary_dim=18 is larger than head_dim=16",
    ),
    (
        "inv_freq_too_long",
        lambda: ROT(_q(), _k(), _f(9)),
        ValueError,
        "rotary_dim=18 is larger than head_dim=16",
    ),
    (
        "rotary_dim_mismatch",
        lambda: ROT(_q(), _k(), _f(), rotary_dim=8),
        ValueError,
        "rotary_dim=8 must equal 2 * inv_freq.numel()=16",
    ),
    ("rotary_dim_zero", lambda: ROT(_q(), _k(), _f(), rotary_dim=0), ValueError, "rotary_dim=0"),
    ("rotary_dim_float", lambda: ROT(_q(), _k(), _f(), rotary_dim=16.0), TypeError, "rotary_dim"),
    (
        "position_ids_shape",
        lambda: ROT(_q(), _k(), _f(), position_ids=torch.zeros(2, 4, dtype=torch.long)),
        ValueError,
        "position_ids.shape=(2, 4) must be (2, 5) or (1, 5)",
    ),
    (
        "position_ids_1d",
        lambda: ROT(_q(), _k(), _f(), position_ids=torch.arange(5)),
        ValueError,
        "position_ids.shape=(5,)",
    ),
    (
        "position_ids_batch",
        lambda: ROT(_q(), _k(), _f(), position_ids=torch.zeros(3, 5, dtype=torch.long)),
        ValueError,
        "position_ids.shape=(3, 5)",
    ),
    (
        "position_ids_float",
        lambda: ROT(_q(), _k(), _f(), position_ids=torch.zeros(2, 5)),
        TypeError,
        "position_ids.dtype=torch.float32",
    ),
    (
        "position_ids_device",
        lambda: ROT(_q(), _k(), _f(), position_ids=torch.zeros(2, 5, dtype=torch.long).to("meta")),
        ValueError,
        "position_ids is on meta",
    ),
    ("offset_float", lambda: ROT(_q(), _k(), _f(), offset=1.0), TypeError, "offset must be an int"),
    ("offset_bool", lambda: ROT(_q(), _k(), _f(), offset=True), TypeError, "offset must be an int"),
    (
        "offset_tensor",
        lambda: ROT(_q(), _k(), _f(), offset=torch.tensor(3)),
        TypeError,
        "offset must be an int",
    ),
    (
        "offset_huge",
        lambda: ROT(_q(), _k(), _f(), offset=2**63),
        ValueError,
        "offset=" + str(2**63),
    ),
    (
        "thd_without_cu_seqlens",
        lambda: ROT(_q(5, 4, 16), _k(5, 2, 16), _f(), layout="thd"),
        ValueError,
        "layout='thd' with cu_seqlens=None",
    ),
    (
        "cu_seqlens_without_thd",
        lambda: ROT(_q(), _k(), _f(), cu_seqlens=torch.tensor([0, 5])),
        ValueError,
        "layout='bshd' with cu_seqlens=a tensor",
    ),
    (
        "cu_seqlens_float",
        lambda: ROT(_q(5, 4, 16), _k(5, 2, 16), _f(), layout="thd", cu_seqlens=torch.ones(2)),
        TypeError,
        "cu_seqlens.dtype=torch.float32",
    ),
    (
        "cu_seqlens_2d",
        lambda: ROT(
            _q(5, 4, 16), _k(5, 2, 16), _f(), layout="thd", cu_seqlens=torch.zeros(1, 2).long()
        ),
        ValueError,
        "cu_seqlens.shape=(1, 2)",
    ),
    (
        "cu_seqlens_and_position_ids",
        lambda: ROT(
            _q(5, 4, 16),
            _k(5, 2, 16),
            _f(),
            layout="thd",
            cu_seqlens=torch.tensor([0, 5]),
            position_ids=torch.zeros(1, 5, dtype=torch.long),
        ),
        ValueError,
        "position_ids must be None with cu_seqlens",
    ),
    ("interleaved_str", lambda: ROT(_q(), _k(), _f(), interleaved="yes"), TypeError, "interleaved"),
    ("inplace_int", lambda: ROT(_q(), _k(), _f(), inplace=1), TypeError, "inplace must be a bool"),
    (
        "attention_scaling_nan",
        lambda: ROT(_q(), _k(), _f(), attention_scaling=float("nan")),
        ValueError,
        "attention_scaling=nan",
    ),
    (
        "attention_scaling_tensor",
        lambda: ROT(_q(), _k(), _f(), attention_scaling=torch.tensor(1.0)),
        TypeError,
        "attention_scaling must be a real number",
    ),
    (
        "attention_scaling_numpy_bool",
        lambda: ROT(_q(), _k(), _f(), attention_scaling=np.bool_(True)),
        TypeError,
        "attention_scaling must be a real number",
    ),
    (
        "rope_type_unknown",
        lambda: rope_init(RopeParameters(head_dim=16, rope_type="longrope")),
        NotImplementedError,
        "rope_type='longrope'",
    ),
    (
        "rope_odd_rotary_dim",
        lambda: rope_init(RopeParameters(head_dim=16, partial_rotary_factor=0.3125)),
        ValueError,
        "rotary_dim=5",
    ),
    (
        "rope_missing_factor",
        lambda: rope_init(RopeParameters(head_dim=16, rope_type="linear")),
        ValueError,
        "factor=None",
    ),
    (
        "rope_llama3_missing",
        lambda: RotaryEmbedding(16, rope_type="llama3", factor=8.0),
        ValueError,
        "low_freq_factor=None",
    ),
]


@pytest.mark.parametrize("call, error, match", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_rejected_before_launch(call, error, match):
    with pytest.raises(
        error, match=match.replace("(", r"\(").replace(")", r"\)").replace("*", r"\*")
    ):
        call()


def test_rejected_in_place_call_writes_nothing():
    q, k = _q(), _k()
    q0, k0 = q.clone(), k.clone()
    with pytest.raises(ValueError):
        ROT(q, k, _f(), inplace=True, position_ids=torch.zeros(3, 5, dtype=torch.long))
    assert torch.equal(q, q0) and torch.equal(k, k0)


@pytest.mark.parametrize("view", [False, True], ids=["leaf", "view_of_leaf"])
def test_in_place_on_a_leaf_that_requires_grad_is_refused_before_launch(view):
    leaf = _q().requires_grad_()
    q = leaf[:, :, :2] if view else leaf
    q0 = q.detach().clone()
    with pytest.raises(ValueError, match="leaf tensor that requires grad"):
        ROT(q, _k(), _f(), inplace=True)
    assert torch.equal(q.detach(), q0)


def _overlapping_in_place_calls():
    t = _q()
    qkv = _q(2, 5, 8, 16)
    odd = torch.randn(400)
    return {
        "q_is_k": (t, t, "q and k share memory"),
        "q_expanded": (t[:, :, :1].expand(2, 5, 4, 16), _k(), "q (shape=(2, 5, 4, 16)"),
        "k_expanded": (_q(), torch.randn(16).expand(2, 5, 2, 16), "k (shape=(2, 5, 2, 16)"),
        "heads_overlap": (qkv[:, :, :4], qkv[:, :, 3:5], "q and k share memory"),
        "q_k_offset_by_one": (qkv[:, :, :4, :8], qkv[:, :, :2, 1:9], "q and k share memory"),
        "internal_overlap": (odd.as_strided((2, 5, 4, 16), (37, 11, 5, 1)), _k(), "q (shape="),
        "k_in_q_transposed": (t, t.transpose(1, 2)[:, :2].transpose(1, 2), "share memory"),
    }


@pytest.mark.parametrize("name", list(_overlapping_in_place_calls()))
def test_in_place_on_overlapping_memory_is_refused(name):
    """In place on elements that alias (q is k, an expanded view, overlapping slices) would
    rotate an element more than once: refused before anything is written."""
    q, k, match = _overlapping_in_place_calls()[name]
    q0, k0 = q.clone(), k.clone()
    with pytest.raises(ValueError, match=match.replace("(", r"\(").replace(")", r"\)")):
        ROT(q, k, _f(q.shape[-1] // 2), inplace=True)
    assert torch.equal(q, q0) and torch.equal(k, k0)


def test_in_place_on_disjoint_slices_of_one_buffer_is_accepted():
    """Interleaved but disjoint views of one buffer (q, k and v heads of a fused qkv) pass."""
    qkv = _q(2, 5, 8, 16)
    ROT(qkv[:, :, :4], qkv[:, :, 4:6], _f(), inplace=True)
    ROT(qkv[:, :, :4, :8], qkv[:, :, 4:6, 8:], _f(4), inplace=True)
    ROT(qkv[..., ::2], qkv[..., 1::2], _f(4), inplace=True)


def test_per_layer_rope_parameters_need_layer_type():
    config = Gemma3TextConfig()
    with pytest.raises(ValueError, match="per layer type.*full_attention.*sliding_attention"):
        RotaryEmbedding.from_config(config)
    with pytest.raises(ValueError, match="layer_type='global' is not one of"):
        RotaryEmbedding.from_config(config, layer_type="global")


def test_gptj_rotary_dim_larger_than_head_dim():
    with pytest.raises(ValueError, match="config.rotary_dim=256"):
        RotaryEmbedding.from_config(GPTJConfig(n_embd=256, n_head=2, rotary_dim=256))
