"""Text generation on fastformer's kernels: prefill, KV-cache decode steps, sampling.

- :class:`Generator` / :func:`generate` (``loop``): the loop for transformers LLaMA-family and
  GPT-2 causal LMs; prefill with the fused attention, decode steps with the decode kernel,
  stop tokens, left- or right-padded batches, CUDA-graph capture of the decode step on a GPU.
- :class:`SamplingConfig`, :class:`Sampler`, :func:`filter_top_k`, :func:`filter_top_p`
  (``sampling``): greedy, temperature, top-k and top-p with a seed.
- :class:`KVCache` (``cache``): the preallocated cache of every layer and the rows' lengths.
- ``families``: how the loop runs each supported family's layers; ``graphs``: the capture;
  ``cli``: ``fastformer generate``.

Nothing here imports transformers; the command line does, inside the command.
"""

from fastformer.generation.cache import CacheSpec, KVCache
from fastformer.generation.loop import GenerationOutput, Generator, generate
from fastformer.generation.sampling import Sampler, SamplingConfig, filter_top_k, filter_top_p

__all__ = [
    "CacheSpec",
    "GenerationOutput",
    "Generator",
    "KVCache",
    "Sampler",
    "SamplingConfig",
    "filter_top_k",
    "filter_top_p",
    "generate",
]
