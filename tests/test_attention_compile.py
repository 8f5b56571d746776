"""The attention kernels compile for sm_90 with wgmma (head_dim <= 128) and without spills, with
the tiles the launchers pick; checked on any machine (see fastformer/compile_report.py)."""

from __future__ import annotations

import pytest

from fastformer import compile_report

SCRIPT = r"""
import json
from fastformer.compile_report import resource_usage, signature_of
from fastformer.kernels import attention_bwd, attention_common, attention_fwd

KERNELS = {
    "fwd": attention_fwd._attn_fwd_kernel,
    "dkdv": attention_bwd._attn_bwd_dkdv_kernel,
    "dq": attention_bwd._attn_bwd_dq_kernel,
}
POINTERS = {"lse_ptr": "fp32", "delta_ptr": "fp32", "dmask_ptr": "fp32", "mask_ptr": "i1",
            "cu_seqlens_q_ptr": "i32", "cu_seqlens_k_ptr": "i32"}
UNIT_STRIDES = ("stride_q_dim", "stride_k_dim", "stride_v_dim", "stride_do_dim", "stride_o_dim",
                "stride_dk_dim", "stride_dq_dim")
results = []
for which, kernel in KERNELS.items():
  for head_dim, tiles in attention_common.GPU_TILES[which].items():
    for tile in tiles:
        config = dict(num_warps=tile.num_warps, num_stages=tile.num_stages)
        constexprs = dict(
            HAS_DROPOUT=False, HAS_WINDOW=False, IS_CAUSAL=True, BOTTOM_RIGHT=False,
            MASK_KIND=0, VARLEN=False, DOT_FP32=False, IEEE=False, BF16_RNE=False,
            BLOCK_M=tile.block_m, BLOCK_N=tile.block_n, BLOCK_D=head_dim,
        )
        if which == "dq":
            constexprs["MASK_GRAD"] = False
        constexprs.update({name: 1 for name in UNIT_STRIDES if name in kernel.arg_names})
        signature = signature_of(
            kernel, constexprs, POINTERS, "bf16",
            float_args=("sm_scale", "sm_scale_log2", "dropout_p"), int64_args=("seed",),
        )
        usage = resource_usage(kernel, signature, constexprs, arch=90,
                               num_warps=config["num_warps"], num_stages=config["num_stages"])
        results.append(dict(kernel=which, head_dim=head_dim, tile=tile.key(), **usage))
print(json.dumps(results))
"""


def test_attention_compiles_for_sm90_with_wgmma_and_no_spills(tmp_path):
    pytest.importorskip("triton.backends.nvidia")
    if compile_report.unpinned_reason():
        pytest.skip(compile_report.unpinned_reason())
    results = compile_report.run_report_script(SCRIPT, tmp_path)
    assert len(results) >= 9
    for row in results:
        assert row["STACK"] == 0 and row["LOCAL"] == 0, row
        if row["head_dim"] <= 128:
            assert row["wgmma"], row


def test_autotuner_offers_each_head_dim_only_its_own_tiles(tmp_path):
    """The GPU autotuner's pruning: a launch tries exactly its head-dim bucket's tiles, once
    each (checked in a process without the interpreter, where the GPU configs exist)."""
    script = r"""
import json
from fastformer.kernels import attention_bwd, attention_common, attention_fwd
out = {}
for which, tuner in (("fwd", attention_fwd._attn_fwd), ("dkdv", attention_bwd._attn_bwd_dkdv),
                     ("dq", attention_bwd._attn_bwd_dq)):
    for head_dim in (16, 72, 128, 160, 256):
        tuner.nargs = {"head_dim": head_dim}
        got = [attention_common._config_key(c) for c in tuner.prune_configs({})]
        bucket = attention_common.head_dim_bucket(head_dim)
        want = [t.key() for t in attention_common.GPU_TILES[which][bucket]]
        out[f"{which}-{head_dim}"] = got == want
print(json.dumps(out))
"""
    results = compile_report.run_report_script(script, tmp_path)
    assert results and all(results.values()), results
