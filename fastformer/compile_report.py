"""Compile a Triton kernel for a GPU target on any machine and report what the compiler made.

Triton compiles for a named target without a GPU (``triton.compile`` with a ``GPUTarget``), and
its wheel ships ``ptxas`` and ``cuobjdump``. From one compile this reads:

- registers per thread, stack frame and local memory per thread, and static shared memory, off
  the cubin (``cuobjdump --dump-resource-usage``); dynamic shared memory (what Triton's launcher
  requests) off the compiled kernel's ``metadata.shared``;
- spilled bytes from ``ptxas -v`` on the kernel's PTX with Triton's own flags, run only when the
  cubin has a stack frame (no frame, no spill): a frame can also hold libdevice's sin/cos range
  reduction, which is not a spill, so the frame alone does not say;
- tensor-core and memory instructions off the PTX (static counts; ptxas maps them one to one
  into the SASS, which ``--dump`` writes with ``cuobjdump --dump-sass``): ``mma.sync`` (sm_80
  and newer), ``wgmma.mma_async`` (Hopper's warpgroup MMA), and 16-byte global accesses
  (128-bit vector loads and stores, and 16-byte ``cp.async`` copies into shared memory).

The test suite holds every kernel to: it compiles, spills nothing, fits the architecture's
shared memory, and uses the instructions meant (``fastformer.profiling.catalogue`` lists the
kernels and their configs; ``fastformer inspect`` prints the same figures).

Kernels must have been defined without ``TRITON_INTERPRET`` (run this in such a process:
:func:`run_report_script` starts one).
"""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from fastformer.compile_rules import WARP_SIZE, problems

# 16-byte (128-bit) global accesses in PTX: four 32-bit or two 64-bit lanes, with any cache
# qualifiers before the vector width; cp.async copies of 16 bytes (0x10) into shared memory.
_PTX_VECTOR16 = r"(?:\.[\w:]+)*\.(?:v4\.[bfus]32|v2\.[bfus]64)\b"
_PTX_LOAD16 = re.compile(
    r"\bld\.global"
    + _PTX_VECTOR16
    + r"|\bcp\.async\.c[ag]\.shared\.global[^;]*,\s*(?:0x10|16)\s*[,;]"
)
_PTX_STORE16 = re.compile(r"\bst\.global" + _PTX_VECTOR16)
_PTX_MMA = re.compile(r"\bmma\.sync\.")
_PTX_WGMMA = re.compile(r"\bwgmma\.mma_async\.")
_PTXAS_FRAME = re.compile(
    r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads"
)
_PTXAS_REGS = re.compile(r"Used (\d+) registers")


def _tool(name: str) -> str:
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


def _cuobjdump() -> str:
    return _tool("cuobjdump")


@dataclass
class KernelBuild:
    """What the compiler made of one kernel at one config for one architecture.

    Sizes are bytes; ``regs``, ``stack`` and ``local`` are per thread. ``shared`` is the dynamic
    shared memory Triton's launcher requests (``metadata.shared``), ``static_shared`` what the
    cubin declares itself. ``spill_stores``/``spill_loads`` come from ``ptxas -v`` (0 without a
    stack frame). Instruction counts are static counts in the PTX. ``ptx``/``sass`` are kept
    only when asked for (``keep_text``).
    """

    name: str
    arch: int
    num_warps: int
    num_stages: int
    regs: int
    stack: int
    local: int
    shared: int
    static_shared: int
    spill_stores: int
    spill_loads: int
    mma: int
    wgmma: int
    load16: int
    store16: int
    ptx: str | None = None
    sass: str | None = None

    @property
    def spills(self) -> bool:
        return self.spill_stores > 0 or self.spill_loads > 0 or self.local > 0

    @property
    def shared_total(self) -> int:
        return self.shared + self.static_shared

    def as_dict(self, *, text: bool = False) -> dict:
        data = asdict(self)
        if not text:
            data.pop("ptx")
            data.pop("sass")
        return data


def _run(args: list[str]) -> str:
    done = subprocess.run(args, capture_output=True, text=True, check=True)
    return done.stdout + done.stderr


def ptxas_report(ptx: str, arch: int, *, fp_fusion: bool = True) -> dict[str, int]:
    """``ptxas -v`` on ``ptx`` for ``sm_<arch>`` with the flags Triton's compile uses: registers,
    stack frame, spill stores and spill loads (bytes)."""
    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability

    with tempfile.TemporaryDirectory() as folder:
        source = os.path.join(folder, "kernel.ptx")
        with open(source, "w") as handle:
            handle.write(ptx)
        fmad = [] if fp_fusion else ["--fmad=false"]
        log = _run(
            [get_ptxas(arch).path, "-lineinfo", *fmad, "-v",
             f"--gpu-name={sm_arch_from_capability(arch)}", source,
             "-o", os.path.join(folder, "kernel.cubin")]
        )  # fmt: skip
    frame = _PTXAS_FRAME.search(log)
    regs = _PTXAS_REGS.search(log)
    if frame is None or regs is None:
        raise RuntimeError(f"could not read ptxas -v output:\n{log[-2000:]}")
    stack, stores, loads = (int(value) for value in frame.groups())
    return {
        "regs": int(regs.group(1)),
        "stack": stack,
        "spill_stores": stores,
        "spill_loads": loads,
    }


def compile_kernel(
    kernel,
    signature: dict[str, str],
    constexprs: dict[str, object],
    *,
    arch: int = 90,
    num_warps: int | None = None,
    num_stages: int | None = None,
    attrs: dict | None = None,
    keep_text: bool = False,
) -> KernelBuild:
    """Compile ``kernel`` for ``sm_<arch>`` and read it (see the module docstring). ``attrs`` are
    Triton's argument attributes (e.g. 16-divisibility, as the launcher's specialisation would
    give); ``num_warps``/``num_stages`` None take Triton's defaults, as a launch that passes
    none does."""
    src = ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs)
    options = {"num_warps": num_warps, "num_stages": num_stages}
    options = {key: value for key, value in options.items() if value is not None}
    compiled = triton.compile(src, target=GPUTarget("cuda", arch, WARP_SIZE), options=options)
    with tempfile.TemporaryDirectory() as folder:
        cubin = os.path.join(folder, "kernel.cubin")
        with open(cubin, "wb") as handle:
            handle.write(compiled.asm["cubin"])
        usage_text = _run([_cuobjdump(), "--dump-resource-usage", cubin])
        # Disassembling takes as long as compiling: only when the text is wanted.
        sass = _run([_cuobjdump(), "--dump-sass", cubin]) if keep_text else None
    line = next(line for line in usage_text.splitlines() if "REG:" in line)
    usage = {key: int(value) for key, value in re.findall(r"(REG|STACK|LOCAL|SHARED):(\d+)", line)}
    ptx = compiled.asm["ptx"]
    spills = {"spill_stores": 0, "spill_loads": 0}
    if usage["STACK"] > 0:
        report = ptxas_report(ptx, arch, fp_fusion=compiled.metadata.enable_fp_fusion)
        spills = {key: report[key] for key in spills}
    return KernelBuild(
        name=compiled.metadata.name,
        arch=arch,
        num_warps=compiled.metadata.num_warps,
        num_stages=compiled.metadata.num_stages,
        regs=usage["REG"],
        stack=usage["STACK"],
        local=usage["LOCAL"],
        shared=int(compiled.metadata.shared),
        static_shared=usage["SHARED"],
        **spills,
        mma=len(_PTX_MMA.findall(ptx)),
        wgmma=len(_PTX_WGMMA.findall(ptx)),
        load16=len(_PTX_LOAD16.findall(ptx)),
        store16=len(_PTX_STORE16.findall(ptx)),
        ptx=ptx if keep_text else None,
        sass=sass,
    )


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
    try:
        import triton.backends.nvidia  # noqa: F401
    except ImportError:
        return "this triton has no NVIDIA backend (ptxas, cuobjdump) to compile with"
    if not triton.__version__.startswith(PINNED_TRITON):
        return (
            f"compile reports are pinned to triton {PINNED_TRITON}x (the GPU machine's); "
            f"this is {triton.__version__}"
        )
    return None


def _gpu_env() -> dict[str, str]:
    """This process's environment without ``TRITON_INTERPRET`` and with the repository root on
    the path: a child defines its kernels for a GPU."""
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    return env


def run_report_script(source: str, workdir, args: tuple[str, ...] = ()):
    """Run ``source`` (a script printing one JSON line last) in a fresh process without
    ``TRITON_INTERPRET``, so that its kernels are defined for a GPU; return the parsed JSON.

    The script is written to ``workdir`` first: ``@triton.jit`` needs its source in a file.
    """
    path = os.path.join(str(workdir), "compile_report_script.py")
    with open(path, "w") as script:
        script.write(source)
    done = subprocess.run(
        [sys.executable, path, *args],
        capture_output=True,
        text=True,
        env=_gpu_env(),
        timeout=SCRIPT_TIMEOUT_S,
    )
    if done.returncode != 0:
        raise RuntimeError(f"compile report script failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# The architectures the tests compile every kernel config for (A100 and H100/H200).
TEST_ARCHS = ("sm_80", "sm_90")


@dataclass(frozen=True)
class InspectRun:
    """One ``fastformer inspect --json`` run in a child process: its printed table, its exit
    status and its records (one per kernel config and architecture)."""

    stdout: str
    returncode: int
    records: list[dict]


@functools.cache
def inspect_run(ops: tuple[str, ...], archs: tuple[str, ...] = TEST_ARCHS) -> InspectRun:
    """Run ``fastformer inspect --op OPS --arch ARCHS --json`` in a fresh process (kernels
    defined for a GPU), once per test session for every test that asks for the same compiles.

    A run that finds problems exits 1 and is returned all the same (its records say what);
    RuntimeError with the child's output when it did not run to the end.
    """
    with tempfile.TemporaryDirectory() as folder:
        out = os.path.join(folder, "inspect.json")
        done = subprocess.run(
            [sys.executable, "-m", "fastformer", "inspect", "--op", *ops, "--arch", *archs,
             "--json", out],
            capture_output=True,
            text=True,
            env=_gpu_env(),
            timeout=SCRIPT_TIMEOUT_S,
        )  # fmt: skip
        if done.returncode not in (0, 1) or not os.path.exists(out):
            raise RuntimeError(
                f"fastformer inspect failed ({done.returncode}):\n{done.stdout[-2000:]}\n"
                f"{done.stderr[-3000:]}"
            )
        with open(out) as handle:
            records = json.load(handle)["records"]
    return InspectRun(done.stdout, done.returncode, records)


def record_key(record: dict) -> tuple[str, str, str, str]:
    """(kernel, config, form, arch): what names one record."""
    return record["kernel"], record["config"], record["form"], record["arch"]


def failures(records: list[dict]) -> list[str]:
    """Every record's :func:`problems`, one line each, named by :func:`record_key`: a compile
    test passes when the list is empty."""
    found = []
    for record in records:
        issues = problems(record)
        if issues:
            found.append(f"{record_key(record)}: {'; '.join(issues)}")
    return found
