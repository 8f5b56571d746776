"""The decode kernels compile for sm_90 without spills, within shared memory, on tensor cores,
with every tile the autotuner may pick; checked on any machine (fastformer/compile_report.py).

Compiled as the launcher specialises aligned caches (16-byte aligned pointers, head_dim and
strides multiples of 16, unit feature strides): what models with contiguous caches launch.
Forms: every GPU tile of each head-dim bucket at every query tile (16 to MAX_BLOCK_M rows), dense
and paged, writing fp32 partials (split) or the bf16 output (one split); fp32 inputs; the
combine kernel; the append kernel without rotary, NeoX and GPT-J.
"""

from __future__ import annotations

import pytest

from fastformer import compile_report

# Largest dynamic shared memory per block on sm_90 (227 KiB).
SM90_SHARED_LIMIT = 232448

SCRIPT = r"""
import itertools
import json
import triton
from fastformer.compile_report import compile_kernel, signature_of
from fastformer.kernels import decode, kv_cache

ALIGNED_INTS = ("head_dim", "capacity")
FLOATS = ("sm_scale_log2", "attention_scaling")


def build(kernel, constexprs, pointers, default, warps, stages):
    signature = signature_of(kernel, constexprs, pointers, default, float_args=FLOATS)
    names = list(kernel.arg_names)
    attrs = {
        (names.index(name),): [["tt.divisibility", 16]]
        for name, kind in signature.items()
        if kind != "constexpr"
        and (name.endswith("_ptr") or name.startswith("stride") or name in ALIGNED_INTS)
    }
    b = compile_kernel(kernel, signature, constexprs, arch=90, num_warps=warps,
                       num_stages=stages, attrs=attrs)
    cores = sum(int(getattr(b, name, 0)) for name in ("mma", "wgmma", "hmma", "hgmma"))
    return dict(regs=b.regs, spills=bool(b.spills), shared=b.shared_total, tensor_cores=cores)


records = []
unit = {name: 1 for name in decode._decode_attn_kernel.arg_names if name.endswith("_dim")
        and name.startswith("stride")}
half_rows = (16, 32, decode.MAX_BLOCK_M)
FORMS = [  # (tiles, input dtype, output dtype (fp32: split partials), paged, BLOCK_M values)
    (decode.GPU_TILES, "bf16", "fp32", False, half_rows),
    (decode.GPU_TILES, "bf16", "fp32", True, half_rows),
    (decode.GPU_TILES, "bf16", "bf16", False, half_rows),
    (decode.FP32_TILES, "fp32", "fp32", False, (decode.MAX_BLOCK_M_FP32,)),
    (decode.FP32_TILES, "fp32", "fp32", True, (decode.MAX_BLOCK_M_FP32,)),
]
for table, dtype, out, paged, block_ms in FORMS:
    for block_m, (head_dim, tiles) in itertools.product(block_ms, table.items()):
        for block_n, warps, stages in tiles:
            constexprs = dict(PAGED=paged, DOT_FP32=False, IEEE=dtype == "fp32", BF16_RNE=False,
                              BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=head_dim, **unit)
            pointers = {"seqlens_ptr": "i32", "block_table_ptr": "i32", "lse_ptr": "fp32",
                        "o_ptr": out}
            row = build(decode._decode_attn_kernel, constexprs, pointers, dtype, warps, stages)
            records.append(dict(kernel="decode", head_dim=head_dim, dtype=dtype, out=out,
                                paged=paged, tile=[block_m, block_n, warps, stages], **row))
for head_dim in decode.GPU_TILES:
    block_s = min(decode.MAX_SPLITS, decode.COMBINE_TILE // head_dim)
    constexprs = dict(HAS_LSE=True, BF16_RNE=False, BLOCK_S=block_s, BLOCK_D=head_dim,
                      stride_o_dim=1)
    pointers = {"o_part_ptr": "fp32", "lse_part_ptr": "fp32", "lse_ptr": "fp32"}
    row = build(decode._decode_combine_kernel, constexprs, pointers, "bf16", 4, 1)
    records.append(dict(kernel="combine", head_dim=head_dim, tile=[block_s], **row))
for head_dim in (64, 128, 256):
    for rotary in (None, "neox", "gptj"):
        half = head_dim // 2 if rotary else 0
        block_t, block_h, block_d, block_half, block_pass = kv_cache.append_tiles(
            4096, 8, head_dim, half)
        constexprs = dict(HAS_ROTARY=rotary is not None, HAS_NEW_SEQLENS=False, PAGED=False,
                          INTERLEAVED=rotary == "gptj", COPY_PASS=False, BF16_RNE=False,
                          BLOCK_T=block_t, BLOCK_H=block_h, BLOCK_D=block_d,
                          BLOCK_HALF=block_half, BLOCK_PASS=block_pass,
                          stride_kn_dim=1, stride_vn_dim=1, stride_kc_dim=1, stride_vc_dim=1)
        pointers = {"seqlens_ptr": "i32", "new_seqlens_ptr": "i32", "block_table_ptr": "i32",
                    "inv_freq_ptr": "fp32"}
        row = build(kv_cache._kv_append_kernel, constexprs, pointers, "bf16",
                    kv_cache.NUM_WARPS, 1)
        records.append(dict(kernel="append", head_dim=head_dim, rotary=rotary, **row))
print(json.dumps(records))
"""


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    if compile_report.unpinned_reason():
        pytest.skip(compile_report.unpinned_reason())
    if not hasattr(compile_report, "compile_kernel"):
        pytest.skip("this compile_report has no compile_kernel")
    return compile_report.run_report_script(SCRIPT, tmp_path_factory.mktemp("decode_compile"))


def test_decode_kernels_compile_for_sm90_without_spills(records):
    kernels = {record["kernel"] for record in records}
    assert kernels == {"decode", "combine", "append"}
    failed = [str(record) for record in records if record["spills"]]
    assert not failed, "spills: " + "; ".join(failed)
    too_big = [str(record) for record in records if record["shared"] > SM90_SHARED_LIMIT]
    assert not too_big, "over sm_90's shared memory: " + "; ".join(too_big)


def test_decode_runs_on_tensor_cores(records):
    """The query tile is padded to 16 rows so that q k^T and p v run on mma/wgmma."""
    decode = [r for r in records if r["kernel"] == "decode" and r["dtype"] != "fp32"]
    assert len(decode) >= 3 * 2 * 3 * 3
    without = [str(record) for record in decode if record["tensor_cores"] == 0]
    assert not without, "; ".join(without)


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
