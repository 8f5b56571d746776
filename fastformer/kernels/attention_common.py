"""What the attention forward and backward kernels share: jit helpers, tiles, launch flags.

Two layouts reach the kernels, told apart by ``VARLEN``:
- dense: q (batch, n_heads, seqlen_q, head_dim), k and v (batch, n_kv_heads, seqlen_k, head_dim);
- packed (varlen): q (total_q, n_heads, head_dim), k and v (total_k, n_kv_heads, head_dim), the
  sequences delimited by ``cu_seqlens_q`` / ``cu_seqlens_k`` (batch + 1 int32 offsets); the
  kernels then see batch stride 0 and add each sequence's start to the row index.
Every stride is passed (any view works); outputs are written through their own strides.

Causal masking keeps key ``j`` for query ``i`` when ``j <= i + offset``: offset 0 is SDPA's
top-left alignment, ``seqlen_k - seqlen_q`` (per sequence) the bottom-right one. A sliding
window ``(left, right)`` keeps ``i + offset - left <= j <= i + offset + right``; key blocks
outside the band (causal or windowed) are not visited.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from fastformer.kernels import _runtime

MAX_HEAD_DIM = 256
LOG2E = 1.4426950408889634  # log2(e): exp(x) == exp2(x * LOG2E)
MASK_NONE, MASK_BOOL, MASK_FLOAT = 0, 1, 2
# Smallest block a tensor-core dot takes along each axis.
MIN_BLOCK = 16


@triton.jit
def dot(a, b, DOT_FP32: tl.constexpr, IEEE: tl.constexpr):
    """``a @ b`` in fp32: full precision for fp32 inputs (not tf32), tensor-core precision
    otherwise. Under the interpreter (``DOT_FP32``) the operands are upcast (its bf16 dot is
    wrong) and the sum is taken in fp64, then rounded once: numpy's BLAS orders a sum by the
    matrix shapes, so the forward's and the backward's tiles (different shapes) would round the
    same score differently, and the backward's P = exp2(s - m - log2 l) would carry that
    mismatch times the logits' magnitude (10x eager's fp32 error at scale 0.5). A GPU's MMA
    sums each product in a fixed order over head_dim; the GPU-marked tests hold it to the same
    rule."""
    if DOT_FP32:
        return tl.dot(a.to(tl.float64), b.to(tl.float64)).to(tl.float32)
    if IEEE:
        return tl.dot(a, b, input_precision="ieee")
    return tl.dot(a, b)


@triton.jit
def sequence(batch, cu_seqlens_q_ptr, cu_seqlens_k_ptr, seqlen_q, seqlen_k, VARLEN: tl.constexpr):
    """(first query row, first key row, query count, key count) of sequence ``batch``."""
    if VARLEN:
        q_start = tl.load(cu_seqlens_q_ptr + batch).to(tl.int64)
        k_start = tl.load(cu_seqlens_k_ptr + batch).to(tl.int64)
        q_len = (tl.load(cu_seqlens_q_ptr + batch + 1) - q_start).to(tl.int32)
        k_len = (tl.load(cu_seqlens_k_ptr + batch + 1) - k_start).to(tl.int32)
        return q_start, k_start, q_len, k_len
    return batch * 0, batch * 0, seqlen_q, seqlen_k


@triton.jit
def scores(
    q,
    k_t,
    rows,
    cols,
    seqlen_q,
    seqlen_k,
    mask_base,
    stride_mask_q,
    stride_mask_k,
    sm_scale_log2,
    causal_offset,
    window_left,
    window_right,
    IS_CAUSAL: tl.constexpr,
    HAS_WINDOW: tl.constexpr,
    MASK_KIND: tl.constexpr,
    DOT_FP32: tl.constexpr,
    IEEE: tl.constexpr,
):
    """Scores of a (BLOCK_M, BLOCK_N) tile in base-2 units, -inf where a key must not be seen."""
    s = dot(q, k_t, DOT_FP32, IEEE) * sm_scale_log2
    valid = (cols < seqlen_k)[None, :]
    if IS_CAUSAL:
        valid = valid & (cols[None, :] <= rows[:, None] + causal_offset)
    if HAS_WINDOW:  # keys from (diagonal - window_left) to (diagonal + window_right)
        distance = cols[None, :] - (rows[:, None] + causal_offset)
        valid = valid & (distance >= -window_left) & (distance <= window_right)
    if MASK_KIND != 0:
        mask_ptrs = mask_base + rows[:, None] * stride_mask_q + cols[None, :] * stride_mask_k
        in_bounds = (rows < seqlen_q)[:, None] & (cols < seqlen_k)[None, :]
        if MASK_KIND == 1:
            keep = tl.load(mask_ptrs, mask=in_bounds, other=0)
            valid = valid & (keep != 0)
        else:
            bias = tl.load(mask_ptrs, mask=in_bounds, other=0.0).to(tl.float32)
            # Clamp finite biases (finfo.min paddings) so that x log2(e) stays finite: such a
            # row then averages its keys, as eager does; -inf stays -inf (the key is unseen).
            # NaN stays NaN (the GPU's max would otherwise drop it).
            clamped = tl.maximum(bias, -1.0e38, propagate_nan=tl.PropagateNan.ALL)
            bias = tl.where(bias == float("-inf"), bias, clamped)
            s = s + bias * 1.4426950408889634  # log2(e): base-2 units
    return tl.where(valid, s, float("-inf"))


@triton.jit
def key_range(
    pid_m,
    seqlen_k,
    causal_offset,
    window_left,
    window_right,
    IS_CAUSAL: tl.constexpr,
    HAS_WINDOW: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """[lo, hi) of the keys that query block ``pid_m`` can see; lo is a multiple of BLOCK_N."""
    lo = 0
    hi = seqlen_k
    last_row = (pid_m + 1) * BLOCK_M - 1
    if IS_CAUSAL:
        hi = tl.minimum(hi, last_row + causal_offset + 1)
    if HAS_WINDOW:
        hi = tl.minimum(hi, last_row + causal_offset + window_right + 1)
        lo = tl.maximum(pid_m * BLOCK_M + causal_offset - window_left, 0) // BLOCK_N * BLOCK_N
    return lo, tl.maximum(hi, 0)


@triton.jit
def query_range(
    start_n,
    seqlen_q,
    causal_offset,
    window_left,
    window_right,
    IS_CAUSAL: tl.constexpr,
    HAS_WINDOW: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """[lo, hi) of the queries that can see key block ``start_n``; lo a multiple of BLOCK_M."""
    first = 0
    hi = seqlen_q
    if IS_CAUSAL:
        first = tl.maximum(start_n - causal_offset, 0)
    if HAS_WINDOW:
        first = tl.maximum(first, start_n - causal_offset - window_right)
        hi = tl.minimum(hi, start_n + BLOCK_N - 1 - causal_offset + window_left + 1)
    return first // BLOCK_M * BLOCK_M, tl.maximum(hi, 0)


@triton.jit
def dropout_keep(seed, bh, rows, cols, rng_seqlen_q, rng_seqlen_k, dropout_p):
    """Which (row, col) of (batch * head) ``bh`` dropout keeps: Philox numbers keyed on the
    element's place in a (batch * heads, rng_seqlen_q, rng_seqlen_k) grid, so the forward, the
    backward and :func:`dropout_mask` draw the same ones."""
    offsets = (bh * rng_seqlen_q + rows)[:, None] * rng_seqlen_k + cols[None, :]
    return tl.rand(seed, offsets) >= dropout_p


@triton.jit
def _dropout_mask_kernel(
    keep_ptr,  # (batch * n_heads, seqlen_q, seqlen_k) int8, out
    seed,
    seqlen_q,
    seqlen_k,
    dropout_p,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """The keep mask of one (batch * head, row block, column block) tile."""
    bh = tl.program_id(0).to(tl.int64)
    rows = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(2) * BLOCK_N + tl.arange(0, BLOCK_N)
    keep = dropout_keep(seed, bh, rows, cols, seqlen_q, seqlen_k, dropout_p)
    offsets = (bh * seqlen_q + rows)[:, None] * seqlen_k + cols[None, :]
    in_bounds = (rows < seqlen_q)[:, None] & (cols < seqlen_k)[None, :]
    tl.store(keep_ptr + offsets, keep.to(tl.int8), mask=in_bounds)


def dropout_mask(seed: int, problem, dropout_p: float, device) -> torch.Tensor:
    """The (batch, n_heads, seqlen_q, seqlen_k) bool keep mask that attention with this seed
    uses (for packed sequences: sequence b's rows and keys from 0, up to the longest ones).
    For tests and for eager recomputation of a dropout forward."""
    p = problem
    keep = torch.empty(p.batch * p.n_heads, p.seqlen_q, p.seqlen_k, dtype=torch.int8, device=device)
    if keep.numel():
        _runtime.check_runnable(_dropout_mask_kernel, "dropout mask", keep)
        grid = (
            p.batch * p.n_heads,
            triton.cdiv(p.seqlen_q, MIN_BLOCK),
            triton.cdiv(p.seqlen_k, MIN_BLOCK),
        )
        _dropout_mask_kernel[grid](
            keep, seed, p.seqlen_q, p.seqlen_k, dropout_p, BLOCK_M=MIN_BLOCK, BLOCK_N=MIN_BLOCK
        )
    return keep.view(p.batch, p.n_heads, p.seqlen_q, p.seqlen_k).bool()


@dataclass(frozen=True)
class Tile:
    block_m: int  # query rows per tile
    block_n: int  # keys per tile
    num_warps: int
    num_stages: int
    min_capability: int = 0  # GPUs below this compute capability do not try it (it spills there)
    max_capability: int | None = None  # nor do GPUs from this one on (None: no bound)

    def config(self) -> triton.Config:
        blocks = dict(BLOCK_M=self.block_m, BLOCK_N=self.block_n)
        return triton.Config(blocks, num_warps=self.num_warps, num_stages=self.num_stages)

    def key(self) -> tuple[int, int, int, int]:
        return (self.block_m, self.block_n, self.num_warps, self.num_stages)

    def tried_on(self, capability: int) -> bool:
        """Whether a GPU of compute capability ``capability`` (80: sm_80) tries this tile."""
        below = self.max_capability is None or capability < self.max_capability
        return self.min_capability <= capability and below


# Autotuning candidates per tile form, kernel and head-dim bucket (the power of two >= head_dim,
# at least 64). A form is what a launch's flags and dtype do to the registers a tile needs:
# - "plain": fp16/bf16 without dropout or mask (causal, windowed, packed or full);
# - "heavy": fp16/bf16 with dropout, a mask or the float mask's gradient (Philox numbers, mask
#   tiles and the score gradient's store stay live next to the accumulators);
# - "fp32": fp32 inputs, whose full-precision (IEEE) products run on CUDA cores.
# Each tile was compiled for sm_80 and sm_90 in every form of the catalogue (causal, windowed,
# packed, dropout, bool mask, float mask with its gradient, all flags; fp32 causal and all
# flags; tests/test_attention_compile.py compiles them all) with 0 bytes of stack, and the plain
# ones with wgmma where head_dim <= 128. Found by compiling candidates in those forms
# (``fastformer inspect --arch sm_80 sm_90 --op attention``); what spilled:
# - plain: dk/dv's 64 x 64 at head_dim 64 before sm_90 (44 B, mma.sync), and its 32 x 64 with
#   4 warps windowed or packed there (28-44 B): both tried from sm_90 only. At 256 no backward
#   tile with wgmma avoided spills, so the backward takes 32 x 32 (mma.sync) there.
# - heavy: the plain backward tiles at head_dim 64 before sm_90 (60-544 B), dk/dv 64 x 64 on
#   sm_90 (112-360 B), dq 64 x 64 at 64 and 128 (28-316 B), the forward's 128 x 64 before sm_90
#   (60-64 B) and 64 x 32 with 8 warps at 256 (140 B): smaller tiles (32 x 32, 64 x 32), the
#   larger ones from sm_90 only.
# - fp32: every bf16 tile (kilobytes): tiles of 16 rows or keys. At head_dim 256 no dk/dv
#   candidate was spill-free on both architectures, so each has its own (16 x 16 w8 spilled
#   44 B on sm_90, 16 x 32 w16 24 B before it).
# The first candidate of each bucket is the default when nothing is tuned.
GPU_TILES = {
    "plain": {
        "fwd": {
            64: (Tile(128, 64, 8, 2),),
            128: (Tile(128, 64, 8, 2), Tile(128, 32, 8, 2)),
            256: (Tile(64, 32, 8, 1),),
        },
        "dkdv": {
            64: (
                Tile(32, 64, 8, 2),
                Tile(32, 64, 4, 2, min_capability=_runtime.WGMMA_CAPABILITY),
                Tile(64, 64, 8, 2, min_capability=_runtime.WGMMA_CAPABILITY),
            ),
            128: (Tile(32, 64, 8, 2),),
            256: (Tile(32, 32, 8, 1),),
        },
        "dq": {
            64: (Tile(64, 64, 4, 2),),
            128: (Tile(64, 64, 8, 2),),
            256: (Tile(32, 32, 8, 1),),
        },
    },
    "heavy": {
        "fwd": {
            64: (Tile(64, 32, 4, 2), Tile(128, 64, 8, 2, min_capability=_runtime.WGMMA_CAPABILITY)),
            128: (Tile(128, 32, 8, 2),),
            256: (Tile(32, 32, 4, 1),),
        },
        "dkdv": {
            64: (Tile(32, 32, 4, 1), Tile(32, 64, 8, 2, min_capability=_runtime.WGMMA_CAPABILITY)),
            128: (Tile(32, 32, 8, 1),),
            256: (Tile(32, 32, 8, 1),),
        },
        "dq": {
            64: (Tile(64, 32, 8, 2),),
            128: (Tile(32, 64, 8, 1), Tile(64, 32, 8, 1, min_capability=_runtime.WGMMA_CAPABILITY)),
            256: (Tile(32, 32, 8, 1),),
        },
    },
    "fp32": {
        "fwd": {
            64: (Tile(16, 32, 4, 1), Tile(32, 32, 4, 1, min_capability=_runtime.WGMMA_CAPABILITY)),
            128: (Tile(16, 32, 4, 1), Tile(16, 16, 4, 1)),
            256: (Tile(16, 16, 4, 1),),
        },
        "dkdv": {
            64: (Tile(16, 16, 2, 1),),
            128: (Tile(16, 16, 4, 1),),
            256: (
                Tile(16, 16, 8, 1, max_capability=_runtime.WGMMA_CAPABILITY),
                Tile(16, 32, 16, 1, min_capability=_runtime.WGMMA_CAPABILITY),
            ),
        },
        "dq": {
            64: (Tile(16, 32, 4, 1),),
            128: (Tile(16, 32, 4, 1),),
            256: (Tile(16, 16, 4, 1),),
        },
    },
}
TILE_FORMS = tuple(GPU_TILES)
# What changes the best (or a valid) tile: the head dim (its bucket), the masking, the layout
# and the extras. The autotuner adds the tensors' dtypes to the key itself.
TUNING_KEY = [
    "head_dim",
    "IS_CAUSAL",
    "BOTTOM_RIGHT",
    "MASK_KIND",
    "VARLEN",
    "HAS_DROPOUT",
    "HAS_WINDOW",
]


def head_dim_bucket(head_dim: int) -> int:
    return max(triton.next_power_of_2(head_dim), 64)


def block_d(head_dim: int) -> int:
    return max(MIN_BLOCK, triton.next_power_of_2(head_dim))


def tile_form(*, fp32: bool, mask_kind: int, dropout: bool, mask_grad: bool = False) -> str:
    """The tile form (a key of ``GPU_TILES``) of a launch with these flags (see there)."""
    if fp32:
        return "fp32"
    if dropout or mask_kind != MASK_NONE or mask_grad:
        return "heavy"
    return "plain"


def gpu_tiles(which: str, head_dim: int, capability: int, form: str = "plain") -> list[Tile]:
    """The candidates of a ``which`` launch of tile form ``form`` (``tile_form``) at
    ``head_dim`` on a GPU of compute capability ``capability`` (80: sm_80): its form's and
    head-dim bucket's tiles that do not spill there."""
    tiles = GPU_TILES[form][which][head_dim_bucket(head_dim)]
    return [tile for tile in tiles if tile.tried_on(capability)]


def interpreter_tile(which: str) -> Tile:
    """The interpreter pays for padded work, not launches: small tiles, with the GPU tiles'
    shape (which side is longer), so that tests walk the same block arithmetic."""
    first = GPU_TILES["plain"][which][64][0]
    if first.block_m > first.block_n:
        return Tile(2 * MIN_BLOCK, MIN_BLOCK, 4, 1)
    return Tile(MIN_BLOCK, 2 * MIN_BLOCK, 4, 1)


def autotuned(kernel, which: str):
    """``kernel`` under ``triton.autotune`` over its candidates for the call's tile form,
    head-dim bucket and GPU (``gpu_tiles``; one fixed tile under the interpreter, which cannot
    benchmark). The tuning key holds every flag the form is read off (and the dtypes). The
    tuning cache is not keyed on the GPU: a process that launches one key on GPUs of two
    architectures keeps the first one's choice."""
    if _runtime.is_interpreted(kernel):
        configs = [interpreter_tile(which).config()]
        prune = None
    else:
        unique = {
            tile.key(): tile
            for form in GPU_TILES.values()
            for tiles in form[which].values()
            for tile in tiles
        }
        configs = [tile.config() for tile in unique.values()]

        def prune(configs, named_args, **kwargs):
            capability = _runtime.launch_capability(named_args)
            form = tile_form(
                fp32=bool(kwargs.get("IEEE", False)),
                mask_kind=kwargs.get("MASK_KIND", MASK_NONE),
                dropout=bool(kwargs.get("HAS_DROPOUT", False)),
                mask_grad=bool(kwargs.get("MASK_GRAD", False)),
            )
            tiles = gpu_tiles(which, named_args["head_dim"], capability, form)
            by_key = {_config_key(config): config for config in configs}
            return [by_key[tile.key()] for tile in tiles]  # in the form's order

    options = {"early_config_prune": prune} if prune else None
    return triton.autotune(configs=configs, key=TUNING_KEY, prune_configs_by=options)(kernel)


def _config_key(config: triton.Config) -> tuple[int, int, int, int]:
    blocks = config.kwargs
    return (blocks["BLOCK_M"], blocks["BLOCK_N"], config.num_warps, config.num_stages)


def flags(
    q: torch.Tensor,
    kernel,
    is_causal: bool,
    bottom_right: bool,
    mask_kind: int,
    varlen: bool,
    dropout: bool,
    window: tuple[int, int] | None,
):
    interpreted = _runtime.is_interpreted(kernel)
    return dict(
        HAS_DROPOUT=dropout,
        HAS_WINDOW=window is not None,
        IS_CAUSAL=is_causal,
        BOTTOM_RIGHT=bottom_right,
        MASK_KIND=mask_kind,
        VARLEN=varlen,
        DOT_FP32=interpreted,
        IEEE=q.dtype == torch.float32,
        BF16_RNE=_runtime.software_bf16_rounding(kernel, q.dtype),
    )


@dataclass(frozen=True)
class Problem:
    """One attention call as the kernels see it (dense or packed)."""

    batch: int  # sequences
    n_heads: int
    n_kv_heads: int
    seqlen_q: int  # dense: the length; packed: the longest sequence
    seqlen_k: int
    head_dim: int
    cu_seqlens_q: torch.Tensor | None = None  # (batch + 1,) int32, packed only
    cu_seqlens_k: torch.Tensor | None = None

    @property
    def varlen(self) -> bool:
        return self.cu_seqlens_q is not None

    @property
    def group_size(self) -> int:
        return self.n_heads // self.n_kv_heads


def bhsd_strides(t: torch.Tensor, varlen: bool) -> tuple[int, int, int, int]:
    """(batch, head, seq, dim) strides; a packed (total, heads, dim) tensor has batch stride 0."""
    if varlen:
        return 0, t.stride(1), t.stride(0), t.stride(2)
    return t.stride(0), t.stride(1), t.stride(2), t.stride(3)


def bhs_strides(t: torch.Tensor, varlen: bool) -> tuple[int, int, int]:
    """(batch, head, seq) strides of a per-row statistic: (batch, heads, seq) or (total, heads)."""
    if varlen:
        return 0, t.stride(1), t.stride(0)
    return t.stride(0), t.stride(1), t.stride(2)


def mask_args(mask: torch.Tensor | None, shape, fallback: torch.Tensor):
    """The mask broadcast to (batch, heads, seqlen_q, seqlen_k) through zero strides."""
    if mask is None:
        return fallback, (0, 0, 0, 0)
    full = mask.broadcast_to(shape)
    return full, tuple(full.stride())


def seqlen_args(problem: Problem, fallback: torch.Tensor):
    if problem.varlen:
        return problem.cu_seqlens_q, problem.cu_seqlens_k
    return fallback, fallback


def window_args(window: tuple[int, int] | None, problem: Problem) -> tuple[int, int]:
    """(left, right) reach of a sliding window, unbounded sides (-1) as a reach past any key."""
    if window is None:
        return 0, 0
    # Any reach past every key is the same; clamping keeps the kernels' int32 bounds safe.
    unbounded = problem.seqlen_q + problem.seqlen_k
    left, right = window
    return (
        unbounded if left < 0 else min(left, unbounded),
        unbounded if right < 0 else min(right, unbounded),
    )
