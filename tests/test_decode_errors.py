"""Every rejection path of decode_attention, kv_cache_append_ and rotate_queries: the right
exception, naming the argument (and the value or limit), raised before any kernel launch (the
launchers are replaced by ones that fail the test if reached)."""

from __future__ import annotations

import re

import pytest
import torch

import fastformer
from fastformer.functional import decode as decode_api


@pytest.fixture(autouse=True)
def no_launch(monkeypatch):
    def launched(*args, **kwargs):
        raise AssertionError("a kernel was launched before the input was refused")

    monkeypatch.setattr(decode_api, "decode_attention_fwd", launched)
    monkeypatch.setattr(decode_api, "kv_append", launched)


def _lengths(values):
    return torch.tensor(values, dtype=torch.int32)


def _attention_args(**changes):
    args = dict(
        q=torch.randn(2, 4, 1, 16),
        k_cache=torch.randn(2, 2, 8, 16),
        v_cache=torch.randn(2, 2, 8, 16),
        cache_seqlens=_lengths([3, 8]),
    )
    args.update(changes)
    return args


def _paged_args(**changes):
    args = _attention_args(
        k_cache=torch.randn(5, 4, 2, 16),
        v_cache=torch.randn(5, 4, 2, 16),
        block_table=torch.tensor([[0, 1], [2, 3]], dtype=torch.int32),
    )
    args.update(changes)
    return args


META = torch.device("meta")

ATTENTION_CASES = {
    "q_not_tensor": (dict(q=[1.0]), TypeError, "q must be a torch.Tensor"),
    "q_int": (dict(q=torch.ones(2, 4, 1, 16, dtype=torch.int32)), TypeError, "q.dtype"),
    "q_3d": (dict(q=torch.randn(4, 1, 16)), ValueError, "q.shape"),
    "q_fp64": (dict(q=torch.randn(2, 4, 1, 16).double()), TypeError, "q.dtype"),
    "q_half_cache_float": (dict(q=torch.randn(2, 4, 1, 16).half()), TypeError, "k_cache.dtype"),
    "q_other_device": (dict(q=torch.randn(2, 4, 1, 16, device=META)), ValueError, "q is on"),
    "q_head_dim": (dict(q=torch.randn(2, 4, 1, 32)), ValueError, "q head_dim=32"),
    "q_heads": (dict(q=torch.randn(2, 3, 1, 16)), ValueError, "multiple of the cache's 2"),
    "cache_3d": (dict(k_cache=torch.randn(2, 8, 16)), ValueError, "k_cache.shape"),
    "cache_fp64": (dict(k_cache=torch.randn(2, 2, 8, 16).double()), TypeError, "k_cache.dtype"),
    "v_shape": (dict(v_cache=torch.randn(2, 2, 9, 16)), ValueError, "v_cache.shape"),
    "v_dtype": (dict(v_cache=torch.randn(2, 2, 8, 16).half()), TypeError, "v_cache.dtype"),
    "cache_batch": (
        dict(k_cache=torch.randn(3, 2, 8, 16), v_cache=torch.randn(3, 2, 8, 16)),
        ValueError,
        "batch 3",
    ),
    "head_dim_320": (
        dict(
            q=torch.randn(2, 4, 1, 320),
            k_cache=torch.randn(2, 2, 8, 320),
            v_cache=torch.randn(2, 2, 8, 320),
        ),
        NotImplementedError,
        "head_dim=320; at most 256",
    ),
    "seqlens_int64": (dict(cache_seqlens=torch.tensor([3, 8])), TypeError, "cache_seqlens"),
    "seqlens_list": (dict(cache_seqlens=[3, 8]), TypeError, "cache_seqlens must be"),
    "seqlens_2d": (dict(cache_seqlens=_lengths([[3, 8]])), ValueError, "cache_seqlens.shape"),
    "seqlens_batch": (dict(cache_seqlens=_lengths([3])), ValueError, "expected (2,)"),
    "seqlens_device": (
        dict(cache_seqlens=torch.zeros(2, dtype=torch.int32, device=META)),
        ValueError,
        "cache_seqlens is on",
    ),
    "seqlens_overflow": (
        dict(cache_seqlens=_lengths([3, 9])),
        ValueError,
        "row 1: length 9 = 9 exceeds the cache's 8",
    ),
    "seqlens_negative": (dict(cache_seqlens=_lengths([-1, 2])), ValueError, "cache_seqlens[0]=-1"),
}


@pytest.mark.parametrize("case", list(ATTENTION_CASES))
def test_decode_attention_rejects(case):
    changes, error, message = ATTENTION_CASES[case]
    with pytest.raises(error, match=re.escape(message)):
        fastformer.decode_attention(**_attention_args(**changes))


OPTION_CASES = {
    "scale_nan": (dict(scale=float("nan")), ValueError, "scale=nan"),
    "scale_str": (dict(scale="0.5"), ValueError, "scale="),
    "num_splits_0": (dict(num_splits=0), ValueError, "num_splits=0; expected 1 to 128"),
    "num_splits_129": (dict(num_splits=129), ValueError, "num_splits=129"),
    "num_splits_float": (dict(num_splits=2.0), TypeError, "num_splits=2.0"),
    "num_splits_bool": (dict(num_splits=True), TypeError, "num_splits=True"),
    "return_lse": (dict(return_lse=1), TypeError, "return_lse=1"),
    "validate": (dict(validate="no"), TypeError, "validate='no'"),
}


@pytest.mark.parametrize("case", list(OPTION_CASES))
def test_decode_attention_rejects_options(case):
    changes, error, message = OPTION_CASES[case]
    with pytest.raises(error, match=message):
        fastformer.decode_attention(**_attention_args(), **changes)


PAGED_CASES = {
    "table_int64": (dict(block_table=torch.tensor([[0, 1], [2, 3]])), TypeError, "block_table"),
    "table_1d": (dict(block_table=_lengths([0, 1])), ValueError, "block_table.shape"),
    "table_batch": (dict(block_table=_lengths([[0, 1]])), ValueError, "block_table.shape"),
    "table_out_of_range": (
        dict(block_table=_lengths([[0, 5], [2, 3]]), cache_seqlens=_lengths([5, 8])),
        ValueError,
        r"block_table\[0\] holds block 5 .* 5 blocks",
    ),
    "table_negative": (
        dict(block_table=_lengths([[0, 1], [-1, 3]])),
        ValueError,
        r"block_table\[1\] holds block -1",
    ),
    "paged_overflow": (
        dict(cache_seqlens=_lengths([3, 9])),
        ValueError,
        "row 1: length 9 = 9 exceeds the cache's 8",
    ),
    "paged_cache_3d": (dict(k_cache=torch.randn(5, 4, 32)), ValueError, "num_blocks, block_size"),
    "paged_heads": (dict(q=torch.randn(2, 3, 1, 16)), ValueError, "multiple of the cache's 2"),
}


@pytest.mark.parametrize("case", list(PAGED_CASES))
def test_paged_decode_attention_rejects(case):
    changes, error, message = PAGED_CASES[case]
    with pytest.raises(error, match=message):
        fastformer.decode_attention(**_paged_args(**changes))


@pytest.mark.parametrize("op", ["decode_attention", "kv_cache_append_"])
def test_rows_past_int32_offsets_are_refused(op):
    """A cache whose positions span 2**31 elements inside a row: NotImplementedError naming the
    strides (shapes only: meta tensors, nothing allocated)."""
    huge = torch.empty_strided((1, 1, 3, 16), (0, 0, 2**30, 1), device=META)
    args = dict(k_cache=huge, v_cache=huge, cache_seqlens=_lengths([1]))
    if op == "decode_attention":
        call = fastformer.decode_attention
        args["q"] = torch.empty(1, 2, 1, 16, device=META)
    else:
        call = fastformer.kv_cache_append_
        args["k_new"] = args["v_new"] = torch.empty(1, 1, 1, 16, device=META)
    with pytest.raises(NotImplementedError, match=r"k_cache.stride\(\)=.* below 2147483648"):
        call(**args)


def test_unused_block_table_entries_are_not_checked():
    """Entries past a row's last used block may hold anything (-1 padding): no error. The
    launcher is stubbed here, so reaching it proves the checks passed."""
    args = _paged_args(block_table=_lengths([[0, -1], [2, 3]]), cache_seqlens=_lengths([4, 8]))
    with pytest.raises(AssertionError, match="kernel was launched"):
        fastformer.decode_attention(**args)


def _append_args(**changes):
    args = dict(
        k_cache=torch.randn(2, 2, 8, 16),
        v_cache=torch.randn(2, 2, 8, 16),
        k_new=torch.randn(2, 2, 3, 16),
        v_new=torch.randn(2, 2, 3, 16),
        cache_seqlens=_lengths([0, 5]),
    )
    args.update(changes)
    return args


APPEND_CASES = {
    "k_new_3d": (dict(k_new=torch.randn(2, 3, 16)), ValueError, "k_new.shape"),
    "k_new_dtype": (dict(k_new=torch.randn(2, 2, 3, 16).half()), TypeError, "k_new.dtype"),
    "v_new_dtype": (dict(v_new=torch.randn(2, 2, 3, 16).half()), TypeError, "v_new.dtype"),
    "k_new_device": (dict(k_new=torch.randn(2, 2, 3, 16, device=META)), ValueError, "k_new is on"),
    "k_new_heads": (dict(k_new=torch.randn(2, 3, 3, 16)), ValueError, "has 3 heads of 16"),
    "k_new_head_dim": (dict(k_new=torch.randn(2, 2, 3, 8)), ValueError, "heads of 8 features"),
    "v_new_shape": (dict(v_new=torch.randn(2, 2, 2, 16)), ValueError, "v_new.shape"),
    "cache_dtype": (
        dict(k_cache=torch.randn(2, 2, 8, 16).half(), v_cache=torch.randn(2, 2, 8, 16).half()),
        TypeError,
        "k_new.dtype",
    ),
    "cache_batch": (
        dict(k_cache=torch.randn(3, 2, 8, 16), v_cache=torch.randn(3, 2, 8, 16)),
        ValueError,
        "batch 3",
    ),
    "v_cache_shape": (dict(v_cache=torch.randn(2, 2, 7, 16)), ValueError, "v_cache.shape"),
    "seqlens_int64": (dict(cache_seqlens=torch.tensor([0, 5])), TypeError, "cache_seqlens"),
    "seqlens_batch": (dict(cache_seqlens=_lengths([0, 5, 1])), ValueError, "cache_seqlens"),
    "overflow": (
        dict(cache_seqlens=_lengths([0, 6])),
        ValueError,
        r"row 1: length 6 \+ 3 new tokens = 9 exceeds the cache's 8 positions",
    ),
    "negative_length": (dict(cache_seqlens=_lengths([-2, 0])), ValueError, r"cache_seqlens\[0\]"),
    "new_seqlens_int64": (dict(new_seqlens=torch.tensor([1, 1])), TypeError, "new_seqlens"),
    "new_seqlens_shape": (dict(new_seqlens=_lengths([1])), ValueError, "new_seqlens.shape"),
    "new_seqlens_too_many": (
        dict(new_seqlens=_lengths([1, 4])),
        ValueError,
        r"new_seqlens\[1\]=4; expected 0 to seqlen_new=3",
    ),
    "new_seqlens_overflow": (
        dict(cache_seqlens=_lengths([0, 7]), new_seqlens=_lengths([3, 2])),
        ValueError,
        r"row 1: length 7 \+ 2 new tokens = 9",
    ),
    "inv_freq_fp16": (dict(inv_freq=torch.ones(8).half()), TypeError, "inv_freq.dtype"),
    "inv_freq_long": (dict(inv_freq=torch.ones(9)), ValueError, "inv_freq.shape"),
    "inv_freq_2d": (dict(inv_freq=torch.ones(1, 8)), ValueError, "inv_freq.shape"),
    "inv_freq_device": (dict(inv_freq=torch.ones(8, device=META)), ValueError, "inv_freq is on"),
    "attention_scaling_inf": (
        dict(inv_freq=torch.ones(8), attention_scaling=float("inf")),
        ValueError,
        "attention_scaling=inf",
    ),
    "attention_scaling_bool": (
        dict(inv_freq=torch.ones(8), attention_scaling=True),
        TypeError,
        "attention_scaling",
    ),
    "interleaved": (dict(interleaved=1), TypeError, "interleaved=1"),
    "validate": (dict(validate=None), TypeError, "validate=None"),
    "k_new_requires_grad": (
        dict(k_new=torch.randn(2, 2, 3, 16, requires_grad=True)),
        ValueError,
        "k_new requires grad",
    ),
    "cache_requires_grad": (
        dict(v_cache=torch.randn(2, 2, 8, 16, requires_grad=True)),
        ValueError,
        "v_cache requires grad",
    ),
    "paged_block_out_of_range": (
        dict(
            k_cache=torch.randn(3, 4, 2, 16),
            v_cache=torch.randn(3, 4, 2, 16),
            block_table=_lengths([[0, 1], [2, 3]]),
        ),
        ValueError,
        r"block_table\[1\] holds block 3",
    ),
}


@pytest.mark.parametrize("case", list(APPEND_CASES))
def test_kv_cache_append_rejects(case):
    changes, error, message = APPEND_CASES[case]
    with pytest.raises(error, match=message):
        fastformer.kv_cache_append_(**_append_args(**changes))


def test_kv_cache_append_leaves_the_cache_untouched_when_it_refuses():
    args = _append_args(cache_seqlens=_lengths([0, 6]))
    before = args["k_cache"].clone()
    with pytest.raises(ValueError, match="exceeds"):
        fastformer.kv_cache_append_(**args)
    assert torch.equal(args["k_cache"], before)


ROTATE_CASES = {
    "q_3d": (dict(q=torch.randn(4, 1, 16)), ValueError, "q.shape"),
    "seqlens_batch": (dict(cache_seqlens=_lengths([1])), ValueError, "cache_seqlens.shape"),
    "seqlens_float": (dict(cache_seqlens=torch.ones(2)), TypeError, "cache_seqlens"),
    "inv_freq_fp16": (dict(inv_freq=torch.ones(8).half()), TypeError, "inv_freq.dtype"),
}


@pytest.mark.parametrize("case", list(ROTATE_CASES))
def test_rotate_queries_rejects(case):
    args = dict(q=torch.randn(2, 4, 1, 16), inv_freq=torch.ones(8), cache_seqlens=_lengths([1, 2]))
    changes, error, message = ROTATE_CASES[case]
    args.update(changes)
    with pytest.raises(error, match=message):
        fastformer.rotate_queries(**args)


@pytest.mark.parametrize("form", ["expanded v_cache", "overlapping k_cache", "k and v in one"])
def test_append_refuses_caches_with_shared_elements(form, device):
    """The append writes every cache element once: an expanded cache (rows would overwrite
    each other; on a GPU, race) or caches sharing memory are refused, naming the cache."""
    k_cache = torch.zeros(2, 2, 5, 4, device=device)
    v_cache = torch.zeros(2, 2, 5, 4, device=device)
    name = "v_cache"
    if form == "expanded v_cache":
        v_cache = torch.zeros(1, 2, 5, 4, device=device).expand(2, 2, 5, 4)
    elif form == "overlapping k_cache":
        k_cache = torch.zeros(64, device=device).as_strided((2, 2, 5, 4), (8, 4, 4, 1))
        name = "k_cache"
    else:
        v_cache, name = k_cache[:, :, :], "k_cache and v_cache share memory"
    k_new, v_new = (torch.randn(2, 2, 3, 4, device=device) for _ in "kv")
    lengths = torch.tensor([0, 1], dtype=torch.int32, device=device)
    before = (k_cache.clone(), v_cache.clone())
    with pytest.raises(ValueError, match=name):
        fastformer.kv_cache_append_(k_cache, v_cache, k_new, v_new, lengths)
    assert torch.equal(k_cache, before[0]) and torch.equal(v_cache, before[1])  # no launch
