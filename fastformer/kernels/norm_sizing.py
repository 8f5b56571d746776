"""How the norm kernels (:mod:`fastformer.kernels.norm`) size their programs: the widest rows
held in registers whole, elements per program and per warp, the looping kernels' chunk, for
launches the compiler can specialise as 16-byte aligned and for the others (which hold more
registers per element). Each sizing compiles spill-free for sm_80 and sm_90
(tests/test_norm_compile.py compiles both).
"""

from __future__ import annotations

from dataclasses import dataclass

import triton

# Widest row the fused forward holds in registers whole (elements; the backward's: Sizing); wider
# rows take the looping kernels. Read off the sm_90 compile (bf16, 16 warps): one step wider
# spills (the backward, with more live vectors, holds 8192).
MAX_FUSED_COLS = 16384
MAX_WARPS = 16
ALIGNMENT = 16  # Triton's launcher marks pointers, sizes and strides divisible by 16


@dataclass(frozen=True)
class Sizing:
    """How a launch sizes its programs (elements). Aligned launches (``_sizing``) move 16 bytes
    an access, 8 elements a thread. Others load element by element, with mask and address
    registers per element: at 8 a thread they spilled on sm_80 (up to 208 B), so they take 4
    and the backward loops from 4097 columns (tests/test_norm_compile.py compiles both)."""

    tile_elements: int  # a fused program's elements (narrow rows stacked up to it)
    elements_per_warp: int  # sizes num_warps
    max_fused_cols_bwd: int  # widest row the fused backward holds whole
    long_row_block: int  # chunk width of the looping kernels

    def warps(self, elements: int) -> int:
        return min(max(elements // self.elements_per_warp, 1), MAX_WARPS)

    def fused(self, n_cols: int) -> tuple[int, int, int]:
        """(BLOCK_M, BLOCK_N, num_warps) for rows held in registers whole."""
        block_n = triton.next_power_of_2(max(n_cols, 1))
        block_m = max(1, self.tile_elements // block_n)
        return block_m, block_n, self.warps(block_m * block_n)


ALIGNED_SIZING = Sizing(4096, 256, 8192, 4096)
UNALIGNED_SIZING = Sizing(2048, 128, 4096, 2048)


def sizing(n_cols: int, rows, vectors) -> Sizing:
    """ALIGNED_SIZING where the launcher specialises a launch as aligned: the width, row strides
    and pointers multiples of 16, unit column strides (rows: Rows, vectors: (n_cols,); None:
    unused); UNALIGNED_SIZING otherwise."""
    rows = [r for r in rows if r is not None]
    vectors = [t for t in vectors if t is not None]
    aligned = (
        n_cols % ALIGNMENT == 0
        and all(r.stride_col == 1 and r.stride_outer % ALIGNMENT == 0 for r in rows)
        and all(r.stride_inner % ALIGNMENT == 0 for r in rows)
        and all(t.stride(-1) == 1 for t in vectors)
        and all(t.data_ptr() % ALIGNMENT == 0 for t in [r.tensor for r in rows] + vectors)
    )
    return ALIGNED_SIZING if aligned else UNALIGNED_SIZING
