"""``fastformer profile``: warm up, run torch.profiler over a few steps, and tabulate the time.

The run: ``warmup`` steps unprofiled (Triton compiles and autotunes there), then one profiler
warm-up step and ``steps`` recorded steps (``torch.profiler.schedule``), each ended by a device
synchronisation so that a step's wall time holds its kernels. While it runs, every submodule of
the target's model runs inside a range named by its path (``module::encoder.layer.0.attention
(BertAttention)``) and every fastformer op inside ``fastformer::<op>`` (added by the ops
themselves), so the Chrome/Perfetto trace shows the model's structure; an observer counts each
op call's bytes and FLOPs (:mod:`~fastformer.profiling.op_counts`).

Two tables come out of the recorded steps:
- ops: one row per fastformer op (its named range) and per backward of fastformer's autograd
  Functions: calls, total and mean time, share of the step, achieved GB/s and TFLOP/s from the
  op's counts (forward calls, on a GPU only);
- kernels: on a GPU, one row per device kernel and the fastformer op it ran under, fastformer's
  Triton kernels told apart from the rest (cuBLAS, PyTorch's own); a kernel that is the only one
  of its op gets the op's rates. On the CPU there are no device kernels: fastformer's ops are
  Triton's interpreter running their kernels in Python, and the other rows are the eager PyTorch
  ops that ran outside them.

Times on the CPU are interpreter times, not GPU performance; the report says so and leaves the
rates out.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from fastformer.functional import _library, _ranges
from fastformer.profiling.op_counts import OpCount, StepCounter
from fastformer.profiling.targets import Target

logger = logging.getLogger(__name__)

US_PER_MS = 1000.0
STEP_EVENT = re.compile(r"^ProfilerStep(#\d+|\*)$")  # "ProfilerStep*" in events()
MODULE_PREFIX = "module::"
# Autograd runs a Function's backward as this event (torch's naming).
# The autograd node of a kernel op's backward (torch.library names it after the forward op):
# "norm_fwd" gives the row "norm backward".
BACKWARD_EVENT = re.compile(
    r"autograd::engine::evaluate_function: "
    rf"GeneratedBackwardFor_{_library.NAMESPACE}_(\w+?)(?:_fwd)?_defaultBackward"
)
FASTFORMER = "fastformer"
OTHER = "other"


@dataclass
class Row:
    """One table row. Times in ms over all recorded steps; ``share``: of the steps' wall time.
    ``gbps``/``tflops``: None where the counts are unknown or the times are interpreter times."""

    name: str
    source: str  # FASTFORMER or OTHER
    op: str  # the fastformer op a kernel ran under ("" for op rows and unattributed kernels)
    calls: int
    total_ms: float
    mean_ms: float
    share: float
    step_bytes: int = 0  # the op's counts over one step (0: not known)
    step_flops: int = 0
    gbps: float | None = None
    tflops: float | None = None


@dataclass
class ProfileResult:
    target: str
    device: str
    interpreted: bool
    steps: int
    step_ms: float  # mean wall time of a recorded step
    ops: list[Row] = field(default_factory=list)
    kernels: list[Row] = field(default_factory=list)
    trace_path: str | None = None
    notes: list[str] = field(default_factory=list)


@contextlib.contextmanager
def module_ranges(model: torch.nn.Module | None) -> Iterator[None]:
    """Every submodule's forward inside ``module::<path> (<class>)`` while the block runs."""
    if model is None:
        yield
        return
    handles = []
    for path, module in model.named_modules():
        name = f"{MODULE_PREFIX}{path or '<model>'} ({type(module).__name__})"
        open_ranges = []

        def enter(mod, args, name=name, open_ranges=open_ranges):
            record = torch.profiler.record_function(name)
            record.__enter__()
            open_ranges.append(record)

        def leave(mod, args, output, open_ranges=open_ranges):
            if open_ranges:
                open_ranges.pop().__exit__(None, None, None)

        handles.append(module.register_forward_pre_hook(enter))
        handles.append(module.register_forward_hook(leave, always_call=True))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(target: Target, *, device: torch.device, warmup: int, steps: int, trace_path=None):
    """Profile ``target`` (see the module docstring); returns a :class:`ProfileResult` (and
    writes the Chrome trace to ``trace_path`` when given)."""
    if steps <= 0 or warmup < 0:
        raise ValueError(f"steps={steps} must be positive and warmup={warmup} not negative")
    for _ in range(warmup):
        target.step()
    _synchronize(device)
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    counter = StepCounter()
    schedule = torch.profiler.schedule(wait=0, warmup=1, active=steps, repeat=1)
    with (
        torch.profiler.profile(activities=activities, schedule=schedule) as prof,
        module_ranges(target.module),
        _ranges.observe(counter),
    ):
        for _ in range(1 + steps):
            counter.new_step()
            target.step()
            _synchronize(device)
            prof.step()
    if trace_path:
        prof.export_chrome_trace(str(trace_path))
    return analyse(prof.events(), counter.step, target, device, steps, trace_path)


def _step_us(events) -> float:
    return sum(e.time_range.elapsed_us() for e in events if STEP_EVENT.match(e.name))


def _enclosing_op(event) -> str:
    """The fastformer op (named range) or backward Function ``event`` ran under, or ""."""
    parent = event
    while parent is not None:
        if parent.name.startswith(_ranges.PREFIX):
            return parent.name.removeprefix(_ranges.PREFIX)
        match = BACKWARD_EVENT.match(parent.name)
        if match:
            return f"{match.group(1)} backward"
        parent = parent.cpu_parent
    return ""


def _rates(count: OpCount | None, steps: int, total_us: float, interpreted: bool):
    if count is None or interpreted or total_us <= 0:
        return None, None
    seconds = total_us / US_PER_MS / US_PER_MS
    gbps = count.bytes * steps / seconds / 1e9 if count.bytes else None
    tflops = count.flops * steps / seconds / 1e12 if count.flops else None
    return gbps, tflops


def _row(name, source, op, durations_us, step_us, steps, count=None, interpreted=False) -> Row:
    total = sum(durations_us)
    gbps, tflops = _rates(count, steps, total, interpreted)
    return Row(
        name=name,
        source=source,
        op=op,
        calls=len(durations_us),
        total_ms=total / US_PER_MS,
        mean_ms=total / US_PER_MS / max(len(durations_us), 1),
        share=total / step_us if step_us else 0.0,
        step_bytes=count.bytes if count is not None else 0,
        step_flops=count.flops if count is not None else 0,
        gbps=gbps,
        tflops=tflops,
    )


def _fastformer_kernel_names() -> set[str]:
    return {
        name
        for module_name, module in list(sys.modules.items())
        if module_name.startswith("fastformer.kernels.") and module is not None
        for name in vars(module)
        if name.endswith("_kernel")
    }


def analyse(events, counts: dict[str, OpCount], target: Target, device, steps, trace_path=None):
    """Tables of the recorded ``events`` (``profiler.events()``); ``counts``: one step's."""
    interpreted = device.type != "cuda"
    step_us = _step_us(events)
    op_times: dict[str, list[float]] = defaultdict(list)
    for event in events:
        if event.name.startswith(_ranges.PREFIX):
            us = event.device_time_total if not interpreted else event.time_range.elapsed_us()
            op_times[event.name.removeprefix(_ranges.PREFIX)].append(us)
        elif BACKWARD_EVENT.match(event.name):
            us = event.device_time_total if not interpreted else event.time_range.elapsed_us()
            op_times[f"{BACKWARD_EVENT.match(event.name).group(1)} backward"].append(us)
    ops = [
        _row(name, FASTFORMER, "", times, step_us, steps, counts.get(name), interpreted)
        for name, times in op_times.items()
    ]
    kernels = _device_kernels(events, counts, step_us, steps) if not interpreted else []
    if interpreted:
        kernels = [*ops, *_top_level_ops(events, step_us, steps)]
    order = lambda row: -row.total_ms  # noqa: E731
    return ProfileResult(
        target=target.name, device=str(device), interpreted=interpreted, steps=steps,
        step_ms=step_us / US_PER_MS / steps, ops=sorted(ops, key=order),
        kernels=sorted(kernels, key=order), trace_path=str(trace_path) if trace_path else None,
        notes=list(target.notes),
    )  # fmt: skip


def _device_kernels(events, counts, step_us, steps) -> list[Row]:
    cpu_by_id = {e.id: e for e in events if e.device_type == torch.autograd.DeviceType.CPU}
    ours = _fastformer_kernel_names()
    times: dict[tuple[str, str], list[float]] = defaultdict(list)
    for event in events:
        if event.device_type != torch.autograd.DeviceType.CUDA:
            continue
        launcher = cpu_by_id.get(event.linked_correlation_id)
        op = _enclosing_op(launcher) if launcher is not None else ""
        times[(event.name, op)].append(event.time_range.elapsed_us())
    kernels_per_op = defaultdict(set)
    for name, op in times:
        kernels_per_op[op].add(name)
    rows = []
    for (name, op), durations in times.items():
        # The op's counts belong to a kernel only when it is the op's one kernel.
        count = counts.get(op) if op and len(kernels_per_op[op]) == 1 else None
        source = FASTFORMER if name in ours else OTHER
        rows.append(_row(name, source, op, durations, step_us, steps, count))
    return rows


def _top_level_ops(events, step_us, steps) -> list[Row]:
    """PyTorch ops outside fastformer's ranges whose parents are only steps and modules."""
    times: dict[str, list[float]] = defaultdict(list)
    for event in events:
        if event.device_type != torch.autograd.DeviceType.CPU or not event.name.startswith(
            "aten::"
        ):
            continue
        parent = event.cpu_parent
        while parent is not None and parent.name.startswith(MODULE_PREFIX):
            parent = parent.cpu_parent
        if parent is not None and STEP_EVENT.match(parent.name):
            times[event.name].append(event.time_range.elapsed_us())
    return [_row(name, OTHER, "", durations, step_us, steps) for name, durations in times.items()]
