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
"""

from __future__ import annotations

import torch

NAMESPACE = "fastformer_kernels"


def name(op: str) -> str:
    """The qualified name of one of fastformer's kernel ops."""
    return f"{NAMESPACE}::{op}"


def nothing(like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """An empty output slot on ``like``'s device (for an output a launch did not produce)."""
    return torch.empty(0, dtype=dtype or like.dtype, device=like.device)
