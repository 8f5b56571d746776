"""Hypothesis fuzz tests of the KV-cache ops: ``decode_attention`` over dense and paged
(``block_table``) caches, and the in-place ``kv_cache_append_``, with every operand in any layout
(transposed, step-sliced, row-sliced, expanded where the op only reads it), NaN and inf in the
values, sizes 0 and 1, and bad draws (a 'meta' tensor, mixed dtypes, wrong ranks, an int64 block
table) that must be refused naming the argument. Settings and counting as in
``test_fuzz_layouts.py`` (``fuzz_support``).
"""

from __future__ import annotations

import torch
from fuzz_support import (
    DTYPES,
    LAYOUTS,
    SPECIALS,
    TRIED,
    bad_draws,
    check_matches,
    check_refused,
    counted,
    down_from,
    fuzz_settings,
    head_dims,
    leaf,
    positive,
    seed_example,
    sizes,
    spoil,
)
from hypothesis import event, given
from hypothesis import strategies as st

import fastformer
from fastformer import reference, testing

EXAMPLES = 40


def _paged(draw, batch, kv_heads, head_dim, dtype):
    """Caches of ``num_blocks`` pages and a block table of distinct pages per row."""
    block_size, max_blocks = draw(st.sampled_from((2, 3, 1, 4))), draw(st.sampled_from((2, 1, 3)))
    num_blocks = batch * max_blocks + draw(st.integers(0, 2))
    table = torch.randperm(num_blocks)[: batch * max_blocks].view(batch, max_blocks)
    shape = [num_blocks, block_size, kv_heads, head_dim]
    return shape, table.to(torch.int32), block_size * max_blocks


@counted("decode_attention", minimum=20)
@fuzz_settings(EXAMPLES)
@given(data=st.data())
def test_fuzz_decode_caches(data):
    draw = data.draw
    seed_example(draw)
    dtype = draw(st.sampled_from(DTYPES))
    batch, kv_heads, group = draw(sizes), draw(positive), draw(st.integers(1, 2))
    seq_q, head_dim = draw(st.sampled_from((1, 2, 3))), draw(head_dims)
    heads = kv_heads * group
    paged = draw(st.booleans())
    if paged:
        shape, table, capacity = _paged(draw, batch, kv_heads, head_dim, dtype)
    else:
        capacity, table = draw(down_from(6).filter(bool)), None
        shape = [batch, kv_heads, capacity, head_dim]
    k_layout, v_layout = draw(st.sampled_from(LAYOUTS)), draw(st.sampled_from(LAYOUTS))
    special = draw(st.sampled_from(SPECIALS))
    q, qview = leaf([batch, heads, seq_q, head_dim], dtype, draw(st.sampled_from(LAYOUTS)))
    k, kview = leaf(shape, dtype, k_layout)
    v, vview = leaf(shape, dtype, v_layout, special, draw)
    lengths = torch.tensor(
        draw(st.lists(down_from(capacity), min_size=batch, max_size=batch)), dtype=torch.int32
    )
    kinds = ("device", "dtype", "table") if paged else ("device", "dtype", "rank")
    bad_kinds = bad_draws(draw, kinds)
    TRIED["decode_attention"] += 1

    def call(fn, table=table):
        def run(q, k, v):
            return fn(qview(q), kview(k), vview(v), lengths, block_table=table)

        return run

    decode = fastformer.decode_attention

    def refuse(bad):  # the same call with a bad argument is refused; then the valid one
        event(f"decode refused: {bad}")
        names, bad_v, bad_table = ["v_cache"], vview(v), table
        if bad == "table":
            bad_table, names = table.long(), ["block_table"]
        else:
            bad_v = spoil(bad_v, bad, dtype)
        names += ["head_dim"] if head_dim == 0 else []  # either fault may be named
        check_refused(
            lambda: decode(qview(q), kview(k), bad_v, lengths, block_table=bad_table), names
        )

    for bad in bad_kinds:
        refuse(bad)
    if head_dim == 0:
        check_refused(lambda: call(decode)(q, k, v), ["head_dim"])
        return
    event(f"decode valid, paged {paged}, v {v_layout} {special}")
    grad = special == "none" and batch > 0
    leaves = [t.requires_grad_(grad) for t in (q, k, v)]
    check_matches(call(fastformer.decode_attention), call(reference.decode_attention), leaves)


@counted("kv_cache_append_", minimum=20)
@fuzz_settings(EXAMPLES)
@given(data=st.data())
def test_fuzz_kv_cache_append(data):
    draw = data.draw
    seed_example(draw)
    dtype = draw(st.sampled_from(DTYPES))
    batch, kv_heads, head_dim = draw(sizes), draw(positive), 2 * draw(st.integers(1, 3))
    paged = draw(st.booleans())
    if paged:
        shape, table, capacity = _paged(draw, batch, kv_heads, head_dim, dtype)
    else:
        capacity, table = draw(st.sampled_from((5, 3, 6))), None
        shape = [batch, kv_heads, capacity, head_dim]
    seqlen_new = draw(down_from(min(3, capacity)))
    cache_layout = draw(st.sampled_from(LAYOUTS[:4]))  # not expanded: written in place
    k_cache, kview = leaf(shape, dtype, cache_layout)
    v_cache, vview = leaf(shape, dtype, draw(st.sampled_from(LAYOUTS[:4])))
    special = draw(st.sampled_from(SPECIALS))
    new_shape = [batch, kv_heads, seqlen_new, head_dim]
    k_new, knview = leaf(new_shape, dtype, draw(st.sampled_from(LAYOUTS)), special, draw)
    v_new, vnview = leaf(new_shape, dtype, draw(st.sampled_from(LAYOUTS)))
    room = capacity - seqlen_new
    lengths = draw(st.lists(st.integers(0, room), min_size=batch, max_size=batch))
    lengths = torch.tensor(lengths, dtype=torch.int32)
    half = head_dim // 2 - draw(st.integers(0, head_dim // 2 - 1))
    inv_freq = draw(st.sampled_from((None, 1.0 / 10000.0 ** (torch.arange(half) / half))))
    counts = None
    if draw(st.booleans()):
        counts = draw(st.lists(down_from(seqlen_new), min_size=batch, max_size=batch))
        counts = torch.tensor(counts, dtype=torch.int32)
    # "expanded": a v_cache whose rows share memory (stride 0), written in place: refused.
    bad_kinds = bad_draws(draw, ("device", "dtype", "rank", "expanded"))
    TRIED["kv_cache_append_"] += 1

    def run(fn, k_cache, v_cache, k_new, v_new):
        return fn(
            kview(k_cache), vview(v_cache), knview(k_new), vnview(v_new), lengths,
            inv_freq=inv_freq, new_seqlens=counts, block_table=table,
        )  # fmt: skip

    def refuse(bad):  # the same call with a bad argument is refused (on copies); then the valid one
        if bad == "expanded" and (shape[0] < 2 or not v_cache.numel()):
            return  # an expanded cache of one row (or of none) is a plain one
        event(f"append refused: {bad}")
        spare_k, spare_v = kview(k_cache.detach().clone()), vview(v_cache.detach().clone())
        bad_v_new, names = vnview(v_new), ["v_new"]
        if bad == "expanded":
            spare_v, names = spare_v[:1].expand(*spare_v.shape), ["v_cache"]
        else:
            bad_v_new = spoil(bad_v_new, bad, dtype)

        def call_bad():
            return fastformer.kv_cache_append_(
                spare_k, spare_v, knview(k_new), bad_v_new, lengths,
                inv_freq=inv_freq, new_seqlens=counts, block_table=table,
            )  # fmt: skip

        check_refused(call_bad, names)

    for bad in bad_kinds:
        refuse(bad)
    event(f"append valid, paged {paged}, cache {cache_layout}, {special}")
    caches = {}
    for name, dt, fn in (
        ("kernel", dtype, fastformer.kv_cache_append_),
        ("float64", torch.float64, reference.kv_cache_append_),
        ("eager", dtype, reference.kv_cache_append_),
    ):
        copies = [t.detach().clone().to(dt) for t in (k_cache, v_cache, k_new, v_new)]
        new_lengths = run(fn, *copies)
        caches[name] = [kview(copies[0]), vview(copies[1])]
        assert torch.equal(new_lengths, lengths + (seqlen_new if counts is None else counts))
    for i, cache_name in enumerate(("k_cache", "v_cache")):
        result = testing.compare(
            cache_name, caches["kernel"][i], caches["float64"][i], caches["eager"][i]
        )
        assert result.ok, str(result)
    TRIED["matched"] += 1
