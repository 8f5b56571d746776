"""Each GPU architecture's per-SM limits, and the occupancy a kernel reaches under them.

Occupancy here is the fraction of an SM's warp slots that a kernel's resident blocks fill, the
smallest of four bounds: registers, shared memory, warp slots and the block-slot count. It is
computed from what the compiler reports (registers per thread, shared memory per block) and the
launch's warps, as NVIDIA's occupancy calculator (``cuda_occupancy.h``) does:

- registers are allocated per warp in units of ``REG_ALLOC_UNIT`` and each of the SM's
  ``SUB_PARTITIONS`` schedulers has a quarter of the register file, so a warp's registers must
  fit in one quarter;
- shared memory is allocated per block in ``SMEM_ALLOC_UNIT`` bytes, plus ``SMEM_RESERVED``
  bytes the driver keeps per block (compute capability 8.0 and newer);
- a block whose registers or shared memory exceed the per-block limits cannot launch: its
  occupancy is 0 and the limiting resource is named.

Limits: the L1/shared carve-out is assumed at its shared-memory maximum (what Triton requests
for kernels that need it); the occupancy is theoretical (what can be resident), not achieved.

Sources (all limits, per SM unless said): NVIDIA CUDA C++ Programming Guide, "Compute
Capabilities", table "Technical Specifications per Compute Capability" (registers, threads,
blocks, shared memory per SM and per block); the allocation units and the per-block reservation
from the CUDA Occupancy Calculator (``cuda_occupancy.h`` in the CUDA toolkit).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fastformer.compile_rules import WARP_SIZE

KIB = 1024
REGS_PER_SM = 65536  # 32-bit registers per SM (64K), compute capability 5.0 to 10.x
MAX_REGS_PER_THREAD = 255
REG_ALLOC_UNIT = 256  # registers per warp are allocated in multiples of this (per warp)
SUB_PARTITIONS = 4  # warp schedulers per SM, each with a quarter of the register file
SMEM_ALLOC_UNIT = 128  # bytes: shared memory per block is rounded up to this
SMEM_RESERVED = 1 * KIB  # bytes the driver reserves per block (compute capability >= 8.0)


@dataclass(frozen=True)
class ArchLimits:
    """One architecture's limits (Programming Guide, "Technical Specifications")."""

    name: str  # "sm_90"
    capability: int  # 90: what triton's GPUTarget takes
    max_threads_per_sm: int
    max_blocks_per_sm: int
    smem_per_sm: int  # bytes, at the largest shared-memory carve-out
    smem_per_block: int  # bytes a block may use (opt-in maximum), reservation excluded
    has_wgmma: bool  # Hopper's warpgroup MMA (sm_90 only)
    regs_per_sm: int = REGS_PER_SM
    max_regs_per_thread: int = MAX_REGS_PER_THREAD

    @property
    def max_warps_per_sm(self) -> int:
        return self.max_threads_per_sm // WARP_SIZE


ARCHS = {
    arch.name: arch
    for arch in (
        # A100: 164 KiB shared per SM, 163 KiB per block.
        ArchLimits("sm_80", 80, 2048, 32, 164 * KIB, 163 * KIB, has_wgmma=False),
        # GA10x (RTX 30, A10, A40): 100 KiB per SM, 99 KiB per block, 1536 threads, 16 blocks.
        ArchLimits("sm_86", 86, 1536, 16, 100 * KIB, 99 * KIB, has_wgmma=False),
        # Ada (RTX 40, L4, L40): as sm_86 but 24 blocks.
        ArchLimits("sm_89", 89, 1536, 24, 100 * KIB, 99 * KIB, has_wgmma=False),
        # H100 / H200: 228 KiB per SM, 227 KiB per block.
        ArchLimits("sm_90", 90, 2048, 32, 228 * KIB, 227 * KIB, has_wgmma=True),
    )
}


def arch_limits(name: str) -> ArchLimits:
    """The limits of ``name`` ("sm_90", "90" or "sm90"); ValueError naming the known ones."""
    key = str(name).strip().lower().removeprefix("sm").lstrip("_")
    key = key.removesuffix("a")  # sm_90a: the same limits
    if f"sm_{key}" not in ARCHS:
        raise ValueError(f"arch={name!r} is not one of {', '.join(ARCHS)}")
    return ARCHS[f"sm_{key}"]


@dataclass(frozen=True)
class Occupancy:
    """Resident blocks and warps per SM, the fraction of warp slots filled, and what limits it
    ("registers", "shared memory", "warps", "blocks"; for a block that cannot launch, which
    per-block limit it exceeds)."""

    blocks_per_sm: int
    warps_per_sm: int
    fraction: float
    limiter: str


def _round_up(value: int, unit: int) -> int:
    return math.ceil(value / unit) * unit


def occupancy(
    arch: ArchLimits, *, regs_per_thread: int, smem_per_block: int, num_warps: int
) -> Occupancy:
    """Theoretical occupancy of a kernel on ``arch`` (see the module docstring).

    Args:
        regs_per_thread: registers per thread, as the compiler reports them.
        smem_per_block: shared memory per block in bytes (dynamic plus static), without the
            driver's per-block reservation (added here).
        num_warps: warps per block.
    """
    if num_warps <= 0:
        raise ValueError(f"num_warps={num_warps} must be positive")
    if regs_per_thread > arch.max_regs_per_thread:
        return Occupancy(0, 0, 0.0, f"registers > {arch.max_regs_per_thread}/thread")
    if smem_per_block > arch.smem_per_block:
        return Occupancy(0, 0, 0.0, f"shared memory > {arch.smem_per_block // KIB} KiB/block")
    if num_warps > arch.max_warps_per_sm:
        return Occupancy(0, 0, 0.0, f"warps > {arch.max_warps_per_sm}/block")

    regs_per_warp = _round_up(max(regs_per_thread, 1) * WARP_SIZE, REG_ALLOC_UNIT)
    warps_per_partition = (arch.regs_per_sm // SUB_PARTITIONS) // regs_per_warp
    smem = _round_up(smem_per_block, SMEM_ALLOC_UNIT) + SMEM_RESERVED
    bounds = {
        "warps": arch.max_warps_per_sm // num_warps,
        "blocks": arch.max_blocks_per_sm,
        "registers": warps_per_partition * SUB_PARTITIONS // num_warps,
        "shared memory": arch.smem_per_sm // smem,
    }
    # The first of the smallest bounds names the limiter: on a tie the SM's own slots, which
    # no kernel change lifts, then registers before shared memory.
    limiter = min(bounds, key=bounds.get)
    blocks = bounds[limiter]
    warps = blocks * num_warps
    return Occupancy(blocks, warps, warps / arch.max_warps_per_sm, limiter)
