"""Autograd helpers shared by the ops' Functions."""

from __future__ import annotations

import torch


def refuse_double_backward(op: str) -> None:
    """Raise when a backward runs under create_graph=True.

    ``once_differentiable`` is not enough: it raises only when the incoming gradient requires
    grad, and a loss linear in the output (``out.sum()``) gives one that does not, so a second
    derivative would silently come back as a constant.
    """
    if torch.is_grad_enabled():
        raise RuntimeError(
            f"fastformer's {op} has no double backward (create_graph=True): its gradients "
            "cannot themselves be differentiated"
        )
