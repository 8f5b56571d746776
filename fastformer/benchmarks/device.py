"""Where benchmarks run and how they are timed: the environment record, the device's measured
peak bandwidth, and the timer.

On a GPU every time comes from ``triton.testing.do_bench`` (CUDA events, L2 flushed between
calls): the median with its 20% and 80% quantiles. Without a GPU, do_bench cannot run (it needs
a GPU driver), so a wall-clock loop stands in (a warm-up call, then repetitions for a fixed
budget, summarised by the same quantiles); those times are Triton-interpreter times on the CPU,
labelled as such everywhere they appear, and say nothing about GPU performance. No peak
bandwidth is given on the CPU.

Peak memory (:func:`peak_memory_mib`) is read from torch's CUDA caching allocator
(``torch.cuda.max_memory_allocated``, reset just before) over one extra, untimed call: do_bench
allocates a 256 MB buffer to flush the L2 cache between calls, which would otherwise count in
every provider's peak. It includes what is live during the call (the case's inputs, and in the
backward modes the forward's saved tensors). On the CPU there is no such counter: CPU tensors
come from the system allocator, and the process's resident memory mixes the interpreter's numpy
temporaries with everything else, which says nothing about the kernel's footprint on a GPU; the
column says "n/a" there rather than show a number that means something else.
"""

from __future__ import annotations

import importlib.metadata
import logging
import platform
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import triton
import triton.testing

from fastformer.benchmarks import counts

logger = logging.getLogger(__name__)

# do_bench returns the quantiles in the order asked: median first, then the 20% and 80% ones.
QUANTILES = (0.5, 0.2, 0.8)
# do_bench's budgets (ms) for warm-up and timed repetitions on a GPU (its own defaults).
GPU_WARMUP_MS = 25
GPU_REP_MS = 100
# The CPU stand-in: one warm-up call, then repetitions filling CPU_REP_MS, at least CPU_MIN_REPS
# (a median of fewer means little) and at most CPU_MAX_REPS (eager calls take microseconds).
CPU_WARMUP_CALLS = 1
CPU_REP_MS = 150
CPU_MIN_REPS = 3
CPU_MAX_REPS = 50
MS_PER_S = 1000
# The copy that measures peak bandwidth: 1 GiB, far past any GPU's L2 cache (Hopper: 50 MB).
PEAK_COPY_BYTES = 1 << 30
GIT_TIMEOUT_S = 5
BYTES_PER_MIB = 1 << 20

CPU_DEVICE_NAME = "cpu (Triton interpreter)"
GPU_TIMING = "gpu: triton.testing.do_bench, CUDA events"
CPU_TIMING = "Triton interpreter on CPU: wall-clock times, NOT GPU performance"

_peak_gbps_by_gpu: dict[str, float] = {}


@dataclass(frozen=True)
class Environment:
    """What a set of results was measured on: the device's name (the GPU's, or
    ``CPU_DEVICE_NAME``), how times were taken, the versions of Python, torch (and the CUDA it
    was built for), Triton, transformers (None when not installed) and fastformer, the git
    commit ("unknown" outside a checkout) and the measured peaks (None on the CPU)."""

    device: str
    timing: str
    torch: str
    triton: str
    commit: str
    peak_gbps: float | None
    peak_tflops: float | None = None
    python: str = platform.python_version()
    cuda: str | None = None
    transformers: str | None = None
    fastformer: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return CPU_DEVICE_NAME


def timing_label(device: torch.device) -> str:
    return GPU_TIMING if device.type == "cuda" else CPU_TIMING


def git_commit() -> str:
    """The checkout's ``git rev-parse HEAD``, or "unknown" outside a git checkout."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    commit = result.stdout.strip()
    return commit if result.returncode == 0 and commit else "unknown"


def peak_bandwidth_gbps(device: torch.device) -> float | None:
    """The device's measured copy bandwidth (GB/s), once per GPU name per process; None on CPU.

    Measured as (bytes read + bytes written) / median time of a device-to-device copy of
    ``PEAK_COPY_BYTES``: the bandwidth a memory-bound kernel can actually reach, a little under
    the data sheet's figure.
    """
    if device.type != "cuda":
        return None
    name = device_name(device)
    if name not in _peak_gbps_by_gpu:
        src = torch.empty(PEAK_COPY_BYTES, dtype=torch.uint8, device=device)
        dst = torch.empty_like(src)
        ms = triton.testing.do_bench(lambda: dst.copy_(src), quantiles=list(QUANTILES))[0]
        _peak_gbps_by_gpu[name] = counts.gbps(2 * PEAK_COPY_BYTES, ms)
        del src, dst
        torch.cuda.empty_cache()
        logger.info("peak copy bandwidth of %s: %.0f GB/s", name, _peak_gbps_by_gpu[name])
    return _peak_gbps_by_gpu[name]


# The matmul that measures peak TFLOP/s: bf16, large enough to fill any GPU.
PEAK_MATMUL_SIZE = 8192
_peak_tflops_by_gpu: dict[str, float] = {}


def peak_matmul_tflops(device: torch.device) -> float | None:
    """The device's measured bf16 matmul rate (TFLOP/s) on random data, once per GPU name per
    process; None on the CPU."""
    if device.type != "cuda":
        return None
    name = device_name(device)
    if name not in _peak_tflops_by_gpu:
        size = PEAK_MATMUL_SIZE
        a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
        b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
        ms = triton.testing.do_bench(lambda: a @ b, quantiles=list(QUANTILES))[0]
        _peak_tflops_by_gpu[name] = counts.tflops(counts.gemm_flops(size, size, size), ms)
        del a, b
        torch.cuda.empty_cache()
        logger.info("peak bf16 matmul of %s: %.0f TFLOP/s", name, _peak_tflops_by_gpu[name])
    return _peak_tflops_by_gpu[name]


def package_version(name: str) -> str | None:
    """The installed version of distribution ``name``, or None when it is not installed."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment(device: torch.device) -> Environment:
    import fastformer

    return Environment(
        device=device_name(device),
        timing=timing_label(device),
        torch=torch.__version__,
        triton=triton.__version__,
        commit=git_commit(),
        peak_gbps=peak_bandwidth_gbps(device),
        peak_tflops=peak_matmul_tflops(device),
        python=platform.python_version(),
        cuda=torch.version.cuda,
        transformers=package_version("transformers"),
        fastformer=fastformer.__version__,
    )


def _quantiles(times: Sequence[float]) -> tuple[float, float, float]:
    values = torch.quantile(
        torch.tensor(times, dtype=torch.float64), torch.tensor(QUANTILES, dtype=torch.float64)
    )
    return tuple(values.tolist())


def _clear_grads(tensors: Sequence[torch.Tensor]) -> None:
    for tensor in tensors:
        tensor.grad = None


def _cpu_bench(
    fn: Callable[[], object],
    grad_to_none: Sequence[torch.Tensor],
    min_reps: int = CPU_MIN_REPS,
    warmup_calls: int = CPU_WARMUP_CALLS,
):
    for _ in range(warmup_calls):
        _clear_grads(grad_to_none)
        fn()
    times: list[float] = []
    budget_end = time.perf_counter() + CPU_REP_MS / MS_PER_S
    while len(times) < CPU_MAX_REPS and (len(times) < min_reps or time.perf_counter() < budget_end):
        _clear_grads(grad_to_none)
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * MS_PER_S)
    return _quantiles(times)


def time_ms(
    fn: Callable[[], object],
    device: torch.device,
    grad_to_none: Sequence[torch.Tensor] = (),
    cpu_min_reps: int = CPU_MIN_REPS,
    cpu_warmup_calls: int = CPU_WARMUP_CALLS,
) -> tuple[float, float, float]:
    """(median, q20, q80) milliseconds of ``fn()``; leaf gradients are cleared before each call.
    ``cpu_min_reps`` and ``cpu_warmup_calls`` shape the CPU stand-in only (whole models under
    the interpreter take seconds a call)."""
    if device.type == "cuda":
        result = triton.testing.do_bench(
            fn,
            warmup=GPU_WARMUP_MS,
            rep=GPU_REP_MS,
            grad_to_none=list(grad_to_none) or None,
            quantiles=list(QUANTILES),
        )
        return tuple(result)
    return _cpu_bench(fn, grad_to_none, cpu_min_reps, cpu_warmup_calls)


def peak_memory_mib(
    fn: Callable[[], object], device: torch.device, grad_to_none: Sequence[torch.Tensor] = ()
) -> float | None:
    """The most memory (MiB) torch's CUDA allocator held during one call of ``fn()``, with its
    peak counter reset just before; None on the CPU (see the module header)."""
    if device.type != "cuda":
        return None
    _clear_grads(grad_to_none)
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) / BYTES_PER_MIB
