"""fastformer's attention as a transformers attention implementation named ``"fastformer"``.

transformers routes every attention module of the supported families through
``ALL_ATTENTION_FUNCTIONS.get_interface(config._attn_implementation, ...)``, calling
``fn(module, query, key, value, attention_mask, **kwargs)`` with (batch, heads, seq, head_dim)
tensors. :func:`register_attention` registers :func:`fastformer_attention_forward` under that
name with ``AttentionInterface.register`` and registers transformers' own SDPA mask builder
under the same name with ``AttentionMaskInterface.register``: the masks we receive are then
exactly the ones SDPA receives (a boolean ``(batch, 1, q, k)`` mask, True = take part, or None
when a plain causal or a full mask suffices). Without the mask registration transformers would
build no mask at all for an unknown implementation name (padding would be ignored). Nothing is
assigned into transformers' module globals.

Semantics follow transformers' SDPA path: ``is_causal`` (the call's, else the module's) applies
only when no mask is given and more than one query row is present; GQA goes to the kernel
directly (``enable_gqa``), without repeating k and v; T5's ``position_bias`` becomes a float mask
(its gradient reaches the relative-position embedding; masked-out places get -inf); under
``torch.autocast`` q, k and v are cast to the autocast dtype, as SDPA and eager's matmuls do
(the families' eager rotary leaves q and k in fp32 there). One difference, by design: a query
row that sees no key at all gets 0, where eager gives the mean of all values (transformers'
SDPA path gives 0 as well). In decoder-only and encoder models such rows (the padding rows of a
left-padded causal batch, a row that is all padding) never feed a real token; in an
encoder-decoder whose source row is all padding they do: the decoder's cross-attention then
contributes 0 there instead of the mean of the padding positions' values. Dropout draws from
fastformer's Philox stream, so its random masks differ from eager's (same distribution).

Cases the kernel does not take are handed to the family's own eager attention function (found
in the module's class hierarchy, read only), with a one-time warning naming the reason; see
``ATTENTION_LIMITS``. A mask form that eager could not take either (a flex ``BlockMask``)
raises TypeError.
"""

from __future__ import annotations

import logging
import math
import sys
import warnings

import torch

from fastformer.functional import _fallback, scaled_dot_product_attention
from fastformer.kernels.attention_common import MAX_HEAD_DIM

logger = logging.getLogger(__name__)

ATTENTION_NAME = "fastformer"
KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

# When the attention function hands a call to the family's eager attention (the report lists
# these, the warning names the one that applied).
ATTENTION_LIMITS = (
    "attention weights are requested (output_attentions=True): only eager computes them",
    "a logit soft-cap (softcap) or attention sinks (s_aux) are given: the kernel has neither",
    f"head_dim > {MAX_HEAD_DIM}, or the value head_dim differs from the query/key head_dim",
    "the tensors are not fp16, bf16 or fp32 (e.g. a model cast to float64 after optimize)",
    "query, key and value differ in dtype outside torch.autocast",
)

_warned: set[str] = set()


def register_attention() -> str:
    """Register ``"fastformer"`` with transformers' attention and mask registries (idempotent).

    Returns the name to pass to ``model.set_attn_implementation``.
    """
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTENTION_NAME, fastformer_attention_forward)
    AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)
    return ATTENTION_NAME


def _weights_requested(kwargs: dict) -> bool:
    """Whether this forward must return attention weights.

    Some models pop ``output_attentions`` before it reaches the attention modules (GPT-2) and
    record the weights through transformers' output-capturing hooks instead; the active
    collector (read, never written) says whether any attention weights are being recorded.
    """
    if kwargs.get("output_attentions"):
        return True
    try:
        from transformers.utils.output_capturing import _active_collector
    except ImportError:  # an older transformers: only the keyword argument tells
        return False
    collected = _active_collector.get()
    return bool(collected) and any(key.endswith("attentions") for key in collected)


def _eager_function(module: torch.nn.Module):
    """The family's ``eager_attention_forward``, from the modeling file of the module's class
    (or of its first ancestor that has one)."""
    for cls in type(module).__mro__:
        found = getattr(sys.modules.get(cls.__module__), "eager_attention_forward", None)
        if callable(found):
            return found
    return None


def _fallback_reason(query, key, value, kwargs) -> str | None:
    if _weights_requested(kwargs):
        return ATTENTION_LIMITS[0]
    if kwargs.get("softcap") is not None or kwargs.get("s_aux") is not None:
        return ATTENTION_LIMITS[1]
    head_dim = query.shape[-1]
    if head_dim > MAX_HEAD_DIM or value.shape[-1] != head_dim or key.shape[-1] != head_dim:
        return ATTENTION_LIMITS[2]
    if query.dtype not in KERNEL_DTYPES:
        return ATTENTION_LIMITS[3]
    if not query.dtype == key.dtype == value.dtype:
        return ATTENTION_LIMITS[4]
    return None


def _autocast(query, key, value):
    """q, k, v in the autocast dtype when ``torch.autocast`` is on for their device, as eager's
    matmuls (and SDPA) compute them. Under autocast the families' eager rotary returns q and k
    in fp32 (the product with fp32 cos/sin) next to a bf16/fp16 v."""
    device = query.device.type
    if not torch.is_autocast_enabled(device):
        return query, key, value
    dtype = torch.get_autocast_dtype(device)
    return tuple(t.to(dtype) if t.dtype in KERNEL_DTYPES else t for t in (query, key, value))


def _additive_mask(module, query, key, attention_mask, is_causal):
    """The mask as eager attention functions take it: additive, with causality written in.

    The masks built for this implementation are SDPA's (boolean, or None with causality left
    to ``is_causal``); eager functions add the mask to the scores and have no causal flag.
    """
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    if attention_mask is None and causal and query.shape[2] > 1:
        seq_q, seq_k = query.shape[2], key.shape[2]
        rows = torch.arange(seq_q, device=query.device)[:, None]
        attention_mask = rows >= torch.arange(seq_k, device=query.device)  # top-left, as SDPA
    if attention_mask is None or attention_mask.dtype != torch.bool:
        return attention_mask
    blocked = torch.finfo(query.dtype).min  # what transformers' eager masks add
    additive = torch.zeros(attention_mask.shape, dtype=query.dtype, device=query.device)
    return additive.masked_fill(~attention_mask, blocked)


def _eager(module, reason, query, key, value, attention_mask, **kwargs):
    attention_mask = _additive_mask(module, query, key, attention_mask, kwargs.get("is_causal"))
    eager = _eager_function(module)
    if eager is None:
        raise NotImplementedError(
            f"fastformer attention cannot run {type(module).__name__} ({reason}) and found no "
            "eager_attention_forward for it; use model.set_attn_implementation('eager')"
        )
    if reason not in _warned:
        _warned.add(reason)
        warnings.warn(
            f"fastformer attention: using eager attention for {type(module).__name__}: {reason}",
            _fallback.EagerFallbackWarning,
            stacklevel=3,
        )
    return eager(module, query, key, value, attention_mask, **kwargs)


def _mask_for_kernel(attention_mask, position_bias, dtype):
    """The one mask the kernel takes: boolean (True = take part) or additive float."""
    mask = attention_mask
    if mask is not None and mask.dtype != torch.bool and mask.dtype not in (dtype, torch.float32):
        mask = mask.to(torch.float32)
    if position_bias is None:
        return mask
    if position_bias.dtype not in (dtype, torch.float32):
        position_bias = position_bias.to(torch.float32)
    if mask is None:
        return position_bias
    if mask.dtype == torch.bool:
        return torch.where(mask, position_bias, -math.inf)
    return position_bias + mask


def fastformer_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    position_bias: torch.Tensor | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature on fastformer's scaled_dot_product_attention.

    Args:
        query: (batch, heads, seq_q, head_dim); key, value: (batch, kv_heads, seq_k, head_dim).
        attention_mask: None, a boolean mask (True = take part) or an additive float mask,
            broadcastable to (batch, heads, seq_q, seq_k).
        dropout: the attention dropout probability (transformers passes 0 in eval mode).
        scaling: the softmax scale (1 / sqrt(head_dim) when None; T5 passes 1).
        is_causal: overrides ``module.is_causal``.
        position_bias: T5's additive relative-position bias, (1 or batch, heads, seq_q, seq_k).
    Returns:
        ``(output, None)``: output (batch, seq_q, heads, head_dim) in query's dtype (a
        transposed view; callers reshape it). In a fallback, the eager function's pair.
    """
    if not isinstance(attention_mask, (torch.Tensor, type(None))):
        raise TypeError(
            f"fastformer attention got attention_mask of type {type(attention_mask).__name__}; "
            "expected a torch.Tensor or None (flex BlockMasks need attn_implementation="
            "'flex_attention')"
        )
    cast = _autocast(query, key, value)
    reason = _fallback_reason(*cast, kwargs)
    if reason is not None:
        if position_bias is not None:
            kwargs["position_bias"] = position_bias
        if is_causal is not None:
            kwargs["is_causal"] = is_causal
        return _eager(
            module, reason, query, key, value, attention_mask,
            dropout=dropout, scaling=scaling, **kwargs,
        )  # fmt: skip

    query, key, value = cast
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    causal = bool(causal) and query.shape[2] > 1 and attention_mask is None
    mask = _mask_for_kernel(attention_mask, position_bias, query.dtype)
    out = scaled_dot_product_attention(
        query,
        key,
        value,
        attn_mask=mask,
        dropout_p=float(dropout),
        is_causal=causal,
        scale=scaling,
        enable_gqa=query.shape[1] != key.shape[1],
    )  # (B, H, Sq, D)
    return out.transpose(1, 2), None  # (B, Sq, H, D)
