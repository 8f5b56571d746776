"""The feed-forward kernels compile for sm_90 with wgmma and without spills, on any machine.

Triton's interpreter accepts code that the GPU compiler rejects or spills; this compiles every
autotuning candidate of every kernel and form for sm_90 in a separate process (without
TRITON_INTERPRET) and reads the cubin's resource usage with the cuobjdump shipped in Triton's
wheel. Arguments are specialized as the launcher's JIT specializes them at model shapes: unit
strides are constants, pointers, sizes and row strides multiples of 16.
"""

from __future__ import annotations

import pytest

from fastformer import compile_report

SCRIPT = r"""
import json
from fastformer.compile_report import resource_usage
from fastformer.kernels import linear

UNIT_STRIDES = ("stride_x_k", "stride_w_k", "stride_w_up_k", "stride_b_n", "stride_dy_n")


def compile_for_sm90(kernel, flags, tile):
    constexprs = dict(dict(INT64_OFFSETS=False), **flags, DOT_FP32=False, INPUT_PRECISION="tf32",
                      BF16_RNE=False, BLOCK_M=tile.block_m, BLOCK_N=tile.block_n,
                      BLOCK_K=tile.block_k)
    constexprs.update({name: 1 for name in UNIT_STRIDES if name in kernel.arg_names})
    signature, attrs = {}, {}
    for i, name in enumerate(kernel.arg_names):
        if name in constexprs:
            signature[name] = "constexpr"
            continue
        signature[name] = "*bf16" if name.endswith("_ptr") else "i32"
        if "inner" not in name and "outer" not in name:
            attrs[(i,)] = [["tt.divisibility", 16]]
    return resource_usage(kernel, signature, constexprs, arch=90, num_warps=tile.num_warps,
                          num_stages=tile.num_stages, attrs=attrs)


FWD = dict(ACTIVATION="gelu", IS_GATED=False, HAS_BIAS=True, STORE_PRE=False)
VARIANTS = {
    "fwd_gelu": (linear._linear_fwd_kernel, FWD),
    "fwd_gated_silu_store": (linear._linear_fwd_kernel,
                             dict(FWD, ACTIVATION="silu", IS_GATED=True, HAS_BIAS=False,
                                  STORE_PRE=True)),
    "dx_gated_silu": (linear._linear_bwd_dx_kernel, dict(ACTIVATION="silu", IS_GATED=True)),
    "dw_gated_silu": (linear._linear_bwd_dw_kernel,
                      dict(ACTIVATION="silu", IS_GATED=True, COMPUTE_DB=False)),
    "dw_gelu_db": (linear._linear_bwd_dw_kernel,
                   dict(ACTIVATION="gelu", IS_GATED=False, COMPUTE_DB=True)),
}
# The int64-offset variants (tensors past 2**31 elements) and the identity activation must
# compile too; they may spill, so they are checked on one tile for compiling only.
COMPILES = {
    "fwd_int64_gated": (linear._linear_fwd_kernel,
                        dict(FWD, IS_GATED=True, HAS_BIAS=False, INT64_OFFSETS=True)),
    "dx_int64_none": (linear._linear_bwd_dx_kernel,
                      dict(ACTIVATION=None, IS_GATED=False, INT64_OFFSETS=True)),
    "dw_int64_none_db": (linear._linear_bwd_dw_kernel,
                         dict(ACTIVATION=None, IS_GATED=False, COMPUTE_DB=True,
                              INT64_OFFSETS=True)),
}
results = {}
for tile in linear._GPU_TILES:
    for name, (kernel, flags) in VARIANTS.items():
        if tile.plain_only and flags.get("IS_GATED"):
            continue
        key = f"{name}_{tile.block_m}x{tile.block_n}x{tile.block_k}_w{tile.num_warps}"
        results[key] = dict(compile_for_sm90(kernel, flags, tile), block_m=tile.block_m)
for name, (kernel, flags) in COMPILES.items():
    compile_for_sm90(kernel, flags, linear._GPU_TILES[0])
print(json.dumps(results))
"""


def test_compiles_for_sm90_with_wgmma_and_no_spills(tmp_path):
    pytest.importorskip("triton.backends.nvidia")
    if compile_report.unpinned_reason():
        pytest.skip(compile_report.unpinned_reason())
    results = compile_report.run_report_script(SCRIPT, tmp_path)
    for name, usage in results.items():
        assert usage["STACK"] == 0 and usage["LOCAL"] == 0, (name, usage)
        # A warpgroup's wgmma covers 64 rows: tiles of 64 rows or more must use it.
        if name.startswith("fwd") and usage["block_m"] >= 64:
            assert usage["wgmma"], (name, usage)


def test_gated_launches_never_take_plain_only_tiles():
    from fastformer.kernels import linear

    configs = [tile.config() for tile in linear._GPU_TILES]
    gated = linear._prune_for_form(configs, {}, IS_GATED=True)
    plain = linear._prune_for_form(configs, {}, IS_GATED=False)
    assert plain == configs and gated
    assert all(linear._config_id(config) not in linear._PLAIN_ONLY for config in gated)
