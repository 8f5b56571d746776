"""Hypothesis fuzz tests, part 2: what ``test_fuzz_ops.py`` leaves out.

``test_fuzz_ops.py`` varies the layout of the first input of each op. This file varies the
layout of the other operands too (weights, k, v, masks, inv_freq: transposed, step-sliced
``x[..., ::2]``, row-sliced ``x[1:]`` with a storage offset, expanded with stride 0), puts NaN and
inf in them, and fuzzes the call forms it does not reach: sliding windows and both causal
alignments, seeded dropout, packed sequences (``cu_seqlens``), rotary position ids, offsets and
in-place rotation; ``test_fuzz_caches.py`` does the same for the KV-cache ops. Sizes 0 and 1
come up in every dim (head_dim 0 is refused, naming head_dim).

Every draw's call must match eager within ``fastformer.testing``'s rule; a draw that also picks a
bad argument (mixed dtypes, a tensor on the 'meta' device, a wrong rank, bad offsets or rates)
first makes the same call with it, which must be refused naming the argument. Every test is
derandomized with a fixed ``max_examples`` and seeds torch per example (``fuzz_support``), and
``fuzz_support.counted`` asserts and reports (a ``FuzzCount`` warning in pytest's summary) how many
cases each one tried, and how many calls matched and were refused.
"""

from __future__ import annotations

import torch
from fuzz_support import (
    DTYPES,
    IDENTITY,
    LAYOUTS,
    SPECIALS,
    TRIED,
    bad_draws,
    check_matches,
    check_refused,
    counted,
    fuzz_settings,
    head_dims,
    leaf,
    positive,
    seed_example,
    sizes,
    spoil,
    window_sides,
)
from hypothesis import event, given
from hypothesis import strategies as st

import fastformer
from fastformer import reference
from fastformer.functional.attention import MAX_SEED
from fastformer.kernels import attention_common

EXAMPLES = 40
# The attention draws cost ~0.3 s each in the interpreter: fewer of them.
SLOW_EXAMPLES = 30
DTYPES_INT = (torch.int64, torch.int32)


# ------------------------------------------------------------------------- norms and linear


@counted("norm", minimum=20)
@fuzz_settings(EXAMPLES)
@given(data=st.data())
def test_fuzz_norm_weight_layouts(data):
    draw = data.draw
    seed_example(draw)
    dtype, is_rms = draw(st.sampled_from(DTYPES)), draw(st.booleans())
    lead, hidden = draw(st.lists(sizes, max_size=2)), draw(sizes)
    x, xview = leaf([*lead, hidden], dtype, draw(st.sampled_from(LAYOUTS)))
    w_layout, w_special = draw(st.sampled_from(LAYOUTS)), draw(st.sampled_from(SPECIALS))
    w, wview = leaf([hidden], dtype, w_layout, w_special, draw)
    b, bview = leaf([hidden], dtype, draw(st.sampled_from(LAYOUTS)))
    r, rview = leaf([*lead, hidden], dtype, draw(st.sampled_from(LAYOUTS)))
    bad_kinds = bad_draws(draw, ("device", "rank", "dtype"))
    TRIED["norm"] += 1
    op = fastformer.rms_norm if is_rms else fastformer.layer_norm
    ref = reference.rms_norm if is_rms else reference.layer_norm

    def call(fn):
        def run(x, w, b, r):
            extra = () if is_rms else (bview(b),)
            return fn(xview(x), (hidden,), wview(w), *extra, residual=rview(r))

        return run

    def refuse(bad):  # the same call with a bad residual is refused; then the valid one
        event(f"norm refused: {bad}")
        extra = () if is_rms else (bview(b),)
        bad_r = spoil(rview(r), bad, dtype)
        check_refused(
            lambda: op(xview(x), (hidden,), wview(w), *extra, residual=bad_r), ["residual"]
        )

    for bad in bad_kinds:
        refuse(bad)
    event(f"norm valid, weight {w_layout} {w_special}")
    grad = w_special == "none"
    leaves = [t.requires_grad_(grad) for t in (x, w, b, r)]
    check_matches(call(op), call(ref), leaves, names=["x", "w", "b", "r"])


@counted("linear", minimum=20)
@fuzz_settings(EXAMPLES)
@given(data=st.data())
def test_fuzz_linear_weight_layouts(data):
    draw = data.draw
    seed_example(draw)
    dtype, gated = draw(st.sampled_from(DTYPES)), draw(st.booleans())
    lead, in_f, out_f = draw(st.lists(sizes, max_size=2)), draw(sizes), draw(sizes)
    activation = draw(st.sampled_from(("gelu", "gelu_tanh", "relu", "silu")))
    x, xview = leaf([*lead, in_f], dtype, draw(st.sampled_from(LAYOUTS)))
    w_layout, w_special = draw(st.sampled_from(LAYOUTS)), draw(st.sampled_from(SPECIALS))
    w, wview = leaf([out_f, in_f], dtype, w_layout, w_special, draw, scale=max(in_f, 1) ** -0.5)
    w2, w2view = leaf(
        [out_f, in_f], dtype, draw(st.sampled_from(LAYOUTS)), scale=max(in_f, 1) ** -0.5
    )
    b, bview = leaf([out_f], dtype, draw(st.sampled_from(LAYOUTS)))
    bad_kinds = bad_draws(draw, ("device", "rank", "dtype"))
    TRIED["linear"] += 1

    def call(fn_linear, fn_gated):
        def run(x, w, w2, b):
            if gated:
                return fn_gated(xview(x), wview(w), w2view(w2), activation=activation)
            return fn_linear(xview(x), wview(w), bview(b), activation=activation)

        return run

    def refuse(bad):  # the same call with a bad weight_up / bias is refused; then the valid one
        event(f"linear refused: {bad}")
        names = ["weight_up"] if gated else ["bias"]
        bad_w2, bad_b = spoil(w2view(w2), bad, dtype), spoil(bview(b), bad, dtype)
        if gated:
            call_bad = lambda: fastformer.gated_linear(  # noqa: E731
                xview(x), wview(w), bad_w2, activation=activation
            )
        else:
            call_bad = lambda: fastformer.linear(xview(x), wview(w), bad_b, activation=activation)  # noqa: E731
        check_refused(call_bad, names)

    for bad in bad_kinds:
        refuse(bad)
    event(f"linear valid, weight {w_layout} {w_special}")
    grad = w_special == "none"
    leaves = [x, w, w2 if gated else None, None if gated else b]
    for t in leaves:
        if t is not None:
            t.requires_grad_(grad)
    check_matches(
        call(fastformer.linear, fastformer.gated_linear),
        call(reference.linear, reference.gated_linear),
        leaves,
        names=["x", "w", "w_up", "bias"],
    )


# -------------------------------------------------------------------------------- attention


@counted("scaled_dot_product_attention", minimum=20)
@fuzz_settings(SLOW_EXAMPLES)
@given(data=st.data())
def test_fuzz_attention_operands(data):
    draw = data.draw
    seed_example(draw)
    dtype = draw(st.sampled_from(DTYPES))
    batch, kv_heads, group = draw(sizes), draw(positive), draw(st.integers(1, 2))
    seq_q, seq_k, head_dim = draw(sizes), draw(sizes), draw(head_dims)
    heads = kv_heads * group
    is_causal = draw(st.booleans())
    alignment = draw(st.sampled_from(("top_left", "bottom_right")))
    window = draw(st.sampled_from((None, (draw(window_sides), draw(window_sides)))))
    q, qview = leaf([batch, heads, seq_q, head_dim], dtype, draw(st.sampled_from(LAYOUTS)))
    k, kview = leaf([batch, kv_heads, seq_k, head_dim], dtype, draw(st.sampled_from(LAYOUTS)))
    v_layout, v_special = draw(st.sampled_from(LAYOUTS)), draw(st.sampled_from(SPECIALS))
    v, vview = leaf([batch, kv_heads, seq_k, head_dim], dtype, v_layout, v_special, draw)
    mask = None
    if draw(st.booleans()) and not is_causal and window is None:
        mask_special = draw(st.sampled_from(SPECIALS))  # NaN or +inf in a float mask
        mask, mview = leaf(
            [seq_q, seq_k], dtype, draw(st.sampled_from(LAYOUTS)), mask_special, draw
        )
    else:
        mview = IDENTITY
    bad_kinds = bad_draws(draw, ("device", "rank", "dtype"))
    TRIED["scaled_dot_product_attention"] += 1
    options = dict(is_causal=is_causal, causal_alignment=alignment, window=window)

    def call(fn):
        def run(q, k, v, mask):
            m = None if mask is None else mview(mask)
            return fn(qview(q), kview(k), vview(v), m, enable_gqa=group > 1, **options)

        return run

    sdpa = fastformer.scaled_dot_product_attention

    def refuse(bad):  # the same call with a bad v is refused; then the valid one
        event(f"attention refused: {bad}")
        bad_v, m = spoil(vview(v), bad, dtype), None if mask is None else mview(mask)
        names = ["v", "head_dim"] if head_dim == 0 else ["v"]  # either fault may be named
        gqa = group > 1
        check_refused(lambda: sdpa(qview(q), kview(k), bad_v, m, enable_gqa=gqa, **options), names)

    for bad in bad_kinds:
        refuse(bad)
    if head_dim == 0:  # torch returns an empty result; refused here
        check_refused(lambda: call(sdpa)(q, k, v, mask), ["head_dim"])
        return
    event(f"attention valid, v {v_layout} {v_special}, window {window is not None}")
    grad = v_special == "none"
    leaves = [t.requires_grad_(grad) for t in (q, k, v)] + [mask]
    check_matches(
        call(fastformer.scaled_dot_product_attention),
        call(reference.scaled_dot_product_attention),
        leaves,
        names=["q", "k", "v", "mask"],
    )


@counted("attention dropout", minimum=6)
@fuzz_settings(10)
@given(data=st.data())
def test_fuzz_attention_dropout(data):
    draw = data.draw
    seed_example(draw)
    dtype = draw(st.sampled_from(DTYPES))
    batch, heads, seq_q, seq_k = draw(positive), draw(positive), draw(positive), draw(positive)
    head_dim, is_causal = draw(positive), draw(st.booleans())
    rate = draw(st.sampled_from((0.1, 0.5)))
    seed = draw(st.integers(0, 2**31 - 1))
    q, qview = leaf([batch, heads, seq_q, head_dim], dtype, draw(st.sampled_from(LAYOUTS)))
    k, kview = leaf([batch, heads, seq_k, head_dim], dtype, draw(st.sampled_from(LAYOUTS)))
    v, vview = leaf([batch, heads, seq_k, head_dim], dtype, draw(st.sampled_from(LAYOUTS)))
    TRIED["attention dropout"] += 1
    if draw(st.sampled_from((False, False, False, True))):
        bad_rate = draw(st.sampled_from((1.5, -0.1, float("nan"), True)))
        call = fastformer.scaled_dot_product_attention
        check_refused(lambda: call(qview(q), kview(k), vview(v), dropout_p=bad_rate), ["dropout_p"])
    torch.manual_seed(seed)  # the kernel's seed: torch's next draw below MAX_SEED
    kernel_seed = int(torch.randint(0, MAX_SEED, (1,)).item())
    problem = attention_common.Problem(batch, heads, heads, seq_q, seq_k, head_dim)
    keep = attention_common.dropout_mask(kernel_seed, problem, rate, q.device)

    def kernel(q, k, v):
        torch.manual_seed(seed)
        return fastformer.scaled_dot_product_attention(
            qview(q), kview(k), vview(v), dropout_p=rate, is_causal=is_causal
        )

    def eager(q, k, v):
        return reference.scaled_dot_product_attention(
            qview(q), kview(k), vview(v), dropout_p=rate, is_causal=is_causal, dropout_mask=keep
        )

    with torch.no_grad():
        assert torch.equal(kernel(q, k, v), kernel(q, k, v)), "same seed, other output"
    leaves = [t.requires_grad_() for t in (q, k, v)]
    check_matches(kernel, eager, leaves, names=["q", "k", "v"])


@counted("varlen_attention", minimum=20)
@fuzz_settings(SLOW_EXAMPLES)
@given(data=st.data())
def test_fuzz_varlen(data):
    draw = data.draw
    seed_example(draw)
    dtype = draw(st.sampled_from(DTYPES))
    kv_heads, group, head_dim = draw(positive), draw(st.integers(1, 3)), draw(head_dims)
    lengths_q = draw(st.lists(sizes, min_size=1, max_size=3))
    same = draw(st.booleans())
    lengths_k = lengths_q if same else [draw(sizes) for _ in lengths_q]
    is_causal = draw(st.booleans())
    alignment = draw(st.sampled_from(("top_left", "bottom_right")))
    window = draw(st.sampled_from((None, (draw(window_sides), draw(window_sides)))))
    total_q, total_k, heads = sum(lengths_q), sum(lengths_k), kv_heads * group
    cu_q = torch.tensor([0, *torch.tensor(lengths_q).cumsum(0).tolist()], dtype=torch.int32)
    cu_k = torch.tensor([0, *torch.tensor(lengths_k).cumsum(0).tolist()], dtype=torch.int32)
    special = draw(st.sampled_from(SPECIALS))
    q, qview = leaf([total_q, heads, head_dim], dtype, draw(st.sampled_from(LAYOUTS)))
    k, kview = leaf([total_k, kv_heads, head_dim], dtype, draw(st.sampled_from(LAYOUTS)))
    v, vview = leaf([total_k, kv_heads, head_dim], dtype, "contiguous", special, draw)
    bad_kinds = bad_draws(draw, ("cu_dtype", "cu_total", "cu_device", "rank"))
    TRIED["varlen_attention"] += 1
    options = dict(is_causal=is_causal, causal_alignment=alignment, window=window)

    def call(fn, cu_q=cu_q):
        def run(q, k, v):
            return fn(qview(q), kview(k), vview(v), cu_q, cu_k, **options)

        return run

    def refuse(bad):  # the same call with a bad argument is refused; then the valid one
        event(f"varlen refused: {bad}")
        names = ["cu_seqlens_q"]
        if bad == "cu_dtype":
            bad_cu = cu_q.float()
        elif bad == "cu_total":
            bad_cu = cu_q.clone()
            bad_cu[-1] += 1
        elif bad == "cu_device":
            bad_cu = cu_q.to("meta")
        else:
            bad_cu, names = cu_q, ["q"]
        bad_q = qview(q)[None] if bad == "rank" else qview(q)
        names += ["head_dim"] if head_dim == 0 else []  # either fault may be named
        check_refused(
            lambda: fastformer.varlen_attention(bad_q, kview(k), vview(v), bad_cu, cu_k, **options),
            names,
        )

    for bad in bad_kinds:
        refuse(bad)
    if head_dim == 0:
        check_refused(lambda: call(fastformer.varlen_attention)(q, k, v), ["head_dim"])
        return
    event(f"varlen valid, {special}")
    leaves = [t.requires_grad_(special == "none") for t in (q, k, v)]
    check_matches(call(fastformer.varlen_attention), call(reference.varlen_attention), leaves)


# ----------------------------------------------------------------------------------- rotary


@counted("apply_rotary", minimum=20)
@fuzz_settings(EXAMPLES)
@given(data=st.data())
def test_fuzz_rotary_operands(data):
    draw = data.draw
    seed_example(draw)
    dtype = draw(st.sampled_from(DTYPES))
    batch, seq, heads, kv_heads = draw(sizes), draw(sizes), draw(positive), draw(positive)
    half = draw(positive)
    head_dim = 2 * half + 2 * draw(st.sampled_from((0, 1)))
    interleaved, inplace = draw(st.booleans()), draw(st.booleans())
    q, qview = leaf([batch, seq, heads, head_dim], dtype, draw(st.sampled_from(LAYOUTS)))
    k_layout, special = draw(st.sampled_from(LAYOUTS)), draw(st.sampled_from(SPECIALS))
    k, kview = leaf([batch, seq, kv_heads, head_dim], dtype, k_layout, special, draw)
    freq_layout = draw(st.sampled_from(LAYOUTS))
    inv_freq, fview = leaf([half], torch.float32, freq_layout, scale=0.0)
    inv_freq += 1.0 / (10000.0 ** (torch.arange(inv_freq.shape[0]) / half))
    positions = draw(st.sampled_from(("offset", "ids", "row")))
    options = dict(offset=draw(st.sampled_from((0, 5, 4090))), interleaved=interleaved)
    if positions != "offset":
        rows = batch if positions == "ids" else 1
        ids = torch.randint(0, 5000, (rows, seq), dtype=draw(st.sampled_from(DTYPES_INT)))
        options["position_ids"] = ids
    bad_kinds = bad_draws(draw, ("device", "dtype", "rank", "ids"))
    TRIED["apply_rotary"] += 1

    def call(fn, inplace=False):
        def run(q, k, inv_freq):
            views = qview(q), kview(k), fview(inv_freq)
            if inplace:  # on fresh copies of the views, which autograd lets be written
                views = views[0].clone(), views[1].clone(), views[2]
            return fn(*views, inplace=inplace, **options)

        return run

    def refuse(bad):  # the same call with a bad k / position_ids is refused; then the valid one
        event(f"rotary refused: {bad}")
        bad_options, bad_k, names = dict(options), kview(k), ["k"]
        if bad == "ids":
            bad_options["position_ids"], names = torch.zeros(batch, seq), ["position_ids"]
        else:
            bad_k = spoil(bad_k, bad, dtype)
        rotary = fastformer.apply_rotary
        check_refused(lambda: rotary(qview(q), bad_k, fview(inv_freq), **bad_options), names)

    for bad in bad_kinds:
        refuse(bad)
    event(f"rotary valid, k {k_layout}, inv_freq {freq_layout}, {positions}, {special}")
    grad = special == "none"
    leaves = [q.requires_grad_(grad), k.requires_grad_(grad), inv_freq]
    check_matches(call(fastformer.apply_rotary, inplace), call(reference.apply_rotary), leaves)
