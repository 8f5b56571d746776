"""The rotary kernel compiles for sm_90 and sm_80 without spilling, checked on any machine.

Triton's interpreter accepts code that the GPU compiler rejects or spills; this compiles the
kernel for GPU targets in a separate process (without TRITON_INTERPRET) and reads the cubin's
resource usage with the cuobjdump shipped in Triton's wheel. The only stack allowed is what
libdevice's accurate sinf/cosf take for their large-argument range reduction, measured on a
kernel that does nothing else. Each tile is compiled twice: as Triton sees contiguous tensors
(unit feature stride, 16-byte alignment), which must give 16-byte accesses, and with nothing
known about the strides.
"""

from __future__ import annotations

import json

import pytest

from fastformer import compile_report

SCRIPT = r"""
import json, sys
import triton, triton.language as tl
from fastformer.compile_report import resource_usage
from fastformer.kernels import rotary

CONSTEXPRS = {"HAS_POSITION_IDS", "INTERLEAVED", "CONJUGATE", "COPY_PASS", "BF16_RNE",
              "BLOCK_T", "BLOCK_H", "BLOCK_HALF", "BLOCK_PASS"}


@triton.jit
def _trig_only(x_ptr, y_ptr, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offs)
    tl.store(y_ptr + offs, tl.sin(x) + tl.cos(x))


def usage(fn, signature, constexprs, arch, attrs=None):
    result = resource_usage(fn, signature, constexprs, arch=arch, num_warps=rotary.NUM_WARPS,
                            attrs=attrs)
    result["V4"] = result.pop("v4")
    return result


def signature(dtype):
    sig = {}
    for name in rotary._rotary_fwd_kernel.arg_names:
        if name in CONSTEXPRS:
            sig[name] = "constexpr"
        elif name in ("q_ptr", "k_ptr", "q_out_ptr", "k_out_ptr"):
            sig[name] = "*" + dtype
        elif name == "inv_freq_ptr":
            sig[name] = "*fp32"
        elif name == "pos_ptr":
            sig[name] = "*i64"
        elif name == "attention_scaling":
            sig[name] = "fp32"
        else:
            sig[name] = "i64" if name.startswith("stride") or name == "offset" else "i32"
    return sig


def aligned(sig, constexprs):
    # What Triton sees for contiguous tensors of 16-byte multiples: unit feature strides, the
    # pointers, sizes and other strides divisible by 16.
    sig = dict(sig)
    constexprs = dict(constexprs)
    for name in list(sig):
        if name.startswith("stride") and name.endswith("_dim"):
            sig[name] = "constexpr"
            constexprs[name] = 1
    names = list(rotary._rotary_fwd_kernel.arg_names)
    skip = ("attention_scaling", "offset", "n_tokens", "n_heads_q", "n_heads_k", "seqlen")
    attrs = {(names.index(name),): [["tt.divisibility", 16]] for name, kind in sig.items()
             if kind != "constexpr" and name not in skip}
    return sig, constexprs, attrs


configs = json.loads(sys.argv[1])
results = {}
for arch in (80, 90):
    results[f"trig_sm{arch}"] = usage(_trig_only, {"x_ptr": "*fp32", "y_ptr": "*fp32",
                                      "BLOCK": "constexpr"}, {"BLOCK": 128}, arch)
    for name, (dtype, shape, flags) in configs.items():
        block_t, block_h, block_half, block_pass = rotary.tile_config(*shape)
        constexprs = dict(flags, COPY_PASS=shape[3] > 0, BLOCK_T=block_t, BLOCK_H=block_h,
                          BLOCK_HALF=block_half, BLOCK_PASS=block_pass)
        sig = signature(dtype)
        results[f"{name}_sm{arch}"] = usage(rotary._rotary_fwd_kernel, sig, constexprs, arch)
        sig_a, constexprs_a, attrs_a = aligned(sig, constexprs)
        results[f"{name}_aligned_sm{arch}"] = usage(
            rotary._rotary_fwd_kernel, sig_a, constexprs_a, arch, attrs_a
        )
print(json.dumps(results))
"""

FLAGS = dict(HAS_POSITION_IDS=True, INTERLEAVED=False, CONJUGATE=False, BF16_RNE=False)
# name -> (dtype, (n_tokens, max_heads, rotary_half, n_pass), flags): the launcher's tiles
# (kernels.rotary.tile_config) at the benchmark's shapes and a small-head one.
CONFIGS = {
    "llama_bf16": ("bf16", (4096, 32, 64, 0), FLAGS),
    "llama_gptj_bf16": ("bf16", (4096, 32, 64, 0), {**FLAGS, "INTERLEAVED": True}),
    "neox20b_fp16_bwd": ("fp16", (4096, 64, 12, 72), {**FLAGS, "CONJUGATE": True}),
    "small_heads_fp32": ("fp32", (64, 4, 4, 8), {**FLAGS, "INTERLEAVED": True}),
}


def test_compiles_for_gpus_without_spills(tmp_path):
    pytest.importorskip("triton.backends.nvidia")
    if compile_report.unpinned_reason():
        pytest.skip(compile_report.unpinned_reason())
    results = compile_report.run_report_script(SCRIPT, tmp_path, (json.dumps(CONFIGS),))
    for arch in (80, 90):
        trig_stack = results[f"trig_sm{arch}"]["STACK"]
        for name in CONFIGS:
            for variant in (name, f"{name}_aligned"):
                usage = results[f"{variant}_sm{arch}"]
                assert usage["LOCAL"] == 0, (variant, arch, usage)
                assert usage["STACK"] <= trig_stack, (variant, arch, usage, trig_stack)
        # Contiguous LLaMA heads move 16 bytes per load and store, in both styles.
        for name in ("llama_bf16", "llama_gptj_bf16"):
            assert results[f"{name}_aligned_sm{arch}"]["V4"] > 0, (name, arch, results)
