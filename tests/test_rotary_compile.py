"""The rotary kernel compiles for sm_80 and sm_90 without spilling, checked on any machine
(``fastformer inspect``, fastformer/compile_report.py).

Its stack frame may hold libdevice's accurate sinf/cosf range reduction, which is not a spill:
spills are read from ``ptxas -v``. Each tile is compiled twice: as Triton sees contiguous tensors
(unit feature stride, 16-byte alignment), which must give 16-byte accesses, and with nothing
known about the strides.
"""

from __future__ import annotations

import pytest

from fastformer import compile_report


@pytest.fixture(scope="module")
def records():
    if compile_report.unpinned_reason():
        pytest.skip(compile_report.unpinned_reason())
    return compile_report.inspect_run(("rotary",)).records


def test_compiles_for_gpus_without_spills(records):
    assert {record["arch"] for record in records} == set(compile_report.TEST_ARCHS)
    assert {record["form"].rsplit(" ", 1)[1] for record in records} == {"aligned", "unaligned"}
    assert compile_report.failures(records) == []


def test_contiguous_llama_heads_move_16_bytes_per_access(records):
    """NeoX and GPT-J styles alike (GPT-J pairs are loaded as one run and split in registers)."""
    llama = [r for r in records if r["form"] in ("llama bf16 aligned", "llama gptj bf16 aligned")]
    assert len(llama) == 2 * len(compile_report.TEST_ARCHS)
    for record in llama:
        assert record["load16"] > 0 and record["store16"] > 0, record
