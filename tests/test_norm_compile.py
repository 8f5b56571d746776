"""The norm kernels compile for sm_80 and sm_90 without spills and within shared memory, with
every tile the launcher can size: every power-of-two width up to the fused limits (16384 columns
forward, 8192 backward; 4096 where the launch is not 16-byte aligned) and the looping kernels,
each with the aligned sizing and the unaligned one; checked on any machine (``fastformer
inspect``, fastformer/compile_report.py).

Aligned forms (hidden sizes that are multiples of 16, as in models) must also move 16 bytes
per global load and store: the norms are memory-bound.
"""

from __future__ import annotations

import pytest

from fastformer import compile_report

_FORM = "LayerNorm+residual bf16"


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
    # Both sizings at every width, the widest fused tiles included.
    configs = {(record["kernel"], record["config"], record["form"]) for record in records}
    assert ("_norm_bwd_kernel", "8192 cols: 1x8192 w16", f"{_FORM} aligned") in configs
    assert ("_norm_bwd_kernel", "4096 cols: 1x4096 w16", f"{_FORM} odd width") in configs
    assert ("_norm_fwd_kernel", "16384 cols: 1x16384 w16", f"{_FORM} odd width") in configs
    assert len(records) >= 2 * (11 + 10 + 15 + 13 + 4)
    assert compile_report.failures(records) == []


def test_aligned_norms_move_16_bytes_per_access(records):
    aligned = [record for record in records if record["form"].endswith("aligned")]
    assert aligned
    for record in aligned:
        assert record["load16"] > 0 and record["store16"] > 0, record


def test_launches_take_the_sizing_their_specialisation_was_compiled_with():
    """Only launches that Triton specialises as the aligned form (width, row strides and pointers
    multiples of 16, unit column strides) take the aligned sizing; any other takes the unaligned
    one, whose tiles the compile test holds to no spills without any alignment known."""
    import torch

    from fastformer.kernels import _runtime, norm_sizing

    def sizing(x, weight=None):
        return norm_sizing.sizing(x.shape[-1], (_runtime.as_rows(x, 1),), (weight,))

    x = torch.randn(6, 4, 64)
    assert sizing(x, torch.randn(64)) is norm_sizing.ALIGNED_SIZING
    assert sizing(x.transpose(0, 1)) is norm_sizing.ALIGNED_SIZING  # row strides 256 and 64
    unaligned = [
        torch.randn(6, 1000),  # width (and row stride) not a multiple of 16
        torch.randn(6, 65)[:, :64],  # row stride 65
        torch.randn(6, 65)[:, 1:],  # pointer 4 bytes past an aligned one
        torch.randn(64, 6).t(),  # column stride 6
        torch.randn(6, 7),
    ]
    for tensor in unaligned:
        assert sizing(tensor) is norm_sizing.UNALIGNED_SIZING, tensor.stride()
    assert sizing(x, torch.randn(128)[::2]) is norm_sizing.UNALIGNED_SIZING  # strided weight
    assert (
        norm_sizing.UNALIGNED_SIZING.max_fused_cols_bwd
        < norm_sizing.ALIGNED_SIZING.max_fused_cols_bwd
    )
