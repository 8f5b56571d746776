"""The decode kernels compile for sm_80 and sm_90 without spills, within shared memory, and (bf16
decode attention) on tensor cores, with every tile the autotuner may pick; checked on any
machine (``fastformer inspect``, fastformer/compile_report.py).

Compiled as the launcher specialises aligned caches (16-byte aligned pointers, head_dim and
strides multiples of 16, unit feature strides): what models with contiguous caches launch.
Forms (fastformer/profiling/catalogue_decode.py): every bf16 GPU tile of each head-dim bucket at
query tiles of 16, 32 and MAX_BLOCK_M rows writing fp32 partials, paged and one-split (bf16 output)
forms on the default tile, every fp32 tile dense and paged; the combine kernel; the append
kernel with NeoX and GPT-J rotation and as a copy.
"""

from __future__ import annotations

import pytest

from fastformer import compile_report


@pytest.fixture(scope="module")
def records():
    if compile_report.unpinned_reason():
        pytest.skip(compile_report.unpinned_reason())
    return compile_report.inspect_run(("decode",)).records


def test_decode_kernels_compile_for_sm80_and_sm90_without_spills(records):
    assert {record["arch"] for record in records} == set(compile_report.TEST_ARCHS)
    kernels = {record["kernel"] for record in records}
    assert kernels == {"_decode_attn_kernel", "_decode_combine_kernel", "_kv_append_kernel"}
    assert compile_report.failures(records) == []


def test_decode_runs_on_tensor_cores(records):
    """The query tile is padded to 16 rows so that q k^T and p v run on mma/wgmma (bf16; fp32
    products run on CUDA cores at full precision)."""
    bf16 = [r for r in records if r["kernel"] == "_decode_attn_kernel" and "bf16" in r["form"]]
    assert len(bf16) >= 3 * 2 * 2 * len(compile_report.TEST_ARCHS)
    assert all(record["matmul"] and record["mma"] + record["wgmma"] > 0 for record in bf16)


def test_kv_append_moves_16_bytes_per_access(records):
    append = [r for r in records if r["kernel"] == "_kv_append_kernel"]
    assert append
    for record in append:
        assert record["load16"] > 0 and record["store16"] > 0, record


def test_autotuner_offers_each_call_only_its_own_tiles(tmp_path):
    """The GPU autotuner's pruning: a launch tries exactly its head-dim bucket's tiles for its
    precision (checked in a process without the interpreter, where the GPU configs exist)."""
    if compile_report.unpinned_reason():
        pytest.skip(compile_report.unpinned_reason())
    script = r"""
import json
from fastformer.kernels import attention_common, decode
out = {}
tuner = decode._decode_attn
for ieee, table in ((False, decode.GPU_TILES), (True, decode.FP32_TILES)):
    for head_dim in (16, 72, 128, 160, 256):
        tuner.nargs = {"head_dim": head_dim}
        got = [(c.kwargs["BLOCK_N"], c.num_warps, c.num_stages)
               for c in tuner.prune_configs({"IEEE": ieee})]
        want = table[attention_common.head_dim_bucket(head_dim)]
        out[f"ieee={ieee}-{head_dim}"] = sorted(got) == sorted(want)
print(json.dumps(out))
"""
    results = compile_report.run_report_script(script, tmp_path)
    assert results and all(results.values()), results
