"""The attention suite: fused attention against eager math attention, torch's SDPA (whichever
backend it picks) and torch.compile of the eager math.

On a GPU: heads x head_dim = 2048 (16 heads of 128, or 32 of 64), batch x seq = 16k tokens, seq
from 512 to 16k, causal and not, bf16. The eager math materialises the (seq, seq) scores, so it
is left out past 4096 (its scores alone would pass 8 GB). On the CPU the kernels run in Triton's
interpreter, so the suite shrinks to one sequence of 64 tokens, 2 heads of 32. flash-attn's
``flash_attn_func`` joins where it imports (:mod:`fastformer.benchmarks.external`).

FLOPs (:func:`fastformer.benchmarks.counts.attention_flops`): 4 * B * H * Sq * Sk * D for the
forward (two matrix products), halved when causal; the backward 2.5x the forward.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F

import fastformer
from fastformer import reference
from fastformer.benchmarks import counts, external
from fastformer.benchmarks.runner import (
    COMPILE,
    EAGER,
    FASTFORMER,
    FLASH_ATTN,
    SDPA,
    Case,
    lazy_compile,
)

DEFAULT_DTYPE = torch.bfloat16
GPU_TOKENS = 16384
GPU_SEQLENS = (512, 1024, 2048, 4096, 8192, 16384)
GPU_HEADS = ((16, 128), (32, 64))  # (heads, head_dim): heads x head_dim = 2048
# The eager math attention's (B, H, S, S) scores: past this sequence length they pass 8 GB.
EAGER_MAX_SEQLEN = 4096


@dataclass(frozen=True)
class AttentionShape:
    batch: int
    n_heads: int
    seqlen: int
    head_dim: int

    def as_tuple(self) -> tuple[int, int, int, int]:
        return (self.batch, self.n_heads, self.seqlen, self.head_dim)


def default_shapes(device: torch.device) -> list[AttentionShape]:
    if device.type != "cuda":
        return [AttentionShape(1, 2, 64, 32)]
    return [
        AttentionShape(GPU_TOKENS // seqlen, heads, seqlen, head_dim)
        for heads, head_dim in GPU_HEADS
        for seqlen in GPU_SEQLENS
    ]


def _make_inputs(device, generator, *, shape: AttentionShape, dtype, is_causal):
    def randn():
        return torch.randn(shape.as_tuple(), dtype=dtype, device=device, generator=generator)

    return {"q": randn(), "k": randn(), "v": randn(), "is_causal": is_causal}


def _sdpa(q, k, v, is_causal):
    return F.scaled_dot_product_attention(q, k, v, is_causal=is_causal)


def attention_case(shape: AttentionShape, dtype: torch.dtype, is_causal: bool) -> Case:
    """One case; its name says causal or not."""
    ref = reference.scaled_dot_product_attention
    providers = {SDPA: _sdpa, FASTFORMER: fastformer.scaled_dot_product_attention}
    if shape.seqlen <= EAGER_MAX_SEQLEN:
        providers = {EAGER: ref, COMPILE: lazy_compile(ref), **providers}
    flash = external.flash_attention()
    if flash is not None:
        providers[FLASH_ATTN] = flash
    batch, heads, seqlen, head_dim = shape.as_tuple()
    fwd_flops = counts.attention_flops(batch, heads, seqlen, seqlen, head_dim, is_causal)
    elem_bytes = dtype.itemsize
    return Case(
        op="attention+causal" if is_causal else "attention",
        shape=shape.as_tuple(),
        dtype=dtype,
        make_inputs=partial(_make_inputs, shape=shape, dtype=dtype, is_causal=is_causal),
        reference=ref,
        providers=providers,
        fwd_bytes=4 * batch * heads * seqlen * head_dim * elem_bytes,  # q, k, v in; o out
        bwd_bytes=8 * batch * heads * seqlen * head_dim * elem_bytes,  # + do, o in; dq, dk, dv
        fwd_flops=fwd_flops,
        bwd_flops=int(counts.ATTENTION_BWD_FLOPS_RATIO * fwd_flops),
        x_axis="sequence length",
        x_value=seqlen,
        variant=f"{heads} heads x {head_dim}",
    )


def attention_cases(
    device: torch.device,
    dtypes: Sequence[torch.dtype] = (DEFAULT_DTYPE,),
    shapes: Sequence[AttentionShape] | None = None,
    causal: Sequence[bool] = (False, True),
) -> list[Case]:
    shapes = default_shapes(device) if shapes is None else shapes
    return [
        attention_case(shape, dtype, is_causal)
        for is_causal in causal
        for dtype in dtypes
        for shape in shapes
    ]
