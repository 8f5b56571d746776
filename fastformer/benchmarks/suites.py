"""Every op's benchmark suite behind one name: what ``fastformer bench --op NAME`` runs."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fastformer.benchmarks import attention, linear, norm, rotary
from fastformer.benchmarks.runner import Case

# Suite names, in the order the command runs them.
OPS = ("layer_norm", "rms_norm", "attention", "rotary", "linear")


def cases(
    op: str,
    device: torch.device,
    dtypes: Sequence[torch.dtype],
    norm_shapes: Sequence[tuple[int, int]] | None = None,
) -> list[Case]:
    """The cases of suite ``op`` on ``device`` (``norm_shapes`` overrides the norms' shapes)."""
    if op in norm.OPS:
        return norm.norm_cases(device, ops=(op,), dtypes=dtypes, shapes=norm_shapes)
    if op == "attention":
        return attention.attention_cases(device, dtypes=dtypes)
    if op == "rotary":
        return rotary.rotary_cases(device, dtypes=dtypes)
    if op == "linear":
        return linear.linear_cases(device, dtypes=dtypes)
    raise ValueError(f"op={op!r} is not one of {OPS}")
