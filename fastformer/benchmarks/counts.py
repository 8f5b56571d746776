"""Bytes each op must move and FLOPs it must do, as functions with their formula: GB/s,
TFLOP/s and the fraction of the device's peak come from here and nowhere else.

The counts are the traffic any implementation has to make (each input read once, each output
written once), not what a given kernel happens to make, so that providers are compared against
the same amount of work.
"""

from __future__ import annotations

from collections.abc import Sequence

MODES = ("fwd", "bwd", "fwd+bwd")
# 1 GB/s is 10**9 bytes per 1000 ms, i.e. 10**6 bytes per ms.
BYTES_PER_MS_AT_1_GBPS = 10**6


def norm_fwd_bytes(
    n_rows: int,
    n_cols: int,
    *,
    elem_bytes: int,
    param_bytes: int | None = None,
    has_residual: bool = False,
    has_weight: bool = True,
    has_bias: bool = False,
) -> int:
    """Bytes of a LayerNorm / RMSNorm forward over ``(n_rows, n_cols)``.

    bytes = n_rows * n_cols * elem_bytes * (1 [read x] + R [read residual]
                                            + 1 [write y] + R [write h = x + residual])
          + n_cols * param_bytes * (W [read weight] + B [read bias])

    with R, W, B = 1 when there is a residual, a weight, a bias, else 0. ``param_bytes``
    defaults to ``elem_bytes``. The fp32 per-row statistics the forward saves for the backward
    (4 or 8 bytes a row) are left out: no implementation needs them for inference, and they are
    under 0.2% of the traffic for rows of 1024 or more 16-bit elements.
    """
    param_bytes = elem_bytes if param_bytes is None else param_bytes
    activations = 2 + 2 * int(has_residual)
    params = int(has_weight) + int(has_bias)
    return n_rows * n_cols * elem_bytes * activations + n_cols * param_bytes * params


def norm_bwd_bytes(
    n_rows: int,
    n_cols: int,
    *,
    elem_bytes: int,
    param_bytes: int | None = None,
    has_residual: bool = False,
    has_weight: bool = True,
    has_bias: bool = False,
) -> int:
    """Bytes of a LayerNorm / RMSNorm backward over ``(n_rows, n_cols)``.

    bytes = n_rows * n_cols * elem_bytes * (1 [read dy] + 1 [read x, or h with a residual]
                                            + R [read dh] + 1 [write dx])
          + n_cols * param_bytes * (W [read weight] + W [write dweight] + B [write dbias])

    With a residual, x and the residual receive the same gradient, so dx is written once. The
    per-row statistics read back (4 or 8 bytes a row) are left out, as in :func:`norm_fwd_bytes`.
    """
    param_bytes = elem_bytes if param_bytes is None else param_bytes
    activations = 3 + int(has_residual)
    params = 2 * int(has_weight) + int(has_bias)
    return n_rows * n_cols * elem_bytes * activations + n_cols * param_bytes * params


def for_mode(mode: str, fwd_count: int, bwd_count: int) -> int:
    """One timed call's count in ``mode`` (bytes or FLOPs): the forward's, the backward's, or
    their sum."""
    if mode == "fwd":
        return fwd_count
    if mode == "bwd":
        return bwd_count
    if mode == "fwd+bwd":
        return fwd_count + bwd_count
    raise ValueError(f"mode={mode!r} is not one of {MODES}")


def gbps(n_bytes: int, ms: float) -> float:
    """Throughput in GB/s (10**9 bytes a second) of ``n_bytes`` moved in ``ms`` milliseconds."""
    return n_bytes / ms / BYTES_PER_MS_AT_1_GBPS


def rotary_bytes(
    n_tokens: int,
    n_heads_q: int,
    n_heads_k: int,
    head_dim: int,
    rotary_dim: int,
    *,
    elem_bytes: int,
    position_bytes: int = 0,
) -> int:
    """Bytes of a rotary embedding of q and k, forward or backward (the same traffic).

    bytes = n_tokens * (n_heads_q + n_heads_k) * head_dim * elem_bytes * (1 [read] + 1 [write])
          + n_tokens * position_bytes [read position ids, 0 without them]
          + rotary_dim / 2 * 4 [read fp32 inv_freq]

    Out of place: every feature is read and written, the pass-through ones (past rotary_dim)
    included. A cos/sin table read per token would add ``n_tokens * rotary_dim * elem_bytes``;
    it is left out, since an implementation can compute the angles instead.
    """
    activations = n_tokens * (n_heads_q + n_heads_k) * head_dim * elem_bytes * 2
    return activations + n_tokens * position_bytes + rotary_dim // 2 * 4


def gemm_flops(m: int, n: int, k: int) -> int:
    """FLOPs of an (m, k) @ (k, n) product: flops = 2 * m * n * k (a multiply and an add each).

    A linear layer's forward is one such product; its backward two (dx and dweight), so
    ``2 * gemm_flops``; the gated form doubles each. Epilogues (bias, activation) are left out.
    """
    return 2 * m * n * k


def linear_fwd_bytes(
    m: int, n: int, k: int, *, elem_bytes: int, has_bias: bool = True, gated: bool = False
) -> int:
    """Bytes of a fused linear (+ activation) forward, y = act(x @ W.T + b), x (m, k), W (n, k).

    bytes = elem_bytes * (m * k [read x] + G * n * k [read W, G = 2 gated] + B * n [read bias]
                          + m * n [write y])

    The pre-activation is not counted: a fused kernel need not write it for inference.
    """
    weights = (2 if gated else 1) * n * k
    return elem_bytes * (m * k + weights + int(has_bias) * n + m * n)


def linear_bwd_bytes(
    m: int, n: int, k: int, *, elem_bytes: int, has_bias: bool = True, gated: bool = False
) -> int:
    """Bytes of its backward: read dy and the saved pre-activation(s), x and W; write dx, dW, db.

    bytes = elem_bytes * (m * n [read dy] + G * m * n [read z; gated zg and zu] + m * k [read x]
                          + G * n * k [read W] + m * k [write dx] + G * n * k [write dW]
                          + B * n [write db])
    """
    g = 2 if gated else 1
    return elem_bytes * (m * n * (1 + g) + 2 * m * k + 2 * g * n * k + int(has_bias) * n)


# The attention backward's FLOPs over the forward's: five (Sq, Sk, D) products against two.
ATTENTION_BWD_FLOPS_RATIO = 2.5
TFLOPS_PER_FLOP_PER_MS = 1e-9  # 1 TFLOP/s = 10**12 FLOP per 1000 ms


def attention_flops(batch, n_heads, seqlen_q, seqlen_k, head_dim, is_causal: bool) -> int:
    """FLOPs of an attention forward: flops = 4 * B * H * Sq * Sk * D (q @ k^T and p @ v, a
    multiply and an add each), halved when causal. The backward is ATTENTION_BWD_FLOPS_RATIO
    times this."""
    flops = 4 * batch * n_heads * seqlen_q * seqlen_k * head_dim
    return flops // 2 if is_causal else flops


def tflops(n_flops: int, ms: float) -> float:
    """TFLOP/s of ``n_flops`` done in ``ms`` milliseconds."""
    return n_flops / ms * TFLOPS_PER_FLOP_PER_MS


def transformer_fwd_flops(
    batch: int,
    seqlen: int,
    *,
    hidden: int,
    n_layers: int,
    ffn_hidden: int,
    vocab: int = 0,
    kv_hidden: int | None = None,
    gated: bool = False,
    is_causal: bool = False,
) -> int:
    """FLOPs of a transformer stack's forward over ``batch`` sequences of ``seqlen`` tokens:

    flops = 2 * T * (L * (2 * h * h [q, o] + 2 * h * kv [k, v] + F * h * f [FFN]) + h * V [head])
          + L * attention_flops(B, 1, S, S, h, causal)

    with T = batch * seqlen tokens, L layers, hidden h, key/value width kv (h without GQA), FFN
    width f, F = 3 gated (gate, up, down) else 2, V the vocabulary of an output head (0: none).
    Norms, activations, softmax, embeddings' lookups and a head's small h x h transform (BERT's
    MLM head) are left out.
    """
    kv_hidden = hidden if kv_hidden is None else kv_hidden
    per_layer = (
        2 * hidden * hidden + 2 * hidden * kv_hidden + (3 if gated else 2) * hidden * ffn_hidden
    )
    tokens = batch * seqlen
    attention = attention_flops(batch, 1, seqlen, seqlen, hidden, is_causal)
    return 2 * tokens * (n_layers * per_layer + hidden * vocab) + n_layers * attention


# Bytes of one int32 cache length (``cache_seqlens``), read once per row.
LENGTH_BYTES = 4
# Bytes of one fp32 rotary frequency (``inv_freq``).
INV_FREQ_BYTES = 4


def decode_attention_bytes(
    cache_lengths: Sequence[int],
    n_heads: int,
    n_kv_heads: int,
    head_dim: int,
    seqlen_q: int = 1,
    *,
    elem_bytes: int,
) -> int:
    """Bytes of decode attention over a KV cache: the cache rows actually read, q and the output.

    bytes = sum_b len_b * n_kv_heads * head_dim * elem_bytes * 2 [read k and v, row b's keys]
          + B * n_heads * seqlen_q * head_dim * elem_bytes * 2 [read q, write out]
          + B * LENGTH_BYTES [read the lengths]

    with B = len(cache_lengths). The cache's unused positions (past each row's length) are not
    counted: no implementation needs to read them. A split-K kernel's fp32 partial results are
    left out too (its own overhead, not the op's traffic).
    """
    batch = len(cache_lengths)
    cache = sum(cache_lengths) * n_kv_heads * head_dim * elem_bytes * 2
    queries = batch * n_heads * seqlen_q * head_dim * elem_bytes * 2
    return cache + queries + batch * LENGTH_BYTES


def kv_append_bytes(
    batch: int, n_kv_heads: int, seqlen_new: int, head_dim: int, *, elem_bytes: int, rotary_dim: int
) -> int:
    """Bytes of appending new keys (rotated) and values to a KV cache.

    bytes = B * n_kv_heads * seqlen_new * head_dim * elem_bytes * 4 [read k_new, v_new;
                                                                     write them into the cache]
          + B * LENGTH_BYTES [read the lengths]
          + rotary_dim / 2 * INV_FREQ_BYTES [read inv_freq; 0 without rotary]
    """
    tokens = batch * n_kv_heads * seqlen_new * head_dim * elem_bytes * 4
    return tokens + batch * LENGTH_BYTES + rotary_dim // 2 * INV_FREQ_BYTES
