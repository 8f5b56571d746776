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

import torch
from triton.runtime.interpreter import InterpretedFunction

# Programs per streaming multiprocessor for persistent (grid-stride) kernels: enough to hide
# latency with two resident programs per SM, few enough to keep per-program partial sums small.
PROGRAMS_PER_SM = 2
# The interpreter runs programs one after another, so more of them only adds Python overhead.
INTERPRETER_PROGRAMS = 4

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


def is_interpreted(kernel) -> bool:
    """Whether ``kernel`` was defined under Triton's interpreter."""
    return isinstance(kernel, InterpretedFunction)


def check_runnable(kernel, name: str, tensor: torch.Tensor) -> None:
    """Raise before a launch when ``kernel`` cannot run on ``tensor``'s device."""
    device = tensor.device
    if is_interpreted(kernel):
        if device.type != "cpu":
            raise RuntimeError(
                f"{name} is on {device}, but fastformer's kernels were defined under Triton's "
                "interpreter (TRITON_INTERPRET=1), which runs CPU tensors only"
            )
        return
    if device.type != "cuda":
        raise RuntimeError(
            f"{name} is on {device}; fastformer's kernels run on CUDA tensors, or on CPU tensors "
            "when TRITON_INTERPRET=1 is set before fastformer is imported"
        )


@functools.lru_cache(maxsize=None)
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def max_programs(device: torch.device) -> int:
    """How many programs a persistent kernel should launch on ``device``."""
    if device.type != "cuda":
        return INTERPRETER_PROGRAMS
    index = device.index if device.index is not None else torch.cuda.current_device()
    return _sm_count(index) * PROGRAMS_PER_SM


def _collapsed_stride(sizes, strides) -> int | None:
    """The one stride that walks ``sizes`` as a flat axis, or None when no single stride does."""
    dims = [(size, stride) for size, stride in zip(sizes, strides, strict=True) if size != 1]
    if not dims:
        return 1
    for (_, outer_stride), (inner_size, inner_stride) in zip(dims, dims[1:], strict=False):
        if outer_stride != inner_stride * inner_size:
            return None
    return dims[-1][1]


def as_rows(tensor: torch.Tensor, n_tail_dims: int) -> torch.Tensor:
    """View ``tensor`` as ``(rows, cols)``: its last ``n_tail_dims`` dims fold into columns.

    Leading dims that fold into one row stride and trailing dims that fold into one column
    stride (transposed, sliced, step-sliced or fully expanded layouts) give a view, no copy.
    Layouts that need two strides on one axis (a partly expanded or permuted stack) are copied.
    """
    lead = tensor.dim() - n_tail_dims
    n_rows = math.prod(tensor.shape[:lead])
    n_cols = math.prod(tensor.shape[lead:])
    row_stride = _collapsed_stride(tensor.shape[:lead], tensor.stride()[:lead])
    col_stride = _collapsed_stride(tensor.shape[lead:], tensor.stride()[lead:])
    if row_stride is None or col_stride is None:
        return tensor.contiguous().view(n_rows, n_cols)
    return tensor.as_strided((n_rows, n_cols), (row_stride, col_stride))
