"""The functional API: fastformer's public ops, with autograd."""

from fastformer.functional.attention import scaled_dot_product_attention, varlen_attention
from fastformer.functional.decode import (
    decode_attention,
    decode_positions,
    kv_cache_append_,
    rotate_queries,
)
from fastformer.functional.linear import gated_linear, linear
from fastformer.functional.norm import layer_norm, rms_norm
from fastformer.functional.rotary import apply_rotary

__all__ = ["scaled_dot_product_attention", "varlen_attention", "layer_norm", "rms_norm"]
__all__ += ["linear", "gated_linear"]
__all__ += ["apply_rotary"]
__all__ += ["decode_attention", "kv_cache_append_", "rotate_queries", "decode_positions"]
