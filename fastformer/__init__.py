"""fastformer: transformer parts on custom Triton kernels."""

from fastformer.functional import layer_norm, rms_norm

__version__ = "0.1.0"
__all__ = ["layer_norm", "rms_norm"]
