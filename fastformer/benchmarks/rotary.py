"""The rotary suite: q and k rotated in one call, against the eager Hugging Face form and
torch.compile of it.

On a GPU, bf16, one sequence of 4096 and 16384 tokens, at the shapes of LLaMA-7B (32 query and
32 key heads of 128, all rotated), LLaMA-3-8B (GQA: 32 and 8 heads of 128) and GPT-NeoX-20B
(64 heads of 96, rotary_pct 0.25: 24 features rotated, 72 copied), positions from per-token
``position_ids``. On the CPU the kernels run in Triton's interpreter, so the suite shrinks to 64
tokens of 4 and 2 heads: enough to exercise the kernel, the checks and the table.

The eager provider is :func:`fastformer.reference.apply_rotary`: Hugging Face's rotary module
forward (fp32 angles, cos and sin cast to the dtype) followed by ``apply_rotary_pos_emb``
(``x * cos + rotate_half(x) * sin``), written out. Inputs are contiguous (batch, seq, heads,
head_dim); every provider writes new tensors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import torch

import fastformer
from fastformer import reference
from fastformer.benchmarks import counts
from fastformer.benchmarks.runner import COMPILE, EAGER, FASTFORMER, Case, lazy_compile
from fastformer.functional.rope_scaling import RopeParameters, rope_init

DEFAULT_DTYPE = torch.bfloat16
STYLES = ("neox", "gptj")
ROPE_THETA = 10000.0
POSITION_BYTES = torch.int64.itemsize


@dataclass(frozen=True)
class RotaryShape:
    """One model's attention heads at one sequence length."""

    name: str
    batch: int
    seqlen: int
    n_heads_q: int
    n_heads_k: int
    head_dim: int
    rotary_dim: int

    def as_tuple(self) -> tuple[int, ...]:
        return (self.batch, self.seqlen, self.n_heads_q, self.n_heads_k, self.head_dim)


GPU_SHAPES = tuple(
    RotaryShape(name, 1, seqlen, heads_q, heads_k, head_dim, rotary_dim)
    for seqlen in (4096, 16384)
    for name, heads_q, heads_k, head_dim, rotary_dim in (
        ("llama-7b", 32, 32, 128, 128),
        ("llama3-8b", 32, 8, 128, 128),
        ("gpt-neox-20b", 64, 64, 96, 24),
    )
)
CPU_SHAPES = (
    RotaryShape("tiny", 1, 64, 4, 2, 32, 32),
    RotaryShape("tiny-partial", 1, 64, 4, 4, 32, 8),
)


@dataclass(frozen=True)
class RopeInputs:
    """The frequencies and positions of one case. Not tensors to the runner, on purpose: it
    gives gradients to floating-point tensors and upcasts tensors for the float64 reference,
    and neither applies to these."""

    inv_freq: torch.Tensor  # (rotary_dim // 2,) fp32
    position_ids: torch.Tensor  # (batch, seqlen) int64


def default_shapes(device: torch.device) -> tuple[RotaryShape, ...]:
    return GPU_SHAPES if device.type == "cuda" else CPU_SHAPES


def _make_inputs(
    device: torch.device, generator: torch.Generator, *, shape: RotaryShape, dtype: torch.dtype
) -> dict[str, object]:
    def randn(*size):
        return torch.randn(size, dtype=dtype, device=device, generator=generator)

    params = RopeParameters(head_dim=shape.rotary_dim, rope_theta=ROPE_THETA)
    positions = torch.arange(shape.seqlen, device=device).expand(shape.batch, -1).contiguous()
    rope = RopeInputs(rope_init(params, device=device)[0], positions)
    return {
        "q": randn(shape.batch, shape.seqlen, shape.n_heads_q, shape.head_dim),
        "k": randn(shape.batch, shape.seqlen, shape.n_heads_k, shape.head_dim),
        "rope": rope,
    }


def _call(fn, q, k, rope: RopeInputs, interleaved: bool):
    return fn(q, k, rope.inv_freq, position_ids=rope.position_ids, interleaved=interleaved)


def rotary_case(
    shape: RotaryShape, dtype: torch.dtype = DEFAULT_DTYPE, style: str = "neox"
) -> Case:
    """One rotary case; its name is ``rotary-<style>-<model>``."""
    if style not in STYLES:
        raise ValueError(f"style={style!r} is not one of {STYLES}")
    interleaved = style == "gptj"
    ref = partial(_call, reference.apply_rotary, interleaved=interleaved)
    n_bytes = counts.rotary_bytes(
        shape.batch * shape.seqlen,
        shape.n_heads_q,
        shape.n_heads_k,
        shape.head_dim,
        shape.rotary_dim,
        elem_bytes=dtype.itemsize,
        position_bytes=POSITION_BYTES,
    )
    return Case(
        op=f"rotary-{style}-{shape.name}",
        shape=shape.as_tuple(),
        dtype=dtype,
        make_inputs=partial(_make_inputs, shape=shape, dtype=dtype),
        reference=ref,
        providers={
            EAGER: ref,
            COMPILE: lazy_compile(ref),
            FASTFORMER: partial(_call, fastformer.apply_rotary, interleaved=interleaved),
        },
        fwd_bytes=n_bytes,
        bwd_bytes=n_bytes,
        x_axis="sequence length",
        x_value=shape.seqlen,
        variant=f"batch {shape.batch}",
    )


def rotary_cases(
    device: torch.device,
    dtypes: Sequence[torch.dtype] = (DEFAULT_DTYPE,),
    shapes: Sequence[RotaryShape] | None = None,
    styles: Sequence[str] = ("neox",),
) -> list[Case]:
    """The suite's cases: every shape, dtype and style (NeoX by default; "gptj" interleaved)."""
    shapes = default_shapes(device) if shapes is None else shapes
    return [
        rotary_case(shape, dtype, style) for style in styles for dtype in dtypes for shape in shapes
    ]
