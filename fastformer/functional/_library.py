"""The torch.library namespace of fastformer's kernel launches, and what their definitions share.

Each public op checks its arguments in Python, then calls one custom op per kernel launch
(``torch.ops.fastformer_kernels.<name>``), registered with ``torch.library.custom_op``, a fake
(meta) implementation that gives the outputs' shapes, dtypes and strides without running
anything, and its autograd formula (another custom op for the backward launch). torch.compile
(``fullgraph=True`` included) traces the public op's checks and keeps each launch as one opaque
node, so fastformer's ops add no graph breaks; the launch itself runs unchanged (compiled Triton
on CUDA, the interpreter on CPU). ``torch.library.triton_op`` is not used: under Triton's
interpreter, compiling through it hands fake tensors to the kernels.

A custom op may not return None or a view of an input: an output with nothing in it is an
empty tensor (:func:`nothing`) that the caller drops, knowing from its own flags which
slots are empty (a real output can be empty too).

Dispatch cost: a call through the dispatcher runs torch.library's Python autograd and
aliasing wrappers, about 20 us per call on a CPU core (a plain function call: 1 us), which
would double the host time of a small launch in an eager decode step. So a :class:`KernelOp`
calls its implementation directly when nothing could observe the difference: not while
torch.compile traces, no gradient to record, no torch-function or dispatch mode active (fake
tensors, FlopCounterMode, opcheck), and plain tensors only (no subclass, no meta tensor).
Anything else goes through the dispatcher.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

NAMESPACE = "fastformer_kernels"
# Argument types that may take the direct call (Parameters are plain tensors to a kernel).
_PLAIN = (torch.Tensor, torch.nn.Parameter)


def name(op: str) -> str:
    """The qualified name of one of fastformer's kernel ops."""
    return f"{NAMESPACE}::{op}"


def direct_call_allowed(args: Sequence) -> bool:
    """Whether a kernel op may run its implementation without the dispatcher (see above)."""
    if torch.compiler.is_compiling():
        return False
    if torch._C._len_torch_dispatch_stack() or torch._C._is_torch_function_mode_enabled():
        return False
    grad = torch.is_grad_enabled()
    for arg in args:
        if isinstance(arg, torch.Tensor):
            if type(arg) not in _PLAIN or arg.is_meta or (grad and arg.requires_grad):
                return False
    return True


class KernelOp:
    """One kernel launch as a custom op: call it like the function it wraps."""

    def __init__(self, op: str, impl: Callable, mutates_args: tuple[str, ...]):
        self.custom_op = torch.library.custom_op(name(op), impl, mutates_args=mutates_args)
        self.impl = impl
        # The dispatcher's entry: calling the custom_op object takes a slower Python path.
        self.overload = getattr(getattr(torch.ops, NAMESPACE), op).default

    def register_fake(self, fake: Callable) -> Callable:
        self.custom_op.register_fake(fake)
        return fake

    def register_autograd(self, backward: Callable, *, setup_context: Callable) -> None:
        self.custom_op.register_autograd(backward, setup_context=setup_context)

    def __call__(self, *args):
        if direct_call_allowed(args):
            return self.impl(*args)
        return self.overload(*args)


def kernel_op(op: str, *, mutates_args: tuple[str, ...] = ()) -> Callable[[Callable], KernelOp]:
    """Decorator: register the function as the custom op ``fastformer_kernels::<op>``."""

    def decorate(impl: Callable) -> KernelOp:
        return KernelOp(op, impl, mutates_args)

    return decorate


def nothing(like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """An empty output slot on ``like``'s device (for an output a launch did not produce)."""
    return torch.empty(0, dtype=dtype or like.dtype, device=like.device)


def rows_copy(rows_tensor: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The contiguous copy ``_runtime.as_rows`` made of ``x`` (a layout that folds into no row
    and column strides), or an empty slot when it read ``x`` in place. A forward returns it so
    that its backward reads the copy instead of copying again (it may not return ``x``)."""
    return rows_tensor if rows_tensor is not x else nothing(x)
