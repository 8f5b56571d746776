"""Hypothesis fuzz tests over the public ops: every draw matches eager PyTorch or is refused.

Each test draws small shapes (sizes 0 and 1 included), a layout (contiguous, transposed,
step-sliced, expanded: the views are built inside the call from fresh leaves, so gradients reach
the leaves), a dtype (fp32/fp16/bf16), occasional NaN and inf, and sometimes a bad argument
(wrong rank, mixed dtypes, a tensor on the 'meta' device as the "other device"). A valid draw
must pass ``fastformer.testing``'s rule against the op's eager reference in ``fastformer.reference``
(float64 truth, NaN positions equal, gradients checked on draws without NaN/inf); a bad draw
must raise TypeError/ValueError/NotImplementedError/RuntimeError naming the argument.

Design: one ``@given`` test per op family (layer_norm/rms_norm and linear/gated_linear share one
each, split by a drawn boolean), derandomized so that every run tries the same cases
(``EXAMPLES`` = 60, ``SLOW_EXAMPLES`` = 25 for attention and decode; ``fuzz_support``); each test
asserts how many cases per op it tried (at least ``MIN_PER_OP``) and reports the counts as a
``FuzzCount`` warning in pytest's summary (per test, so the counts hold under ``-n 2``). Each
example seeds torch from its draws (``seed_example``), so a failure replays and shrinks with the
same tensors. ``test_fuzz_layouts.py`` and ``test_fuzz_caches.py`` cover the other operands'
layouts and the other call forms.
Limits: the interpreter is slow, so shapes stay tiny and examples few (whole file < 60 s).
"""

from __future__ import annotations

import torch
from fuzz_support import TRIED, check_matches, check_refused, counted, fuzz_settings, seed_example
from hypothesis import event, given
from hypothesis import strategies as st

import fastformer
from fastformer import reference

EXAMPLES = 60
# Attention and decode cost ~0.5 s a valid case in the interpreter: fewer of them.
SLOW_EXAMPLES = 25


DTYPES = (torch.float32, torch.float16, torch.bfloat16)
LAYOUTS = ("contiguous", "transposed", "step", "expanded")
# Fewest cases per op in a run (the boolean-split tests share EXAMPLES between 2 ops).
MIN_PER_OP = 10
# Chance-like weights for the rarer draws, as hypothesis sampled_from lists.
SPECIALS = ("none", "none", "none", "nan", "inf")

sizes = st.integers(min_value=0, max_value=5)
positive = st.integers(min_value=1, max_value=5)


def _leaf(shape, dtype, layout, special, rng_draw):
    """A fresh leaf and the view function that gives the op its layout."""
    shape = list(shape)
    if layout == "transposed" and len(shape) >= 2:
        base = torch.randn(*shape[:-2], shape[-1], shape[-2]).to(dtype)
        view = lambda t: t.transpose(-1, -2)  # noqa: E731
    elif layout == "step" and shape:
        base = torch.randn(*shape[:-1], 2 * shape[-1]).to(dtype)
        view = lambda t: t[..., ::2]  # noqa: E731
    elif layout == "expanded" and shape:
        base = torch.randn(1, *shape[1:]).to(dtype)
        view = lambda t: t.expand(shape[0], *shape[1:])  # noqa: E731
    else:
        base = torch.randn(*shape).to(dtype)
        view = lambda t: t  # noqa: E731
    if special != "none" and base.numel():
        index = rng_draw(st.integers(0, base.numel() - 1))
        base.view(-1)[index] = float("nan") if special == "nan" else float("-inf")
    return base, view


def _check_valid(kernel_fn, reference_fn, leaves, names):
    check_matches(kernel_fn, reference_fn, leaves, names=names)


# ----------------------------------------------------------------------------------- norms


@counted("layer_norm", "rms_norm", minimum=MIN_PER_OP)
@fuzz_settings(EXAMPLES)
@given(data=st.data(), is_rms=st.booleans())
def test_fuzz_norm(data, is_rms):
    draw = data.draw
    seed_example(draw)
    dtype = draw(st.sampled_from(DTYPES))
    lead = draw(st.lists(sizes, min_size=0, max_size=2))
    hidden = draw(positive)
    layout = draw(st.sampled_from(LAYOUTS))
    special = draw(st.sampled_from(SPECIALS))
    use_residual, use_weight = draw(st.booleans()), draw(st.booleans())
    use_bias = not is_rms and draw(st.booleans())
    param_dtype = draw(st.sampled_from((dtype, torch.float32)))
    bad = draw(
        st.sampled_from(
            ("none", "none", "none", "none", "rank", "dtype", "device", "shape", "mixed")
        )
    )
    shape = [*lead, hidden]
    x, view = _leaf(shape, dtype, layout, special, draw)
    grad = special == "none" and bad == "none"
    leaves = [x.requires_grad_(grad)]
    weight = torch.randn(hidden).to(param_dtype).requires_grad_(grad) if use_weight else None
    bias = torch.randn(hidden).to(param_dtype).requires_grad_(grad) if use_bias else None
    residual = torch.randn(*shape).to(dtype).requires_grad_(grad) if use_residual else None
    normalized = (hidden,)
    op = fastformer.rms_norm if is_rms else fastformer.layer_norm
    ref = reference.rms_norm if is_rms else reference.layer_norm
    TRIED["rms_norm" if is_rms else "layer_norm"] += 1
    if bad != "none":
        event(f"norm refused: {bad}")
        names = {"rank": ["normalized_shape"], "shape": ["normalized_shape"]}.get(bad)
        if bad == "rank":
            normalized = (hidden, hidden + 1, 2)
        elif bad == "shape":
            normalized = (hidden + 1,)
        elif bad == "dtype":
            weight, names = torch.randn(hidden, dtype=torch.float64), ["weight"]
        elif bad == "mixed":
            other = torch.float16 if dtype != torch.float16 else torch.bfloat16
            residual, names = torch.randn(*shape).to(other), ["residual"]
        else:
            weight, names = torch.randn(hidden, device="meta"), ["weight"]
        extra = (bias,) if not is_rms else ()
        check_refused(lambda: op(view(x), normalized, weight, *extra, residual=residual), names)
        return
    event("norm valid")

    def call(fn):
        def run(x, weight, bias, residual):
            extra = (bias,) if not is_rms else ()
            return fn(view(x), normalized, weight, *extra, residual=residual)

        return run

    _check_valid(call(op), call(ref), [*leaves, weight, bias, residual], ["x", "w", "b", "r"])


# ----------------------------------------------------------------------------------- linear


@counted("linear", "gated_linear", minimum=MIN_PER_OP)
@fuzz_settings(EXAMPLES)
@given(data=st.data(), gated=st.booleans())
def test_fuzz_linear(data, gated):
    draw = data.draw
    seed_example(draw)
    dtype = draw(st.sampled_from(DTYPES))
    lead = draw(st.lists(sizes, min_size=0, max_size=2))
    in_f, out_f = draw(positive), draw(sizes)
    activations = ("gelu", "gelu_tanh", "relu", "silu") + (() if gated else (None,))
    activation = draw(st.sampled_from(activations))
    layout = draw(st.sampled_from(LAYOUTS))
    special = draw(st.sampled_from(SPECIALS))
    bad = draw(
        st.sampled_from(("none", "none", "none", "none", "rank", "dtype", "device", "shape", "act"))
    )
    x, view = _leaf([*lead, in_f], dtype, layout, special, draw)
    grad = special == "none" and bad == "none"
    x.requires_grad_(grad)
    w = torch.randn(out_f, in_f).div(in_f**0.5).to(dtype).requires_grad_(grad)
    w2 = torch.randn(out_f, in_f).div(in_f**0.5).to(dtype).requires_grad_(grad)
    bias = torch.randn(out_f).to(dtype).requires_grad_(grad) if draw(st.booleans()) else None
    TRIED["gated_linear" if gated else "linear"] += 1

    def call(x, w, w2, bias):
        if gated:
            return fastformer.gated_linear(view(x), w, w2, activation=activation)
        return fastformer.linear(view(x), w, bias, activation=activation)

    if bad != "none":
        event(f"linear refused: {bad}")
        names = ["weight"]
        if bad == "rank":
            w = w.detach().unsqueeze(0)
        elif bad == "dtype":
            w = w.detach().double()
        elif bad == "device":
            w = w.detach().to("meta")
        elif bad == "shape":
            w = torch.randn(out_f, in_f + 1).to(dtype)
        else:
            activation, names = "tanh", ["activation"]
        check_refused(lambda: call(x.detach(), w, w2.detach(), bias), names)
        return
    event("linear valid")

    def ref(x, w, w2, bias):
        if gated:
            return reference.gated_linear(view(x), w, w2, activation=activation)
        return reference.linear(view(x), w, bias, activation=activation)

    _check_valid(call, ref, [x, w, w2 if gated else None, bias], ["x", "w", "w_up", "bias"])


# -------------------------------------------------------------------------------- attention


@counted("scaled_dot_product_attention", minimum=MIN_PER_OP)
@fuzz_settings(SLOW_EXAMPLES)
@given(data=st.data())
def test_fuzz_attention(data):
    draw = data.draw
    seed_example(draw)
    dtype = draw(st.sampled_from(DTYPES))
    batch, kv_heads, group = draw(sizes), draw(positive), draw(st.integers(1, 3))
    seq_q, seq_k, head_dim = draw(sizes), draw(sizes), draw(st.integers(1, 8))
    gqa = group > 1
    heads = kv_heads * group
    is_causal = draw(st.booleans())
    mask_kind = "none" if is_causal else draw(st.sampled_from(("none", "bool", "float")))
    layout = draw(st.sampled_from(LAYOUTS))
    special = draw(st.sampled_from(SPECIALS))
    bad = draw(
        st.sampled_from(("none", "none", "none", "none", "rank", "dtype", "device", "heads"))
    )
    q, qview = _leaf([batch, heads, seq_q, head_dim], dtype, layout, special, draw)
    k, kview = _leaf([batch, kv_heads, seq_k, head_dim], dtype, layout, "none", draw)
    v = torch.randn(batch, kv_heads, seq_k, head_dim).to(dtype)
    mask = None
    mask_shape = draw(st.sampled_from(([seq_q, seq_k], [batch, 1, seq_q, seq_k])))
    if mask_kind == "bool":
        mask = torch.rand(*mask_shape) > 0.3
    elif mask_kind == "float":
        mask = torch.randn(*mask_shape).to(dtype)
    grad = special == "none" and bad == "none"
    for t in (q, k, v):
        t.requires_grad_(grad)
    TRIED["scaled_dot_product_attention"] += 1

    def call(fn):
        def run(q, k, v, mask):
            return fn(qview(q), kview(k), v, mask, is_causal=is_causal, enable_gqa=gqa)

        return run

    if bad != "none":
        event(f"attention refused: {bad}")
        names = ["k"]
        if bad == "rank":
            q, names = q.detach().unsqueeze(0), ["q"]
        elif bad == "dtype":
            k = k.detach().double()
        elif bad == "device":
            k = k.detach().to("meta")
        else:
            k = torch.randn(batch, heads + 1, seq_k, head_dim).to(dtype)
            kview = lambda t: t  # noqa: E731
        check_refused(lambda: call(fastformer.scaled_dot_product_attention)(q, k, v, mask), names)
        return
    event(f"attention valid ({mask_kind})")
    _check_valid(
        call(fastformer.scaled_dot_product_attention),
        call(reference.scaled_dot_product_attention),
        [q, k, v, mask],
        ["q", "k", "v", "mask"],
    )


# ---------------------------------------------------------------------------------- rotary


@counted("apply_rotary", minimum=MIN_PER_OP)
@fuzz_settings(EXAMPLES)
@given(data=st.data())
def test_fuzz_rotary(data):
    draw = data.draw
    seed_example(draw)
    dtype = draw(st.sampled_from(DTYPES))
    batch, seq, heads, kv_heads = draw(sizes), draw(sizes), draw(positive), draw(positive)
    half = draw(st.integers(1, 4))
    head_dim = 2 * half + 2 * draw(st.integers(0, 2))
    interleaved = draw(st.booleans())
    layout = draw(st.sampled_from(LAYOUTS))
    special = draw(st.sampled_from(SPECIALS))
    bad = draw(
        st.sampled_from(("none", "none", "none", "none", "rank", "dtype", "device", "inv_freq"))
    )
    q, qview = _leaf([batch, seq, heads, head_dim], dtype, layout, special, draw)
    k = torch.randn(batch, seq, kv_heads, head_dim).to(dtype)
    inv_freq = 1.0 / (10000.0 ** (torch.arange(half, dtype=torch.float32) / half))
    grad = special == "none" and bad == "none"
    q.requires_grad_(grad)
    k.requires_grad_(grad)
    TRIED["apply_rotary"] += 1

    def call(fn):
        def run(q, k, inv_freq):
            return fn(qview(q), k, inv_freq, interleaved=interleaved)

        return run

    if bad != "none":
        event(f"rotary refused: {bad}")
        names = ["k"]
        if bad == "rank":
            q, names = q.detach().unsqueeze(0), ["q"]
        elif bad == "dtype":
            k = k.detach().double()
        elif bad == "device":
            k = k.detach().to("meta")
        else:
            inv_freq, names = torch.rand(head_dim + 1), ["inv_freq"]
        check_refused(lambda: call(fastformer.apply_rotary)(q, k, inv_freq), names)
        return
    event("rotary valid")
    _check_valid(
        call(fastformer.apply_rotary),
        call(reference.apply_rotary),
        [q, k, inv_freq],
        ["q", "k", "inv_freq"],
    )


# ---------------------------------------------------------------------------------- decode


@counted("decode_attention", minimum=MIN_PER_OP)
@fuzz_settings(SLOW_EXAMPLES)
@given(data=st.data())
def test_fuzz_decode(data):
    draw = data.draw
    seed_example(draw)
    dtype = draw(st.sampled_from(DTYPES))
    batch, kv_heads, group = draw(sizes), draw(positive), draw(st.integers(1, 3))
    seq_q, capacity, head_dim = draw(positive), draw(st.integers(1, 8)), draw(st.integers(1, 8))
    heads = kv_heads * group
    layout = draw(st.sampled_from(LAYOUTS))
    special = draw(st.sampled_from(SPECIALS))
    bad = draw(
        st.sampled_from(("none", "none", "none", "none", "rank", "dtype", "device", "lengths"))
    )
    q, qview = _leaf([batch, heads, seq_q, head_dim], dtype, layout, special, draw)
    k_cache = torch.randn(batch, kv_heads, capacity, head_dim).to(dtype)
    v_cache = torch.randn(batch, kv_heads, capacity, head_dim).to(dtype)
    lengths = draw(st.lists(st.integers(0, capacity), min_size=batch, max_size=batch))
    cache_seqlens = torch.tensor(lengths, dtype=torch.int32)
    # No gradient with batch 0: the reference's empty result is a new tensor, not a graph.
    grad = special == "none" and bad == "none" and batch > 0
    for t in (q, k_cache, v_cache):
        t.requires_grad_(grad)
    TRIED["decode_attention"] += 1

    def call(fn):
        def run(q, k_cache, v_cache):
            return fn(qview(q), k_cache, v_cache, cache_seqlens)

        return run

    if bad != "none":
        event(f"decode refused: {bad}")
        names = ["k_cache"]
        if bad == "rank":
            q, names = q.detach().unsqueeze(0), ["q"]
        elif bad == "dtype":
            k_cache = k_cache.detach().double()
        elif bad == "device":
            k_cache = k_cache.detach().to("meta")
        else:
            cache_seqlens, names = cache_seqlens.long(), ["cache_seqlens"]
        run = call(fastformer.decode_attention)
        check_refused(lambda: run(q, k_cache, v_cache), names)
        return
    event("decode valid")
    _check_valid(
        call(fastformer.decode_attention),
        call(reference.decode_attention),
        [q, k_cache, v_cache],
        ["q", "k_cache", "v_cache"],
    )
