"""The attention kernels compile for sm_80 and sm_90 on tensor cores (wgmma on sm_90 for
head_dim <= 128), without spills and within shared memory, with every tile the autotuner may
pick on each (``attention_common.gpu_tiles``); checked on any machine (``fastformer inspect``,
fastformer/compile_report.py)."""

from __future__ import annotations

from collections import defaultdict

import pytest

from fastformer import compile_report


@pytest.fixture(scope="module")
def records():
    if compile_report.unpinned_reason():
        pytest.skip(compile_report.unpinned_reason())
    return compile_report.inspect_run(("attention",)).records


def test_attention_compiles_for_sm80_and_sm90_with_wgmma_and_no_spills(records):
    assert {record["arch"] for record in records} == set(compile_report.TEST_ARCHS)
    kernels = {record["kernel"] for record in records}
    assert {"_attn_fwd_kernel", "_attn_bwd_dkdv_kernel", "_attn_bwd_dq_kernel"} <= kernels
    # Every head-dim bucket's tiles, forward and backward, per architecture.
    assert sum(record["kernel"] == "_attn_fwd_kernel" for record in records) >= 2 * 3
    assert any(record["wgmma_expected"] for record in records)
    assert compile_report.failures(records) == []


def test_each_architecture_compiles_exactly_the_tiles_its_launches_try(records):
    """dk/dv's 64 x 64 at head_dim 64 spills before sm_90: only sm_90 compiles (and tries) it."""
    from fastformer.kernels import attention_common

    compiled = defaultdict(list)
    for record in records:
        if record["kernel"] != "_dropout_mask_kernel":
            bucket, tile = record["config"].split(": ")
            compiled[record["kernel"], int(bucket[1:]), record["arch"]].append(tile)
    which = {
        "_attn_fwd_kernel": "fwd",
        "_attn_bwd_dkdv_kernel": "dkdv",
        "_attn_bwd_dq_kernel": "dq",
    }
    assert len(compiled) == 3 * 3 * len(compile_report.TEST_ARCHS)
    for (kernel, head_dim, arch), tiles in compiled.items():
        want = attention_common.gpu_tiles(which[kernel], head_dim, int(arch.removeprefix("sm_")))
        assert tiles == [f"{t.block_m}x{t.block_n} w{t.num_warps} s{t.num_stages}" for t in want]
    assert "64x64 w8 s2" in compiled["_attn_bwd_dkdv_kernel", 64, "sm_90"]
    assert "64x64 w8 s2" not in compiled["_attn_bwd_dkdv_kernel", 64, "sm_80"]


def test_autotuner_offers_each_head_dim_and_gpu_only_its_own_tiles(tmp_path):
    """The GPU autotuner's pruning: a launch tries exactly its head-dim bucket's tiles for its
    GPU, once each (checked in a process without the interpreter, where the GPU configs exist;
    the compute capability is read off the launch's first tensor, here answered for a CPU one)."""
    if compile_report.unpinned_reason():
        pytest.skip(compile_report.unpinned_reason())
    script = r"""
import json
import torch
from fastformer.kernels import attention_bwd, attention_common, attention_fwd
answer = {}
torch.cuda.get_device_capability = lambda device=None: answer["capability"]
out = {}
for which, tuner in (("fwd", attention_fwd._attn_fwd), ("dkdv", attention_bwd._attn_bwd_dkdv),
                     ("dq", attention_bwd._attn_bwd_dq)):
    for major in (8, 9):
        answer["capability"] = (major, 0)
        for head_dim in (16, 72, 128, 160, 256):
            tuner.nargs = {"q_ptr": torch.empty(1), "head_dim": head_dim}
            got = [attention_common._config_key(c) for c in tuner.prune_configs({})]
            bucket = attention_common.head_dim_bucket(head_dim)
            want = [t.key() for t in attention_common.GPU_TILES[which][bucket]
                    if 10 * major >= t.min_capability]
            out[f"{which}-{head_dim}-sm_{major}0"] = [got == want, len(got)]
print(json.dumps(out))
"""
    results = compile_report.run_report_script(script, tmp_path)
    assert len(results) == 3 * 2 * 5 and all(ok for ok, _ in results.values()), results
    assert results["dkdv-16-sm_80"][1] == 2 and results["dkdv-16-sm_90"][1] == 3
