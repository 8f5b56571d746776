"""The attention kernels compile for sm_80 and sm_90 without spills and within shared memory,
in every form a launch can take (causal, windowed, packed, dropout, bool mask, float mask with
its gradient, all flags at once; fp32 causal and with all flags), with every tile the autotuner
may pick for that form on each architecture (``attention_common.gpu_tiles`` of the form's
``tile_form``), on tensor cores for fp16/bf16 and with wgmma on sm_90 for the plain forms at
head_dim <= 128; checked on any machine (``fastformer inspect``, fastformer/compile_report.py).
No record is exempt: a spill in any form fails."""

from __future__ import annotations

from collections import defaultdict

import pytest

from fastformer import compile_report

KERNELS = {
    "_attn_fwd_kernel": "fwd",
    "_attn_bwd_dkdv_kernel": "dkdv",
    "_attn_bwd_dq_kernel": "dq",
}


@pytest.fixture(scope="module")
def records():
    if compile_report.unpinned_reason():
        pytest.skip(compile_report.unpinned_reason())
    return compile_report.inspect_run(("attention",)).records


def _tile_form(form: str) -> str:
    from fastformer.kernels import attention_common
    from fastformer.profiling import catalogue_matmul

    dtype, flags = catalogue_matmul.attention_form_flags(form)
    return attention_common.tile_form(
        fp32=dtype == "fp32",
        mask_kind=flags["MASK_KIND"],
        dropout=flags["HAS_DROPOUT"],
        mask_grad=flags.get("MASK_GRAD", False),
    )


def test_attention_compiles_for_sm80_and_sm90_in_every_form_without_spills(records):
    from fastformer.profiling import catalogue_matmul

    assert {record["arch"] for record in records} == set(compile_report.TEST_ARCHS)
    forms = set(catalogue_matmul.ATTENTION_FORMS)
    want = {
        "causal bf16", "window bf16", "varlen bf16", "dropout bf16", "bool mask bf16",
        "float mask+grad bf16", "all flags bf16", "causal fp32",
    }  # fmt: skip
    assert want <= forms
    for kernel in KERNELS:
        for arch in compile_report.TEST_ARCHS:
            seen = {r["form"] for r in records if r["kernel"] == kernel and r["arch"] == arch}
            assert seen == forms, (kernel, arch)
    assert {_tile_form(form) for form in forms} == {"plain", "heavy", "fp32"}
    # wgmma is held to where it is meant: plain bf16 forms at head_dim <= 128 on sm_90.
    expected = {(r["form"], r["config"].split(":")[0]) for r in records if r["wgmma_expected"]}
    assert ("causal bf16", "d128") in expected and ("causal bf16", "d256") not in expected
    assert all(_tile_form(form) == "plain" for form, _ in expected)
    assert compile_report.failures(records) == []


def test_each_architecture_compiles_exactly_the_tiles_its_launches_try(records):
    """Per form, kernel, head-dim bucket and architecture: the tiles ``gpu_tiles`` offers for
    the form's tile list, at least one each."""
    from fastformer.kernels import attention_common

    compiled = defaultdict(list)
    for record in records:
        if record["kernel"] != "_dropout_mask_kernel":
            bucket, tile = record["config"].split(": ")
            key = (record["kernel"], record["form"], int(bucket[1:]), record["arch"])
            compiled[key].append(tile)
    forms = {form for _, form, _, _ in compiled}
    assert len(compiled) == len(KERNELS) * len(forms) * 3 * len(compile_report.TEST_ARCHS)
    for (kernel, form, head_dim, arch), tiles in compiled.items():
        capability = int(arch.removeprefix("sm_"))
        want = attention_common.gpu_tiles(KERNELS[kernel], head_dim, capability, _tile_form(form))
        assert want, (kernel, form, head_dim, arch)
        assert tiles == [f"{t.block_m}x{t.block_n} w{t.num_warps} s{t.num_stages}" for t in want]
    assert "64x64 w8 s2" in compiled["_attn_bwd_dkdv_kernel", "causal bf16", 64, "sm_90"]
    assert "64x64 w8 s2" not in compiled["_attn_bwd_dkdv_kernel", "causal bf16", 64, "sm_80"]


def test_autotuner_offers_each_form_head_dim_and_gpu_only_its_own_tiles(tmp_path):
    """The GPU autotuner's pruning: a launch tries exactly its tile form's and head-dim bucket's
    tiles for its GPU, once each (checked in a process without the interpreter, where the GPU
    configs exist; the compute capability is read off the launch's first tensor, here answered
    for a CPU one; the form off the launch's flags)."""
    if compile_report.unpinned_reason():
        pytest.skip(compile_report.unpinned_reason())
    script = r"""
import json
import torch
from fastformer.kernels import attention_bwd, attention_common, attention_fwd
answer = {}
torch.cuda.get_device_capability = lambda device=None: answer["capability"]
launches = {
    "plain": dict(IS_CAUSAL=True, HAS_WINDOW=True, VARLEN=True, MASK_KIND=0, IEEE=False),
    "heavy": dict(HAS_DROPOUT=True, MASK_KIND=0, IEEE=False),
    "heavy-bool": dict(MASK_KIND=1, IEEE=False),
    "heavy-grad": dict(MASK_KIND=2, MASK_GRAD=True, IEEE=False),
    "fp32": dict(MASK_KIND=0, IEEE=True),
    "fp32-heavy": dict(MASK_KIND=2, HAS_DROPOUT=True, IEEE=True),
}
out = {}
for which, tuner in (("fwd", attention_fwd._attn_fwd), ("dkdv", attention_bwd._attn_bwd_dkdv),
                     ("dq", attention_bwd._attn_bwd_dq)):
    for name, kwargs in launches.items():
        form = name.split("-")[0]
        for major in (8, 9):
            answer["capability"] = (major, 0)
            for head_dim in (16, 72, 128, 160, 256):
                tuner.nargs = {"q_ptr": torch.empty(1), "head_dim": head_dim}
                got = [attention_common._config_key(c) for c in tuner.prune_configs(kwargs)]
                bucket = attention_common.head_dim_bucket(head_dim)
                want = [t.key() for t in attention_common.GPU_TILES[form][which][bucket]
                        if t.tried_on(10 * major)]
                out[f"{which}-{name}-{head_dim}-sm_{major}0"] = [got == want, len(got)]
print(json.dumps(out))
"""
    results = compile_report.run_report_script(script, tmp_path)
    assert len(results) == 3 * 6 * 2 * 5, results
    assert all(ok and count >= 1 for ok, count in results.values()), results
    assert results["dkdv-plain-16-sm_80"][1] == 1 and results["dkdv-plain-16-sm_90"][1] == 3
    # fp32 dk/dv at head_dim 256: one tile per architecture, disjoint.
    assert results["dkdv-fp32-256-sm_80"][1] == results["dkdv-fp32-256-sm_90"][1] == 1
