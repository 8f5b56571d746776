"""The decode suites: attention of one new token per row over a KV cache, and the cache append.

``decode_attention``: :func:`fastformer.decode_attention` against the eager reference
(:func:`fastformer.reference.decode_attention`, one row at a time), torch's
``F.scaled_dot_product_attention`` with a length mask, and flash-attn's
``flash_attn_with_kvcache`` where it imports (:mod:`fastformer.benchmarks.external`). On a GPU:
LLaMA-3-8B's heads (32 query heads, 8 KV heads of 128), bf16, one new token per row, batch
8 and 32 at contexts of 1k, 4k, 16k, 32k and 64k keys, batch 1 at 1k/16k/64k and batch 64 at
4k/16k/64k, every row full (``GPU_GRID``: the grid pruned to fit the GPU check's time share);
and a "mixed" variant at batch 32 (4k and 32k) whose row ``b`` holds ``context * (b + 1) //
batch`` keys (a 32nd of the cache to all of it).
The target rows (batch 8 and 32 at 32k keys, see :mod:`fastformer.benchmarks.targets`) run
first, so that a spent time budget leaves them in. On the CPU the kernels run in Triton's
interpreter: one row of 4 query heads and 2 KV heads of 32 over 64 keys, and the mixed variant
over 3 rows.

The providers see one cache, read only: the cache and its lengths are held in a
:class:`KVCacheInputs`, which the runner passes as it is (a tensor among the inputs would be
copied for every check and upcast whole to float64: 4x the cache, 64 GiB at batch 64 x 64k).
The float64 truth upcasts one row of the cache at a time instead, and is computed once per case
(kept on the inputs). The case is not differentiable (``Case.differentiable``): q does not
require grad, so :func:`fastformer.decode_attention` takes its kernel path (with a q that
requires grad it would take its differentiable route through the training attention). The
fastformer provider passes ``validate=False``, as the generation loop does on every layer but
the first: ``validate=True`` reads the lengths on the host (one device sync a call).

SDPA gets each GQA group's query heads as query rows of its KV head (one new token per row: the
group's rows see the same keys) and a (batch, 1, 1, capacity) boolean mask of the keys under
each row's length, built in the call as a decode loop builds it each step.

GB/s (:func:`fastformer.benchmarks.counts.decode_attention_bytes`): the cache rows actually read
(each row's keys and values up to its length), q, the output and the lengths. On a GPU, the
fraction of the measured copy bandwidth at 32k keys is the suite's target.

``kv_cache_append``: :func:`fastformer.kv_cache_append_` with the rotary embedding of the new
keys fused in, against eager PyTorch (the rotary reference, then ``index_copy_`` of the rotated
keys and the values at the new positions, as transformers' static cache writes) and
torch.compile of it. Every row has the same length (``index_copy_`` takes one position list for
all rows). The providers return the written positions of the cache (views), which the check
compares; the case is ``in_place``: each provider starts from a freshly drawn cache of random
values (each check run from its own copy), so a provider that writes nothing fails. GB/s from
:func:`fastformer.benchmarks.counts.kv_append_bytes`. GPU: 8 KV heads of 128 with LLaMA-3's
rotary base, a 4096-position cache half full, one new token for batch 1/8/64 and 128 new tokens
for batch 8; CPU: 2 rows of 2 heads of 32.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
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
from fastformer.functional.rope_scaling import RopeParameters, rope_init

DEFAULT_DTYPE = torch.bfloat16
DECODE_OP = "decode_attention"
MIXED_OP = "decode_attention+mixed"
APPEND_OP = "kv_cache_append+rotary"
X_AXIS = "context length"
# LLaMA-3-8B's attention: 32 query heads, 8 KV heads, head_dim 128 (rotary base 500000).
LLAMA3_HEADS = 32
LLAMA3_KV_HEADS = 8
LLAMA3_HEAD_DIM = 128
LLAMA3_ROPE_THETA = 500000.0
# The GPU grid, pruned to fit the GPU check's time share: every context at the target batches,
# three at batch 1 and 64, two for the mixed variant (18 cases; 64 x 64k is a 16 GiB cache).
GPU_CONTEXTS = (1024, 4096, 16384, 32768, 65536)
GPU_GRID = {
    1: (1024, 16384, 65536),
    8: GPU_CONTEXTS,
    32: GPU_CONTEXTS,
    64: (4096, 16384, 65536),
}
MIXED_BATCH = 32
MIXED_CONTEXTS = (4096, 32768)
# The rows the issue sets a target on (fastformer at >= 85% of the copy bandwidth): run first.
TARGET_CONTEXT = 32768
TARGET_BATCHES = (8, 32)


@dataclass(frozen=True)
class DecodeShape:
    """One new token per row over a dense cache of ``context`` positions; every row full, or
    with ``mixed`` lengths (row ``b`` holds ``context * (b + 1) // batch`` keys)."""

    batch: int
    n_heads: int
    n_kv_heads: int
    context: int
    head_dim: int
    mixed: bool = False

    def lengths(self) -> list[int]:
        if not self.mixed:
            return [self.context] * self.batch
        return [self.context * (b + 1) // self.batch for b in range(self.batch)]

    def as_tuple(self) -> tuple[int, ...]:
        return (self.batch, self.n_heads, self.n_kv_heads, self.context, self.head_dim)


def _gpu_shapes() -> list[DecodeShape]:
    def shape(batch, context, mixed=False):
        heads = (LLAMA3_HEADS, LLAMA3_KV_HEADS)
        return DecodeShape(batch, *heads, context, LLAMA3_HEAD_DIM, mixed=mixed)

    first = [shape(batch, TARGET_CONTEXT) for batch in TARGET_BATCHES]
    first.append(shape(MIXED_BATCH, TARGET_CONTEXT, mixed=True))
    rest = [
        shape(batch, context)
        for context in GPU_CONTEXTS
        for batch, contexts in GPU_GRID.items()
        if context in contexts
    ]
    rest += [shape(MIXED_BATCH, context, mixed=True) for context in MIXED_CONTEXTS]
    return first + [s for s in rest if s not in first]


CPU_SHAPES = (DecodeShape(1, 4, 2, 64, 32), DecodeShape(3, 4, 2, 64, 32, mixed=True))


def default_shapes(device: torch.device) -> list[DecodeShape]:
    return _gpu_shapes() if device.type == "cuda" else list(CPU_SHAPES)


@dataclass(eq=False)
class KVCacheInputs:
    """A dense KV cache and its lengths, read by every provider of a case. Not tensors to the
    runner, on purpose (see the module header). ``truths`` keeps the reference's output per
    dtype with the q it was computed from."""

    k_cache: torch.Tensor  # (batch, n_kv_heads, capacity, head_dim)
    v_cache: torch.Tensor  # like k_cache
    cache_seqlens: torch.Tensor  # (batch,) int32
    truths: dict = field(default_factory=dict, repr=False)


def _decode_inputs(device, generator, *, shape: DecodeShape, dtype) -> dict[str, object]:
    def randn(*size):
        return torch.randn(size, dtype=dtype, device=device, generator=generator)

    batch, heads, kv_heads, context, head_dim = shape.as_tuple()
    lengths = torch.tensor(shape.lengths(), dtype=torch.int32, device=device)
    cache = KVCacheInputs(
        randn(batch, kv_heads, context, head_dim),
        randn(batch, kv_heads, context, head_dim),
        lengths,
    )
    return {"q": randn(batch, heads, 1, head_dim), "cache": cache}


def decode_reference(q: torch.Tensor, cache: KVCacheInputs) -> torch.Tensor:
    """The eager reference in q's dtype, one row at a time, each row's keys cast to q's dtype
    (float64 for the truth: one row upcast at a time, never the whole cache). Remembered on
    ``cache`` per dtype: the check asks again for every provider with the same q."""
    kept = cache.truths.get(q.dtype)
    if kept is not None and torch.equal(kept[0], q):
        return kept[1].clone()
    rows = []
    for b, length in enumerate(cache.cache_seqlens.tolist()):
        k = cache.k_cache[b : b + 1, :, :length].to(q.dtype)  # (1, Hkv, len_b, D)
        v = cache.v_cache[b : b + 1, :, :length].to(q.dtype)
        lengths = cache.cache_seqlens[b : b + 1]
        rows.append(reference.decode_attention(q[b : b + 1], k, v, lengths))
    out = torch.cat(rows)  # (B, H, 1, D)
    cache.truths[q.dtype] = (q.detach().clone(), out.detach())
    return out.clone()


def _eager(q, cache: KVCacheInputs):
    return reference.decode_attention(q, cache.k_cache, cache.v_cache, cache.cache_seqlens)


def _fastformer(q, cache: KVCacheInputs):
    return fastformer.decode_attention(
        q, cache.k_cache, cache.v_cache, cache.cache_seqlens, validate=False
    )


def _sdpa(q, cache: KVCacheInputs):
    batch, heads, seqlen_q, head_dim = q.shape
    kv_heads, capacity = cache.k_cache.shape[1], cache.k_cache.shape[2]
    # One new token per row: a GQA group's query heads become query rows of its KV head.
    grouped = q.reshape(batch, kv_heads, heads // kv_heads * seqlen_q, head_dim)  # (B, Hkv, G, D)
    keys = torch.arange(capacity, device=q.device)
    mask = keys < cache.cache_seqlens[:, None]  # (B, capacity): True = a cached key
    out = F.scaled_dot_product_attention(
        grouped, cache.k_cache, cache.v_cache, attn_mask=mask[:, None, None, :]
    )  # (B, Hkv, G, D)
    return out.reshape(batch, heads, seqlen_q, head_dim)


def decode_case(shape: DecodeShape, dtype: torch.dtype = DEFAULT_DTYPE) -> Case:
    """One decode-attention case (op ``decode_attention``, or ``decode_attention+mixed``)."""
    providers = {EAGER: _eager, SDPA: _sdpa, FASTFORMER: _fastformer}
    flash = external.flash_decode()
    if flash is not None:
        providers[FLASH_ATTN] = flash
    n_bytes = counts.decode_attention_bytes(
        shape.lengths(), shape.n_heads, shape.n_kv_heads, shape.head_dim, elem_bytes=dtype.itemsize
    )
    return Case(
        op=MIXED_OP if shape.mixed else DECODE_OP,
        shape=shape.as_tuple(),
        dtype=dtype,
        make_inputs=partial(_decode_inputs, shape=shape, dtype=dtype),
        reference=decode_reference,
        providers=providers,
        fwd_bytes=n_bytes,
        bwd_bytes=0,
        differentiable=False,
        x_axis=X_AXIS,
        x_value=shape.context,
        variant=f"batch {shape.batch}",
    )


def decode_cases(
    device: torch.device,
    dtypes: Sequence[torch.dtype] = (DEFAULT_DTYPE,),
    shapes: Sequence[DecodeShape] | None = None,
) -> list[Case]:
    shapes = default_shapes(device) if shapes is None else shapes
    return [decode_case(shape, dtype) for dtype in dtypes for shape in shapes]


# --- the KV-cache append --------------------------------------------------------------------


@dataclass(frozen=True)
class AppendShape:
    """``seqlen_new`` new tokens per row appended after ``start`` cached ones, in a cache of
    ``capacity`` positions; every feature rotated."""

    batch: int
    n_kv_heads: int
    seqlen_new: int
    head_dim: int
    capacity: int
    start: int

    def as_tuple(self) -> tuple[int, ...]:
        return (self.batch, self.n_kv_heads, self.seqlen_new, self.head_dim)


GPU_APPEND_CAPACITY = 4096
GPU_APPEND_SHAPES = tuple(
    AppendShape(batch, LLAMA3_KV_HEADS, seqlen_new, LLAMA3_HEAD_DIM, GPU_APPEND_CAPACITY, 2048)
    for batch, seqlen_new in ((1, 1), (8, 1), (64, 1), (8, 128))
)
CPU_APPEND_SHAPES = (AppendShape(2, 2, 1, 32, 16, 5),)


@dataclass(frozen=True)
class AppendState:
    """Where the new tokens go, and the rotary frequencies. Not tensors to the runner, on
    purpose: the lengths and positions are integers and the frequencies stay fp32."""

    cache_seqlens: torch.Tensor  # (batch,) int32, the lengths before the append
    positions: torch.Tensor  # (seqlen_new,) int64, the same for every row
    position_ids: torch.Tensor  # (batch, seqlen_new) int64
    inv_freq: torch.Tensor  # (head_dim // 2,) fp32
    start: int  # positions[0]
    stop: int  # positions[-1] + 1


def _append_inputs(device, generator, *, shape: AppendShape, dtype, theta: float):
    def randn(*size):
        return torch.randn(size, dtype=dtype, device=device, generator=generator)

    batch, kv_heads, seqlen_new, head_dim = shape.as_tuple()
    positions = torch.arange(shape.start, shape.start + seqlen_new, device=device)
    params = RopeParameters(head_dim=head_dim, rope_theta=theta)
    state = AppendState(
        cache_seqlens=torch.full((batch,), shape.start, dtype=torch.int32, device=device),
        positions=positions,
        position_ids=positions.expand(batch, -1).contiguous(),
        inv_freq=rope_init(params, device=device)[0],
        start=shape.start,
        stop=shape.start + seqlen_new,
    )
    return {
        "k_cache": randn(batch, kv_heads, shape.capacity, head_dim),
        "v_cache": randn(batch, kv_heads, shape.capacity, head_dim),
        "k_new": randn(batch, kv_heads, seqlen_new, head_dim),
        "v_new": randn(batch, kv_heads, seqlen_new, head_dim),
        "state": state,
    }


def _written(k_cache, v_cache, state: AppendState):
    """The cache positions the append wrote, as views: (B, Hkv, seqlen_new, D) each."""
    return k_cache[:, :, state.start : state.stop], v_cache[:, :, state.start : state.stop]


def eager_append(k_cache, v_cache, k_new, v_new, state: AppendState):
    """Rotate the new keys (the rotary reference), then ``index_copy_`` them and the values into
    the cache at the new positions; the written positions (views)."""
    k_rot, _ = reference.apply_rotary(
        k_new, k_new[:, :0], state.inv_freq, position_ids=state.position_ids, layout="bhsd"
    )  # (B, Hkv, S_new, D)
    k_cache.index_copy_(2, state.positions, k_rot)
    v_cache.index_copy_(2, state.positions, v_new)
    return _written(k_cache, v_cache, state)


def _fastformer_append(k_cache, v_cache, k_new, v_new, state: AppendState):
    fastformer.kv_cache_append_(
        k_cache, v_cache, k_new, v_new, state.cache_seqlens, inv_freq=state.inv_freq,
        validate=False,
    )  # fmt: skip
    return _written(k_cache, v_cache, state)


def append_case(
    shape: AppendShape, dtype: torch.dtype = DEFAULT_DTYPE, theta: float = LLAMA3_ROPE_THETA
) -> Case:
    """One KV-cache append case (op ``kv_cache_append+rotary``)."""
    n_bytes = counts.kv_append_bytes(
        shape.batch, shape.n_kv_heads, shape.seqlen_new, shape.head_dim,
        elem_bytes=dtype.itemsize, rotary_dim=shape.head_dim,
    )  # fmt: skip
    return Case(
        op=APPEND_OP,
        shape=shape.as_tuple(),
        dtype=dtype,
        make_inputs=partial(_append_inputs, shape=shape, dtype=dtype, theta=theta),
        reference=eager_append,
        providers={
            EAGER: eager_append,
            COMPILE: lazy_compile(eager_append),
            FASTFORMER: _fastformer_append,
        },
        fwd_bytes=n_bytes,
        bwd_bytes=0,
        differentiable=False,
        in_place=True,
        x_axis="batch",
        x_value=shape.batch,
        variant=f"{shape.seqlen_new} new tokens a row",
    )


def append_cases(
    device: torch.device,
    dtypes: Sequence[torch.dtype] = (DEFAULT_DTYPE,),
    shapes: Sequence[AppendShape] | None = None,
) -> list[Case]:
    if shapes is None:
        shapes = GPU_APPEND_SHAPES if device.type == "cuda" else CPU_APPEND_SHAPES
    return [append_case(shape, dtype) for dtype in dtypes for shape in shapes]
