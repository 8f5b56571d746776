"""The rotary benchmark suite: its cases, its byte count, and one checked run on this device."""

from __future__ import annotations

import pytest
import torch

from fastformer.benchmarks import counts, rotary, runner


def test_cases_cover_shapes_dtypes_and_styles(device):
    cases = rotary.rotary_cases(
        device, dtypes=(torch.bfloat16, torch.float16), styles=rotary.STYLES
    )
    shapes = rotary.default_shapes(device)
    assert len(cases) == len(shapes) * 2 * len(rotary.STYLES)
    assert {case.op.split("-")[1] for case in cases} == set(rotary.STYLES)
    gpu_names = {shape.name for shape in rotary.GPU_SHAPES}
    assert {"llama-7b", "llama3-8b", "gpt-neox-20b"} <= gpu_names
    assert min(shape.seqlen for shape in rotary.GPU_SHAPES) >= 4096


def test_rotary_bytes_formula():
    # 2 tokens, 3 + 1 heads of 8 features, bf16, int64 positions, rotary_dim 4.
    n_bytes = counts.rotary_bytes(2, 3, 1, 8, 4, elem_bytes=2, position_bytes=8)
    assert n_bytes == 2 * 4 * 8 * 2 * 2 + 2 * 8 + 2 * 4


def test_bad_style_is_rejected():
    with pytest.raises(ValueError, match="style='rope'"):
        rotary.rotary_case(rotary.CPU_SHAPES[0], style="rope")


@pytest.mark.parametrize("style", rotary.STYLES)
def test_one_case_runs_and_passes_its_check(device, style):
    shape = rotary.RotaryShape("test", 1, 8, 2, 1, 16, 8)
    case = rotary.rotary_case(shape, torch.bfloat16, style)
    rows = runner.run_cases(
        [case], modes=("fwd+bwd",), providers=(runner.EAGER, runner.FASTFORMER), device=device
    )
    assert [row.provider for row in rows] == [runner.EAGER, runner.FASTFORMER]
    assert all(row.ok for row in rows), [row.detail for row in rows]
