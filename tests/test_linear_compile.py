"""The feed-forward kernels compile for sm_80 and sm_90 without spills, within shared memory and
on tensor cores (wgmma on sm_90 for forward tiles of 64 rows or more), on any machine.

Triton's interpreter accepts code that the GPU compiler rejects or spills; ``fastformer
inspect`` (run in a separate process, without TRITON_INTERPRET) compiles, for each
architecture, every autotuning candidate its launches may try (``linear.gpu_tiles``: per kernel,
form and compute capability) of every kernel and form (fastformer/profiling/catalogue_matmul.py)
and reads the compiler's figures. Arguments are specialized as the launcher's JIT specializes
them at model shapes: unit strides are constants, pointers, sizes and row strides multiples of
16. The int64-offset and identity forms must compile; they may spill.
"""

from __future__ import annotations

from collections import defaultdict

import pytest

from fastformer import compile_report


@pytest.fixture(scope="module")
def records():
    if compile_report.unpinned_reason():
        pytest.skip(compile_report.unpinned_reason())
    return compile_report.inspect_run(("linear",)).records


def test_compiles_for_sm80_and_sm90_with_tensor_cores_and_no_spills(records):
    assert {record["arch"] for record in records} == set(compile_report.TEST_ARCHS)
    kernels = {record["kernel"] for record in records}
    assert kernels == {"_linear_fwd_kernel", "_linear_bwd_dx_kernel", "_linear_bwd_dw_kernel"}
    assert any(record["wgmma_expected"] for record in records)
    assert compile_report.failures(records) == []


def test_each_architecture_compiles_exactly_the_tiles_its_launches_try(records):
    """Per architecture, kernel and form, the compiled tiles are ``gpu_tiles`` (the table of
    where tiles spill), in order: sm_80 tries neither 128 x 128 nor 128 x 64 in the plain dW,
    nor 128 x 128 in dx; sm_90 keeps them but the dW's 128 x 128; no gated form has 128 x 128."""
    from fastformer.kernels import linear

    compiled = defaultdict(list)
    for record in records:
        if not record["form"].startswith("int64"):  # these: the default tile only
            key = (record["kernel"], record["form"], record["arch"])
            compiled[key].append(record["config"].split()[0])
    assert len(compiled) >= 2 * 10
    for (kernel, form, arch), configs in compiled.items():
        tiles = linear.gpu_tiles(kernel, "gated" in form, int(arch.removeprefix("sm_")))
        assert configs == [f"{t.block_m}x{t.block_n}x{t.block_k}" for t in tiles], (kernel, form)

    dw, dx = "_linear_bwd_dw_kernel", "_linear_bwd_dx_kernel"
    assert compiled[dw, "gelu bf16", "sm_80"] == ["64x128x64", "64x64x64", "32x128x64", "16x64x128"]
    assert compiled[dw, "gelu bf16", "sm_90"][0] == "128x64x64"
    assert compiled[dx, "gelu bf16", "sm_80"][0] == "128x64x64"
    assert compiled[dx, "gelu bf16", "sm_90"][0] == "128x128x64"
    for arch in compile_report.TEST_ARCHS:
        assert "128x128x64" not in compiled[dx, "gated gelu bf16", arch]
        assert compiled["_linear_fwd_kernel", "gelu+bias bf16", arch][0] == "128x128x64"


def test_autotuner_offers_each_launch_only_its_gpus_tiles(tmp_path):
    """The GPU autotuner's pruning: a launch tries ``gpu_tiles`` of its kernel, form and GPU
    (checked in a process without the interpreter, where the GPU configs exist; the compute
    capability is read off the launch's first tensor, here answered for a CPU one)."""
    if compile_report.unpinned_reason():
        pytest.skip(compile_report.unpinned_reason())
    script = r"""
import json
import torch
from fastformer.kernels import linear, linear_tiles
answer = {}
torch.cuda.get_device_capability = lambda device=None: answer["capability"]
out = {}
for tuner in (linear._fwd, linear._bwd_dx, linear._bwd_dw):
    name = tuner.base_fn.__name__
    for major in (8, 9):
        answer["capability"] = (major, 0)
        for gated in (False, True):
            tuner.nargs = {tuner.arg_names[0]: torch.empty(1)}
            got = [linear_tiles.config_id(c) for c in tuner.prune_configs({"IS_GATED": gated})]
            tiles = linear.gpu_tiles(name, gated, 10 * major)
            want = [linear_tiles.config_id(tile.config()) for tile in tiles]
            out[f"{name} sm_{major}0 gated={gated}"] = got == want and len(got) >= 4
print(json.dumps(out))
"""
    results = compile_report.run_report_script(script, tmp_path)
    assert len(results) == 12 and all(results.values()), results
