"""Text generation on fastformer's kernels: prefill, KV-cache decode steps, sampling.

- :class:`Generator` / :func:`generate` (``loop``): the loop for transformers LLaMA-family and
  GPT-2 causal LMs; prefill with the fused attention, decode steps with the decode kernel,
  stop tokens, left- or right-padded batches, CUDA-graph capture of the decode step on a GPU.
- :class:`SamplingConfig`, :class:`Sampler`, :func:`filter_top_k`, :func:`filter_top_p`
  (``sampling``): greedy, temperature, top-k and top-p with a seed.
- :class:`KVCache`, :class:`CacheSpec` (``cache``): the preallocated cache of every layer and
  the rows' lengths.
- ``families``: how the loop runs each supported family's layers; ``graphs``: the capture;
  ``cli``: ``fastformer generate``.

The names load on first use, as the package root's do: importing ``fastformer.generation`` (or
its ``cli``) defines no kernel, so the command line can still choose Triton's interpreter.
Nothing here imports transformers; the command line does, inside the command.
"""

from __future__ import annotations

import importlib

# Public name -> the module that defines it.
_EXPORTS = {
    "CacheSpec": "fastformer.generation.cache",
    "KVCache": "fastformer.generation.cache",
    "GenerationOutput": "fastformer.generation.loop",
    "Generator": "fastformer.generation.loop",
    "generate": "fastformer.generation.loop",
    "Sampler": "fastformer.generation.sampling",
    "SamplingConfig": "fastformer.generation.sampling",
    "filter_top_k": "fastformer.generation.sampling",
    "filter_top_p": "fastformer.generation.sampling",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'fastformer.generation' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *__all__])
