"""nn.Modules on fastformer's kernels, with the constructor arguments and parameter names of
their torch counterparts, so state_dicts load unchanged."""

from fastformer.nn.feed_forward import FeedForward, GatedFeedForward
from fastformer.nn.norm import LayerNorm, RMSNorm
from fastformer.nn.rotary import RotaryEmbedding

__all__ = ["LayerNorm", "RMSNorm"]
__all__ += ["FeedForward", "GatedFeedForward"]
__all__ += ["RotaryEmbedding"]
