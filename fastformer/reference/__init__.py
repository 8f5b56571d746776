"""Eager PyTorch references of every fastformer op, shared by tests and benchmarks.

Each reference computes in the dtype of its inputs: tests call it on float64 copies for the
ground truth and on the kernel's dtype for eager PyTorch's own error; benchmarks time it as the
eager provider. Signatures and return values match the public ops. One module per op family.
"""

from fastformer.reference.attention import scaled_dot_product_attention, varlen_attention
from fastformer.reference.decode import decode_attention, decode_positions, kv_cache_append_
from fastformer.reference.linear import gated_linear, linear
from fastformer.reference.norm import layer_norm, rms_norm
from fastformer.reference.rotary import apply_rotary

__all__ = ["scaled_dot_product_attention", "varlen_attention", "layer_norm", "rms_norm"]
__all__ += ["linear", "gated_linear"]
__all__ += ["apply_rotary"]
__all__ += ["decode_attention", "kv_cache_append_", "decode_positions"]
