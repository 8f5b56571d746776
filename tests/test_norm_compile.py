"""The norm kernels compile for sm_80 and sm_90 without spills and within shared memory, at every
width where the fused tile changes shape (up to 16384 columns forward, 8192 backward) and in
the looping kernels; checked on any machine (``fastformer inspect``, fastformer/compile_report.py).

Aligned forms (hidden sizes that are multiples of 16, as in models) must also move 16 bytes
per global load and store: the norms are memory-bound.
"""

from __future__ import annotations

import pytest

from fastformer import compile_report

# (kernel, config, form, arch) -> why it is tolerated. Odd hidden sizes (no alignment known)
# on sm_80 spill a few bytes at the widest tiles held in registers.
KNOWN = {
    ("_norm_bwd_kernel", "8192 cols: 1x8192 w16", "LayerNorm+residual bf16 odd width", "sm_80"):
        "8 B spilled at the widest fused backward tile, odd widths only",
    ("_norm_bwd_long_row_kernel", "rows > fused: chunk 4096 w16",
     "LayerNorm+residual bf16 odd width", "sm_80"):
        "8 B spilled by the looping backward, odd widths only",
}  # fmt: skip


@pytest.fixture(scope="module")
def records():
    if compile_report.unpinned_reason():
        pytest.skip(compile_report.unpinned_reason())
    return compile_report.inspect_run(("norm",)).records


def test_norms_compile_for_sm80_and_sm90_without_spills(records):
    kernels = {record["kernel"] for record in records}
    assert kernels == {"_norm_fwd_kernel", "_norm_bwd_kernel", "_norm_fwd_long_row_kernel",
                       "_norm_bwd_long_row_kernel"}  # fmt: skip
    assert {record["arch"] for record in records} == set(compile_report.TEST_ARCHS)
    assert compile_report.failures(records, KNOWN) == []


def test_aligned_norms_move_16_bytes_per_access(records):
    aligned = [record for record in records if record["form"].endswith("aligned")]
    assert aligned
    for record in aligned:
        assert record["load16"] > 0 and record["store16"] > 0, record
