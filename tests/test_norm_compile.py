"""The norm kernels compile for sm_90 without spills at the widths the launchers hold in
registers (16384 columns forward, 8192 backward) and in the looping kernels; checked on any
machine (see fastformer/compile_report.py)."""

from __future__ import annotations

import pytest

from fastformer import compile_report

SCRIPT = r"""
import json
from fastformer.compile_report import resource_usage, signature_of
from fastformer.kernels import norm

FP32 = {"mean_ptr": "fp32", "rstd_ptr": "fp32", "dw_partial_ptr": "fp32", "db_partial_ptr": "fp32"}
UNIT = ("stride_x_col", "stride_res_col", "stride_w_col", "stride_b_col", "stride_dy_col",
        "stride_dh_col")
FWD = dict(IS_RMS=False, HAS_RES=True, HAS_WEIGHT=True, HAS_BIAS=True, BF16_RNE=False)
BWD = dict(IS_RMS=False, HAS_DH=True, HAS_WEIGHT=True, COMPUTE_DW=True, COMPUTE_DB=True,
           BF16_RNE=False)
cases = {}
for n_cols in (1024, 4096, norm.MAX_FUSED_COLS):
    block_m, block_n, warps = norm._fused_config(n_cols)
    blocks = dict(BLOCK_M=block_m, BLOCK_N=block_n)
    cases[f"fwd_{n_cols}"] = (norm._norm_fwd_kernel, dict(FWD, **blocks), warps)
for n_cols in (1024, norm.MAX_FUSED_COLS_BWD):
    block_m, block_n, warps = norm._fused_config(n_cols)
    blocks = dict(BLOCK_M=block_m, BLOCK_N=block_n)
    cases[f"bwd_{n_cols}"] = (norm._norm_bwd_kernel, dict(BWD, **blocks), warps)
cases["fwd_long"] = (norm._norm_fwd_long_row_kernel, dict(FWD, BLOCK_N=norm.LONG_ROW_BLOCK),
                     norm._long_row_warps())
cases["bwd_long"] = (norm._norm_bwd_long_row_kernel, dict(BWD, BLOCK_N=norm.LONG_ROW_BLOCK),
                     norm._long_row_warps())
results = {}
for name, (kernel, constexprs, warps) in cases.items():
    constexprs = dict(constexprs, **{s: 1 for s in UNIT if s in kernel.arg_names})
    signature = signature_of(kernel, constexprs, FP32, "bf16", float_args=("eps",))
    results[name] = resource_usage(kernel, signature, constexprs, arch=90, num_warps=warps)
print(json.dumps(results))
"""


def test_norms_compile_for_sm90_without_spills(tmp_path):
    pytest.importorskip("triton.backends.nvidia")
    if compile_report.unpinned_reason():
        pytest.skip(compile_report.unpinned_reason())
    results = compile_report.run_report_script(SCRIPT, tmp_path)
    assert len(results) == 7
    for name, usage in results.items():
        assert usage["STACK"] == 0 and usage["LOCAL"] == 0, (name, usage)
