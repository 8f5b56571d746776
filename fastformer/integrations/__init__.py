"""Hugging Face transformers integration: ``optimize(model)`` and the ``"fastformer"`` attention.

- :func:`optimize` (also ``fastformer.optimize``): a transformers model on fastformer's kernels,
  in place, with an :class:`OptimizeReport`.
- :func:`register_attention`: registers ``"fastformer"`` with transformers' AttentionInterface
  (and the matching mask builder), for ``model.set_attn_implementation("fastformer")`` alone.
- :mod:`fastformer.integrations.minilm`: the packaged all-MiniLM-L6-v2, eager vs optimized.

This package imports transformers (lazily, inside the calls that need it).
"""

from fastformer.integrations.attention import (
    ATTENTION_NAME,
    fastformer_attention_forward,
    register_attention,
)
from fastformer.integrations.optimize import optimize
from fastformer.integrations.report import Eager, OptimizeReport, Replacement

__all__ = [
    "ATTENTION_NAME",
    "Eager",
    "OptimizeReport",
    "Replacement",
    "fastformer_attention_forward",
    "optimize",
    "register_attention",
]
