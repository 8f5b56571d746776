"""The rotary kernel compiles for sm_90 and sm_80 without spilling, checked on any machine.

Triton's interpreter accepts code that the GPU compiler rejects or spills; this compiles the
kernel for GPU targets in a separate process (without TRITON_INTERPRET) and reads the cubin's
resource usage with the cuobjdump shipped in Triton's wheel. The only stack allowed is what
libdevice's accurate sinf/cosf take for their large-argument range reduction, measured on a
kernel that does nothing else.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = r"""
import json, os, re, subprocess, sys, tempfile
import triton, triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from fastformer.kernels import rotary

CUOBJDUMP = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
CONSTEXPRS = {"HAS_POSITION_IDS", "INTERLEAVED", "CONJUGATE", "COPY_PASS", "BF16_RNE",
              "BLOCK_T", "BLOCK_H", "BLOCK_HALF", "BLOCK_PASS"}


@triton.jit
def _trig_only(x_ptr, y_ptr, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offs)
    tl.store(y_ptr + offs, tl.sin(x) + tl.cos(x))


def usage(fn, signature, constexprs, arch):
    src = ASTSource(fn=fn, signature=signature, constexprs=constexprs)
    compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                              options={"num_warps": rotary.NUM_WARPS})
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(compiled.asm["cubin"])
    out = subprocess.run([CUOBJDUMP, "--dump-resource-usage", f.name], capture_output=True,
                         text=True, check=True).stdout
    line = next(line for line in out.splitlines() if "REG:" in line)
    return {key: int(value) for key, value in re.findall(r"(REG|STACK|LOCAL):(\d+)", line)}


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


configs = json.loads(sys.argv[1])
results = {}
for arch in (80, 90):
    results[f"trig_sm{arch}"] = usage(_trig_only, {"x_ptr": "*fp32", "y_ptr": "*fp32",
                                      "BLOCK": "constexpr"}, {"BLOCK": 128}, arch)
    for name, (dtype, constexprs) in configs.items():
        results[f"{name}_sm{arch}"] = usage(rotary._rotary_fwd_kernel, signature(dtype),
                                           constexprs, arch)
print(json.dumps(results))
"""

FLAGS = dict(HAS_POSITION_IDS=True, INTERLEAVED=False, CONJUGATE=False, BF16_RNE=False)
# The launcher's tiles at the benchmark's shapes (TILE_ELEMENTS columns per program).
CONFIGS = {
    "llama_bf16": ("bf16", {**FLAGS, "COPY_PASS": False, "BLOCK_T": 1, "BLOCK_H": 8,
                            "BLOCK_HALF": 64, "BLOCK_PASS": 1}),
    "neox_partial_fp16_bwd": ("fp16", {**FLAGS, "INTERLEAVED": True, "CONJUGATE": True,
                                       "COPY_PASS": True, "BLOCK_T": 1, "BLOCK_H": 4,
                                       "BLOCK_HALF": 16, "BLOCK_PASS": 128}),
    "small_heads_fp32": ("fp32", {**FLAGS, "COPY_PASS": True, "BLOCK_T": 16, "BLOCK_H": 4,
                                  "BLOCK_HALF": 4, "BLOCK_PASS": 8}),
}  # fmt: skip


def test_compiles_for_gpus_without_spills(tmp_path):
    pytest.importorskip("triton.backends.nvidia")
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    script = tmp_path / "compile_rotary.py"  # @triton.jit needs its source in a file
    script.write_text(SCRIPT)
    done = subprocess.run(
        [sys.executable, str(script), json.dumps(CONFIGS)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    if done.returncode != 0 and "cuobjdump" in done.stderr and "No such file" in done.stderr:
        pytest.skip("Triton's wheel has no cuobjdump here")
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    for arch in (80, 90):
        trig_stack = results[f"trig_sm{arch}"]["STACK"]
        for name in CONFIGS:
            usage = results[f"{name}_sm{arch}"]
            assert usage["LOCAL"] == 0, (name, arch, usage)
            assert usage["STACK"] <= trig_stack, (name, arch, usage, trig_stack)
