"""Optional providers from other libraries: flash-attn's attention and Liger-Kernel's norms.

Each joins the suites only where its package imports (neither is a dependency of fastformer),
and the runner times it only on a GPU: flash-attn is CUDA code, and Liger's Triton kernels are
not meant for the CPU interpreter. Like every provider it is checked against the float64
reference before it is timed, so a version that computes something else gets a FAILED row.

- ``flash_attn``: ``flash_attn.flash_attn_func(q, k, v, causal=...)``, which takes
  ``(batch, seq, heads, head_dim)``; the suite's ``(batch, heads, seq, head_dim)`` tensors are
  handed over as transposed views (flash-attn copies them if it needs its own layout) and the
  result is transposed back. fp16 and bf16 only (flash-attn refuses fp32: a FAILED row says so).
  The decode suite takes ``flash_attn_with_kvcache(q, k_cache, v_cache, cache_seqlens=...)``
  from the same package the same way: the dense ``(batch, n_kv_heads, capacity, head_dim)``
  cache is handed over as a ``(batch, capacity, n_kv_heads, head_dim)`` view (flash-attn takes
  any strides but the last), with the int32 lengths.
- ``liger``: ``liger_kernel.transformers.functional.liger_layer_norm(X, W, B, eps)`` and
  ``liger_rms_norm(X, W, eps, ..., in_place=False)`` (in place, its backward overwrites the
  upstream gradient, which the timed replays reuse). Plain norms only: Liger has no form fused
  with the residual add.

Imports are attempted once per process, on first use; nothing is imported at module import.
"""

from __future__ import annotations

import functools
import importlib
import logging
from collections.abc import Callable

import torch

logger = logging.getLogger(__name__)

FLASH_ATTN = "flash_attn"
LIGER = "liger"
OPTIONAL = (FLASH_ATTN, LIGER)
# The module each provider needs, and the attribute it calls.
_SOURCES = {
    FLASH_ATTN: ("flash_attn", "flash_attn_func"),
    LIGER: ("liger_kernel.transformers.functional", None),
}


@functools.cache
def _module(name: str):
    """The imported module behind provider ``name``, or None (logged once) when it does not
    import."""
    module_name, attribute = _SOURCES[name]
    try:
        module = importlib.import_module(module_name)
        if attribute is not None:
            getattr(module, attribute)
    except Exception as error:  # any failure to import means the provider is absent
        logger.debug("optional provider %s not available: %s", name, error)
        return None
    return module


def available(name: str) -> bool:
    """Whether optional provider ``name`` (one of ``OPTIONAL``) can be used in this process."""
    if name not in OPTIONAL:
        raise ValueError(f"name={name!r} is not one of {OPTIONAL}")
    return _module(name) is not None


def reset() -> None:
    """Forget which imports failed (tests install stand-in modules)."""
    _module.cache_clear()


def flash_attention() -> Callable[..., torch.Tensor] | None:
    """The attention suite's flash-attn provider (its inputs' signature), or None."""
    module = _module(FLASH_ATTN)
    if module is None:
        return None

    def call(q, k, v, is_causal):
        bshd = [t.transpose(1, 2) for t in (q, k, v)]  # (B, H, S, D) -> (B, S, H, D)
        return module.flash_attn_func(*bshd, causal=is_causal).transpose(1, 2)

    return call


def flash_decode() -> Callable[..., torch.Tensor] | None:
    """The decode suite's flash-attn provider (``call(q, cache)``, ``cache`` holding
    ``k_cache``, ``v_cache`` and ``cache_seqlens``), or None (also when this flash-attn has no
    ``flash_attn_with_kvcache``)."""
    module = _module(FLASH_ATTN)
    if module is None or not hasattr(module, "flash_attn_with_kvcache"):
        return None

    def call(q, cache):
        out = module.flash_attn_with_kvcache(
            q.transpose(1, 2),  # (B, H, S, D) -> (B, S, H, D)
            cache.k_cache.transpose(1, 2),  # (B, Hkv, capacity, D) -> (B, capacity, Hkv, D)
            cache.v_cache.transpose(1, 2),
            cache_seqlens=cache.cache_seqlens,
        )
        return out.transpose(1, 2)  # (B, H, S, D)

    return call


def liger_norm(op: str) -> Callable[..., torch.Tensor] | None:
    """The norm suite's Liger provider for ``op`` ("layer_norm" or "rms_norm"), or None."""
    module = _module(LIGER)
    if module is None:
        return None
    if op == "layer_norm":
        return lambda x, normalized_shape, weight, bias, eps: module.liger_layer_norm(
            x, weight, bias, eps
        )
    if op == "rms_norm":
        # torch's rms_norm with eps=None uses the dtype's machine epsilon; pass it explicitly.
        return lambda x, normalized_shape, weight, eps=None: module.liger_rms_norm(
            x, weight, torch.finfo(x.dtype).eps if eps is None else eps, in_place=False
        )
    raise ValueError(f"op={op!r} is not one of ('layer_norm', 'rms_norm')")
