"""What every launcher needs besides its kernels: where kernels can run, output buffers, row views.

Kernels run compiled on CUDA tensors, and on CPU tensors through Triton's interpreter when
``TRITON_INTERPRET=1`` was set before the kernels were defined (the test suite and the command line
do this themselves on a machine without a GPU). Any other case is refused before a launch.

Output buffers come from :func:`empty`, which NaN-fills them while poisoning is on (the test suite
turns it on), so an element a kernel forgets to write fails its test instead of passing as garbage.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
from triton.runtime.interpreter import InterpretedFunction

# Programs per streaming multiprocessor for persistent (grid-stride) kernels: enough to hide
# latency with two resident programs per SM, few enough to keep per-program partial sums small.
PROGRAMS_PER_SM = 2
# The interpreter runs programs one after another, so more of them only adds Python overhead.
INTERPRETER_PROGRAMS = 4

# Column offsets inside a row must stay below this (they are int32 in the kernels).
INT32_LIMIT = 2**31

_poison_outputs = False


def set_poison_outputs(enabled: bool) -> bool:
    """Turn NaN-filling of new output buffers on or off; returns the previous setting."""
    global _poison_outputs
    previous, _poison_outputs = _poison_outputs, bool(enabled)
    return previous


def empty(shape, *, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """An output buffer: uninitialised, or NaN-filled while poisoning is on."""
    if _poison_outputs and dtype.is_floating_point:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


class Unsupported(Exception):  # noqa: N818 (a kind of input, not an error's cause)
    """A valid input that fastformer's kernels do not handle (unlike a bad one), raised before
    any launch. ``reason`` names the case in general terms (the message has the values); with
    the eager fallback on (``fastformer.set_eager_fallback``) the op runs its eager reference
    instead, warning once per reason. Raised as one of the subclasses below, which are also the
    built-in exception a caller would expect (TypeError for a dtype, and so on)."""

    # Built as ``Unsupported(message, reason)`` with the default constructor (torch.compile
    # traces that, not a custom __init__); the message alone is what it prints.
    @property
    def reason(self) -> str:
        return self.args[1] if len(self.args) > 1 else str(self)

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class UnsupportedDtype(Unsupported, TypeError):
    """A floating dtype the kernels do not take (float64, float8)."""


class UnsupportedDevice(Unsupported, RuntimeError):
    """Tensors on a device the kernels were not defined for."""


class UnsupportedShape(Unsupported, NotImplementedError):
    """A shape or layout past a kernel's limits (head_dim, offsets beyond int32)."""


def is_interpreted(kernel) -> bool:
    """Whether ``kernel`` was defined under Triton's interpreter."""
    return isinstance(kernel, InterpretedFunction)


def software_bf16_rounding(kernel, dtype: torch.dtype) -> bool:
    """Whether ``kernel``'s bf16 stores must round in software (the interpreter truncates)."""
    return dtype == torch.bfloat16 and is_interpreted(kernel)


def check_runnable(kernel, name: str, tensor: torch.Tensor) -> None:
    """Raise before a launch when ``kernel`` cannot run on ``tensor``'s device."""
    device = tensor.device
    if is_interpreted(kernel):
        if device.type != "cpu":
            raise UnsupportedDevice(
                f"{name} is on {device}, but fastformer's kernels were defined under Triton's "
                "interpreter (TRITON_INTERPRET=1), which runs CPU tensors only",
                f"{device.type} tensors under Triton's interpreter",
            )
        return
    if device.type != "cuda":
        raise UnsupportedDevice(
            f"{name} is on {device}; fastformer's kernels run on CUDA tensors, or on CPU tensors "
            "when TRITON_INTERPRET=1 is set before fastformer is imported",
            f"{device.type} tensors (the kernels run on CUDA, or CPU under the interpreter)",
        )


# Compute capability from which GPUs have wgmma (sm_90), which reads an operand from shared
# memory; before it, mma.sync holds both in registers and large tiles spill sooner.
WGMMA_CAPABILITY = 90


def launch_capability(named_args: dict) -> int:
    """Compute capability (80 for sm_80) of the GPU a launch runs on, read off its first tensor
    (for an autotuner's config pruning, which sees the launch's arguments by name)."""
    device = next(value.device for value in named_args.values() if torch.is_tensor(value))
    major, minor = torch.cuda.get_device_capability(device)
    return 10 * major + minor


@functools.cache
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def max_programs(device: torch.device) -> int:
    """How many programs a persistent kernel should launch on ``device``."""
    if device.type != "cuda":
        return INTERPRETER_PROGRAMS
    index = device.index if device.index is not None else torch.cuda.current_device()
    return _sm_count(index) * PROGRAMS_PER_SM


def _fold(sizes, strides) -> list[tuple[int, int]]:
    """Fold dims into the fewest (size, stride) groups that walk them in order, outer first."""
    groups: list[tuple[int, int]] = []
    for size, stride in zip(sizes, strides, strict=True):
        if size == 1:
            continue
        if groups and groups[-1][1] == stride * size:
            groups[-1] = (groups[-1][0] * size, stride)
        else:
            groups.append((size, stride))
    return groups


@dataclass(frozen=True)
class Rows:
    """A tensor seen as ``(n_rows, n_cols)``: what a kernel needs to address any of its rows.

    Row ``r`` starts at ``(r // rows_inner) * stride_outer + (r % rows_inner) * stride_inner``
    and its columns step by ``stride_col``: two row strides cover transposed and permuted
    leading dims without a copy.
    """

    tensor: torch.Tensor
    n_rows: int
    n_cols: int
    rows_inner: int
    stride_outer: int
    stride_inner: int
    stride_col: int

    def layout_args(self) -> tuple[int, int, int, int]:
        return self.rows_inner, self.stride_outer, self.stride_inner, self.stride_col


def as_rows(tensor: torch.Tensor, n_tail_dims: int) -> Rows:
    """See ``tensor`` as rows of its last ``n_tail_dims`` dims folded into columns.

    Leading dims that fold into at most two row strides, and trailing dims that fold into one
    column stride, are addressed in place (transposed, permuted, sliced, step-sliced and
    expanded layouts). Anything else is copied once into a contiguous tensor.
    """
    lead = tensor.dim() - n_tail_dims
    n_rows = math.prod(tensor.shape[:lead])
    n_cols = math.prod(tensor.shape[lead:])
    row_groups = _fold(tensor.shape[:lead], tensor.stride()[:lead])
    col_groups = _fold(tensor.shape[lead:], tensor.stride()[lead:])
    # Column offsets are int32 in the kernels (int64 would cost registers on every element).
    col_span = (n_cols - 1) * abs(col_groups[0][1]) if len(col_groups) == 1 else 0
    if len(row_groups) > 2 or len(col_groups) > 1 or col_span >= INT32_LIMIT:
        tensor = tensor.contiguous()
        row_groups = [(n_rows, n_cols)]
        col_groups = [(n_cols, 1)]
    stride_col = col_groups[0][1] if col_groups else 1
    if len(row_groups) == 2:
        (_, stride_outer), (rows_inner, stride_inner) = row_groups
    elif row_groups:
        stride_outer, (rows_inner, stride_inner) = 0, row_groups[0]
    else:
        stride_outer, rows_inner, stride_inner = 0, max(n_rows, 1), 0
    return Rows(tensor, n_rows, n_cols, rows_inner, stride_outer, stride_inner, stride_col)
