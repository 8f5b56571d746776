"""CUDA-graph capture of one decode step.

A decode step (one token per row through every layer, into the KV cache) launches a few
kernels per layer, each too short to hide the launch: on a GPU the step is bound by launch
overhead. Recording it once in a CUDA graph and replaying it costs one launch per step.

Design: :class:`CapturedStep` owns a static ``tokens`` buffer (batch, 1) int64; ``step(tokens)``
must read only that buffer, the cache and the weights, write the cache in place, advance the
cache's lengths in place and return the logits, with no host synchronisation and no allocation
whose address matters afterwards (outputs come from the graph's private pool). Before capture
the step runs ``WARMUP_STEPS`` times on a side stream so every Triton kernel is compiled and
autotuned (autotuning cannot run inside a capture); those runs write the cache at each row's
next position and advance the lengths, so the lengths are saved before and restored after
(the positions written are rewritten by the first real step).

Limits: CUDA only; the graph is bound to one cache (its buffers' addresses) and one batch
size; the logits returned by :meth:`CapturedStep.__call__` are overwritten by the next replay.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from fastformer.generation.cache import KVCache

# Uncaptured runs before capture: the first compiles and autotunes, the second runs warm.
WARMUP_STEPS = 2


class CapturedStep:
    """``step`` recorded in a CUDA graph for ``cache``; call it with (batch,) or (batch, 1)
    int64 tokens, get the (batch, vocab) logits (a static buffer)."""

    def __init__(self, step: Callable[[torch.Tensor], torch.Tensor], cache: KVCache) -> None:
        if cache.device.type != "cuda":
            raise ValueError(
                f"CUDA-graph capture needs a CUDA cache; this one is on {cache.device}"
            )
        self.cache = cache
        self.tokens = torch.zeros(cache.batch, 1, dtype=torch.long, device=cache.device)
        saved_lengths = cache.lengths.clone()
        side = torch.cuda.Stream(device=cache.device)
        side.wait_stream(torch.cuda.current_stream(cache.device))
        with torch.cuda.stream(side):
            for _ in range(WARMUP_STEPS):
                step(self.tokens)
                cache.lengths.copy_(saved_lengths)
        torch.cuda.current_stream(cache.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logits = step(self.tokens)
        # Capture records without running: the lengths are still those saved.

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        self.tokens.copy_(tokens.view(-1, 1))
        self.graph.replay()
        return self.logits
