"""Compile a Triton kernel for a GPU target on any machine and report what the compiler made.

Triton compiles for a named target without a GPU (``triton.compile`` with a ``GPUTarget``), and
its wheel ships ``cuobjdump``, which reads registers, stack and shared memory off the cubin. The
interpreter accepts code that the GPU compiler rejects or spills, so the test suite uses this to
hold every kernel to: it compiles, spills nothing, and uses the instructions meant (wgmma on
sm_90 for the matrix kernels, 16-byte vector accesses for the memory-bound ones).

Kernels must have been defined without ``TRITON_INTERPRET`` (run this in such a process).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

WARP_SIZE = 32


def _cuobjdump() -> str:
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")


def resource_usage(
    kernel,
    signature: dict[str, str],
    constexprs: dict[str, object],
    *,
    arch: int = 90,
    num_warps: int = 4,
    num_stages: int = 2,
    attrs: dict | None = None,
) -> dict[str, int | bool]:
    """Compile ``kernel`` for ``sm_<arch>``; return REG, STACK, LOCAL (per thread, bytes for the
    last two), SHARED (bytes), ``wgmma`` (Hopper's warpgroup MMA in the PTX) and ``v4`` (count of
    16-byte global loads and stores in the PTX). ``attrs`` are Triton's argument attributes
    (e.g. 16-divisibility, as the launcher's specialisation would give)."""
    src = ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs)
    options = {"num_warps": num_warps, "num_stages": num_stages}
    compiled = triton.compile(src, target=GPUTarget("cuda", arch, WARP_SIZE), options=options)
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as cubin:
        cubin.write(compiled.asm["cubin"])
    try:
        out = subprocess.run(
            [_cuobjdump(), "--dump-resource-usage", cubin.name],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    finally:
        os.unlink(cubin.name)
    line = next(line for line in out.splitlines() if "REG:" in line)
    usage: dict[str, int | bool] = {
        key: int(value) for key, value in re.findall(r"(REG|STACK|LOCAL):(\d+)", line)
    }
    ptx = compiled.asm["ptx"]
    usage["SHARED"] = int(compiled.metadata.shared)
    usage["wgmma"] = "wgmma" in ptx
    usage["v4"] = len(re.findall(r"(?:ld|st)\.global(?:\.\w+)*\.v4", ptx))
    return usage


def signature_of(kernel, constexprs, pointer_dtypes: dict[str, str], default_pointer: str,
                 float_args=(), int64_args=()) -> dict[str, str]:  # fmt: skip
    """A signature for ``kernel``: constexprs, pointers (``pointer_dtypes`` or the default),
    fp32 scalars named in ``float_args``, i64 in ``int64_args``, i32 for the rest."""
    signature = {}
    for name in kernel.arg_names:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name.endswith("_ptr"):
            signature[name] = "*" + pointer_dtypes.get(name, default_pointer)
        elif name in float_args:
            signature[name] = "fp32"
        elif name in int64_args:
            signature[name] = "i64"
        else:
            signature[name] = "i32"
    return signature


# Registers and spills differ between compiler releases: reports are held to this one, the
# version of the GPU machine the kernels are tuned for.
PINNED_TRITON = "3.6."
# How long one report script may take (a cold Triton cache compiles every variant).
SCRIPT_TIMEOUT_S = 900


def unpinned_reason() -> str | None:
    """Why reports cannot be checked with this Triton (None when they can)."""
    if not triton.__version__.startswith(PINNED_TRITON):
        return (
            f"compile reports are pinned to triton {PINNED_TRITON} (the GPU machine's); "
            f"this is {triton.__version__}"
        )
    return None


def run_report_script(source: str, workdir, args: tuple[str, ...] = ()):
    """Run ``source`` (a script printing one JSON line last) in a fresh process without
    ``TRITON_INTERPRET``, so that its kernels are defined for a GPU; return the parsed JSON.

    The script is written to ``workdir`` first: ``@triton.jit`` needs its source in a file.
    """
    path = os.path.join(str(workdir), "compile_report_script.py")
    with open(path, "w") as script:
        script.write(source)
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, path, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=SCRIPT_TIMEOUT_S,
    )
    if done.returncode != 0:
        raise RuntimeError(f"compile report script failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])
