"""nn.Modules on fastformer's kernels, with the constructor arguments and parameter names of
their torch counterparts, so state_dicts load unchanged."""

from fastformer.nn.attention import MultiHeadAttention
from fastformer.nn.embeddings import (
    RelativePositionBias,
    SinusoidalPositionalEmbedding,
    TransformerEmbeddings,
)
from fastformer.nn.feed_forward import FeedForward, GatedFeedForward
from fastformer.nn.heads import (
    LanguageModelingHead,
    Pooler,
    SequenceClassificationHead,
    TokenClassificationHead,
    pool,
)
from fastformer.nn.norm import LayerNorm, RMSNorm
from fastformer.nn.rotary import RotaryEmbedding
from fastformer.nn.transformer import TransformerDecoderLayer, TransformerEncoderLayer

__all__ = ["LayerNorm", "RMSNorm"]
__all__ += ["FeedForward", "GatedFeedForward"]
__all__ += ["RotaryEmbedding"]
__all__ += ["MultiHeadAttention"]
__all__ += ["TransformerEmbeddings", "SinusoidalPositionalEmbedding", "RelativePositionBias"]
__all__ += ["TransformerEncoderLayer", "TransformerDecoderLayer"]
__all__ += ["pool", "Pooler", "SequenceClassificationHead", "TokenClassificationHead"]
__all__ += ["LanguageModelingHead"]
