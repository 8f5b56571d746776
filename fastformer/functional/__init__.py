"""The functional API: fastformer's public ops, with autograd."""

from fastformer.functional.norm import layer_norm, rms_norm

__all__ = ["layer_norm", "rms_norm"]
