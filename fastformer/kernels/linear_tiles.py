"""The GEMM kernels' autotuning candidates (:mod:`fastformer.kernels.linear`): the tiles, where
each spills, and the autotuner that offers a launch only the tiles that compile spill-free for
its form (plain or gated) on its GPU (sm_80 or sm_90). Under the interpreter, one wide tile.
"""

from __future__ import annotations

from dataclasses import dataclass

import triton

from fastformer.kernels import _runtime

TUNING_KEY = ["N", "K", "M_BUCKET", "ACTIVATION", "IS_GATED", "INT64_OFFSETS"]


# Where a tile spills: (kernel, form, GPUs).
_FWD, _DX, _DW = "_linear_fwd_kernel", "_linear_bwd_dx_kernel", "_linear_bwd_dw_kernel"
_GATED, _PLAIN = True, False
_ALL_GPUS, _BEFORE_SM90 = False, True


@dataclass(frozen=True)
class Tile:
    block_m: int
    block_n: int
    block_k: int
    num_warps: int
    num_stages: int
    # (kernel, gated, only before sm_90) where it spills: launches there do not try it.
    spills: tuple[tuple[str, bool, bool], ...] = ()

    def config(self) -> triton.Config:
        blocks = dict(BLOCK_M=self.block_m, BLOCK_N=self.block_n, BLOCK_K=self.block_k)
        return triton.Config(blocks, num_warps=self.num_warps, num_stages=self.num_stages)


# Candidates for sm_80/sm_90. The backward kernels use the same names: dx tiles (BLOCK_M, BLOCK_K)
# and loops over N; dW tiles (BLOCK_N, BLOCK_K) and loops over M. Where a tile spills was read off
# the sm_80 and sm_90 bf16 compile of every kernel, form and activation (tests/test_linear_compile
# compiles the forms that spilled): 128 x 128 with the gated form's two accumulators, in dW (84-228
# B on sm_80, 32 B on sm_90) and in dx before sm_90 (144 B); 128 x 64 in the plain dW before sm_90
# (relu, 16 B); 32 x 128 in the gated backward (gelu, 28-312 B). 128 x 256 spills in every kernel.
# M = 16 and 32 serve decode-sized M (mma, not wgmma: a warpgroup's wgmma needs 64 rows).
GPU_TILES = (
    Tile(128, 128, 64, 8, 3, spills=(
        (_FWD, _GATED, _ALL_GPUS), (_DX, _GATED, _ALL_GPUS), (_DW, _GATED, _ALL_GPUS),
        (_DW, _PLAIN, _ALL_GPUS), (_DX, _PLAIN, _BEFORE_SM90))),
    Tile(128, 64, 64, 8, 3, spills=((_DW, _PLAIN, _BEFORE_SM90),)),
    Tile(64, 128, 64, 8, 3),
    Tile(64, 64, 64, 4, 4),
    Tile(32, 128, 64, 4, 4, spills=((_DX, _GATED, _ALL_GPUS), (_DW, _GATED, _ALL_GPUS))),
    Tile(16, 64, 128, 4, 3),
)  # fmt: skip
# The interpreter runs one program at a time and pays per operation, not per element: wide tiles
# cut the programs (4x faster than 64-wide ones at K = 1000, N = 3000); BLOCK_M stays small.
INTERPRETER_TILE = Tile(32, 128, 128, 4, 1)


def gpu_tiles(kernel: str, gated: bool, capability: int) -> list[Tile]:
    """The candidates of a launch of ``kernel`` (its name) on a GPU of compute capability
    ``capability`` (80: sm_80): the tiles that do not spill there; the first is the default."""
    mma_sync = capability < _runtime.WGMMA_CAPABILITY
    return [
        tile
        for tile in GPU_TILES
        if not any(
            k == kernel and g == gated and (mma_sync or not sm8x) for k, g, sm8x in tile.spills
        )
    ]


def config_id(config: triton.Config) -> tuple[int, ...]:
    blocks = (config.kwargs[name] for name in ("BLOCK_M", "BLOCK_N", "BLOCK_K"))
    return (*blocks, config.num_warps, config.num_stages)


def autotuned(kernel):
    if _runtime.is_interpreted(kernel):
        return triton.autotune(configs=[INTERPRETER_TILE.config()], key=TUNING_KEY)(kernel)

    def prune(configs, named_args, **kwargs):  # this launch's tiles for its form and GPU
        gated, capability = bool(kwargs.get("IS_GATED")), _runtime.launch_capability(named_args)
        allowed = {config_id(t.config()) for t in gpu_tiles(kernel.__name__, gated, capability)}
        return [config for config in configs if config_id(config) in allowed]

    configs = [tile.config() for tile in GPU_TILES]
    prune_by = {"early_config_prune": prune}
    return triton.autotune(configs=configs, key=TUNING_KEY, prune_configs_by=prune_by)(kernel)
