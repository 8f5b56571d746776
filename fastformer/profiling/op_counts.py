"""Bytes and FLOPs of one call of a fastformer op, from the arguments its profiler range saw.

The formulas are ``fastformer.benchmarks.counts``'s (the traffic any implementation must make,
the FLOPs of the products); this only reads the sizes off a call's arguments, so that ``fastformer
profile`` can give each op its achieved GB/s and TFLOP/s. Forward calls only: a backward's work
is not seen by the ranges. An op whose counts are not known here gives (0, 0).

Attention moves q, k, v and o once each (``attention_bytes``); it is judged by TFLOP/s.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch

from fastformer.benchmarks import counts

logger = logging.getLogger(__name__)


@dataclass
class OpCount:
    """Work of one op summed over its calls in one step."""

    calls: int = 0
    bytes: int = 0
    flops: int = 0


def _elem_bytes(tensor: torch.Tensor) -> int:
    return tensor.element_size()


def attention_bytes(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> int:
    """bytes = elem_bytes * (numel(q) [read] + numel(k) + numel(v) [read] + numel(q) * Dv / D
    [write o]): each input read once, the output written once (no score matrix)."""
    out = q.numel() // q.shape[-1] * v.shape[-1]
    return _elem_bytes(q) * (q.numel() + k.numel() + v.numel() + out)


def _norm(arguments: dict) -> tuple[int, int]:
    x = arguments["x"]
    shape = arguments["normalized_shape"]
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    n_cols = math.prod(shape)
    weight, bias = arguments.get("weight"), arguments.get("bias")
    param = weight if weight is not None else bias
    n_bytes = counts.norm_fwd_bytes(
        x.numel() // max(n_cols, 1),
        n_cols,
        elem_bytes=_elem_bytes(x),
        param_bytes=_elem_bytes(param) if param is not None else None,
        has_residual=arguments.get("residual") is not None,
        has_weight=weight is not None,
        has_bias=bias is not None and not arguments.get("is_rms", False),
    )
    return n_bytes, 0


def _linear(arguments: dict, gated: bool) -> tuple[int, int]:
    x = arguments["x"]
    weight = arguments["weight_gate"] if gated else arguments["weight"]
    n, k = weight.shape
    m = x.numel() // max(k, 1)
    bias = None if gated else arguments.get("bias")
    n_bytes = counts.linear_fwd_bytes(
        m, n, k, elem_bytes=_elem_bytes(x), has_bias=bias is not None, gated=gated
    )
    return n_bytes, counts.gemm_flops(m, n, k) * (2 if gated else 1)


def _attention(arguments: dict) -> tuple[int, int]:
    q, k, v = arguments["q"], arguments["k"], arguments["v"]
    n_bytes = attention_bytes(q, k, v)
    if q.dim() == 3 and arguments.get("cu_seqlens_q") is None:  # unbatched (heads, seq, dim)
        q, k = q.unsqueeze(0), k.unsqueeze(0)
    if q.dim() == 3:  # packed (total, heads, dim): counted as one sequence of the longest
        return n_bytes, 0
    batch, n_heads, seqlen_q, head_dim = q.shape
    causal = bool(arguments.get("is_causal", False))
    return n_bytes, counts.attention_flops(batch, n_heads, seqlen_q, k.shape[-2], head_dim, causal)


def _varlen(arguments: dict) -> tuple[int, int]:
    q, k, v = arguments["q"], arguments["k"], arguments["v"]
    return attention_bytes(q, k, v), 0


def _rotary(arguments: dict) -> tuple[int, int]:
    q, k, inv_freq = arguments["q"], arguments["k"], arguments["inv_freq"]
    layout = arguments.get("layout", "bshd")
    head_dim = q.shape[-1]
    heads_axis = {"bshd": 2, "bhsd": 1, "thd": 1}.get(layout, 2)
    n_heads_q, n_heads_k = q.shape[heads_axis], k.shape[heads_axis]
    n_tokens = q.numel() // (n_heads_q * head_dim) if n_heads_q and head_dim else 0
    positions = arguments.get("position_ids")
    n_bytes = counts.rotary_bytes(
        n_tokens,
        n_heads_q,
        n_heads_k,
        head_dim,
        2 * inv_freq.numel(),
        elem_bytes=_elem_bytes(q),
        position_bytes=positions.element_size() if positions is not None else 0,
    )
    return n_bytes, 0


_COUNTERS = {
    "layer_norm": _norm,
    "rms_norm": _norm,
    "linear": lambda arguments: _linear(arguments, gated=False),
    "gated_linear": lambda arguments: _linear(arguments, gated=True),
    "scaled_dot_product_attention": _attention,
    "varlen_attention": _varlen,
    "apply_rotary": _rotary,
}


def op_count(name: str, arguments: dict) -> tuple[int, int]:
    """(bytes, FLOPs) of one forward call of op ``name``; (0, 0) when not known.

    Observers run before the op checks its arguments: a call the op will refuse gives (0, 0)
    here, so that the op's own error is the one raised."""
    counter = _COUNTERS.get(name)
    if counter is None:
        return 0, 0
    try:
        return counter(arguments)
    except (AttributeError, IndexError, KeyError, TypeError, ValueError):
        logger.debug("no counts for a %s call with these arguments", name, exc_info=True)
        return 0, 0


class StepCounter:
    """An observer (``functional._ranges.observe``) that sums each op's work over one step:
    :meth:`new_step` starts over, :attr:`step` holds the last step's counts."""

    def __init__(self) -> None:
        self.step: dict[str, OpCount] = {}

    def new_step(self) -> None:
        self.step = {}

    def __call__(self, name: str, arguments: dict) -> None:
        n_bytes, flops = op_count(name, arguments)
        count = self.step.setdefault(name, OpCount())
        count.calls += 1
        count.bytes += n_bytes
        count.flops += flops
