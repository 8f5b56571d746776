"""Every benchmark suite behind one name: what ``fastformer bench --suite S --op NAME`` runs.

Two suites: "kernels", one per op (``OPS``: each kernel against eager PyTorch and the other
providers; ``decode_attention`` and ``kv_cache_append`` are :mod:`fastformer.benchmarks.decode`),
and "models" (whole models, :mod:`fastformer.benchmarks.models`, built through
:func:`fastformer.benchmarks.models.model_suite`, which raises ``SuiteUnavailable`` until
``fastformer.optimize`` exists; then the generation cases, decode steps and prefill of
transformers LLaMA models, :mod:`fastformer.benchmarks.generation`). "all" is both, kernels
first.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fastformer.benchmarks import attention, decode, linear, norm, rotary
from fastformer.benchmarks.runner import Case

# Kernel suites (ops), in the order the command runs them.
OPS = (
    "layer_norm",
    "rms_norm",
    "attention",
    "rotary",
    "linear",
    "decode_attention",
    "kv_cache_append",
)
KERNELS = "kernels"
MODELS = "models"
ALL = "all"
SUITES = (KERNELS, MODELS)


def expand(suite: str) -> tuple[str, ...]:
    """The suites ``suite`` names: itself, or both for "all"."""
    if suite == ALL:
        return SUITES
    if suite not in SUITES:
        raise ValueError(f"suite={suite!r} is not one of {(*SUITES, ALL)}")
    return (suite,)


def cases(
    op: str,
    device: torch.device,
    dtypes: Sequence[torch.dtype],
    norm_shapes: Sequence[tuple[int, int]] | None = None,
) -> list[Case]:
    """The cases of kernel suite ``op`` on ``device`` (``norm_shapes`` overrides the norms'
    shapes)."""
    if op in norm.OPS:
        return norm.norm_cases(device, ops=(op,), dtypes=dtypes, shapes=norm_shapes)
    if op == "attention":
        return attention.attention_cases(device, dtypes=dtypes)
    if op == "rotary":
        return rotary.rotary_cases(device, dtypes=dtypes)
    if op == "linear":
        return linear.linear_cases(device, dtypes=dtypes)
    if op == "decode_attention":
        return decode.decode_cases(device, dtypes=dtypes)
    if op == "kv_cache_append":
        return decode.append_cases(device, dtypes=dtypes)
    raise ValueError(f"op={op!r} is not one of {OPS}")
