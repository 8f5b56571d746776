"""fastformer: transformer parts on custom Triton kernels.

The public ops load on first use (``fastformer.layer_norm``), not at ``import fastformer``: the
kernels are defined then, so a caller (the command line, a test suite) can still choose Triton's
interpreter by setting ``TRITON_INTERPRET=1`` after importing the package.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# Public name -> the module that defines it.
_EXPORTS = {
    "scaled_dot_product_attention": "fastformer.functional",
    "varlen_attention": "fastformer.functional",
    "layer_norm": "fastformer.functional",
    "rms_norm": "fastformer.functional",
    "apply_rotary": "fastformer.functional",
    "linear": "fastformer.functional",
    "gated_linear": "fastformer.functional",
    "decode_attention": "fastformer.functional",
    "kv_cache_append_": "fastformer.functional",
    "rotate_queries": "fastformer.functional",
    "decode_positions": "fastformer.functional",
    "set_eager_fallback": "fastformer.functional._fallback",
    "eager_fallback": "fastformer.functional._fallback",
    "optimize": "fastformer.integrations",
}
_SUBMODULES = ("functional", "nn", "models", "reference", "testing", "integrations", "generation")
__all__ = [*_EXPORTS, *_SUBMODULES]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    if name in _SUBMODULES:
        return importlib.import_module(f"fastformer.{name}")
    raise AttributeError(f"module 'fastformer' has no attribute {name!r}")


def __dir__():
    return sorted({"__version__", *__all__})
