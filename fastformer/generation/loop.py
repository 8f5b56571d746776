"""The generation loop: prefill with fused attention, then decode steps over a KV cache.

    generator = Generator(model)                       # a transformers LLaMA-family or GPT-2 LM
    out = generator.generate(input_ids, attention_mask, max_new_tokens=32,
                             sampling=SamplingConfig(temperature=0.8, top_p=0.9, seed=0),
                             stop_token_ids=[eos_id], streamer=None)
    out.tokens            # (batch, steps) new tokens, pad_token_id after a row's stop token

Why a fastformer loop and not Hugging Face ``generate`` on an optimized model: ``generate``
keeps the keys in transformers' own cache classes and hands attention the whole cached key
tensor each step, so the step cannot use the decode kernel (split-K over the cache, the rotary
append fused into the cache write), and its growing cache and Python-side bookkeeping rule out
capturing the step in a CUDA graph. This loop owns a preallocated cache
(:class:`~fastformer.generation.cache.KVCache`) and calls the model's own modules for
everything but attention (see :mod:`fastformer.generation.families`), so its decode step has
fixed shapes and addresses. ``generate`` on ``fastformer.optimize(model)`` still works (the
integration's attention and rotary serve it) and is the path for families this loop lacks.
Run :func:`fastformer.optimize` on the model first for its norms and feed-forward blocks on
fastformer's kernels; without it they stay eager (attention and the cache are fastformer's
either way).

Per step: the prompt (prefill) runs once over all its tokens: rotary on q and k in one launch,
the keys and values appended to the cache (``new_seqlens``: each row's own length), then
:func:`fastformer.scaled_dot_product_attention` (causal); only each row's last real token goes
through the final norm and head. A decode step feeds one token per row: the query is rotated at
the row's length, the key rotated inside the cache append, then :func:`fastformer.decode_attention`
reads the row's cache. Lengths are validated (one host read) on the first layer of each
uncaptured step; the other calls pass ``validate=False``.

Padding: ``attention_mask`` may pad rows on the left (as Hugging Face tokenizers do for
generation) or on the right; each row's tokens are moved to the front, so every row starts at
position 0 of its own cache row and computes exactly what it would alone. Stopping: a row ends
at its first stop token (kept in its output); later tokens of that row are ``pad_token_id``;
the loop ends when every row has stopped or after ``max_new_tokens``.

CUDA graphs: on a CUDA device the decode step is captured once per cache
(:mod:`fastformer.generation.graphs`) and replayed; the cache (and so the graph) is kept for the
next call with the same batch size and dtype while it is large enough. Sampling runs outside
the graph.

Limits: batch-wide sampling settings; no beam search, no speculative decoding; prefill runs
the whole prompt at once (no chunking); a prompt row needs at least one token.
"""

from __future__ import annotations

import logging
import numbers
import time
from dataclasses import dataclass

import torch

from fastformer.functional import (
    apply_rotary,
    decode_attention,
    decode_positions,
    kv_cache_append_,
    rotate_queries,
    scaled_dot_product_attention,
)
from fastformer.generation.cache import KERNEL_DTYPES, KVCache
from fastformer.generation.families import family_of
from fastformer.generation.graphs import CapturedStep
from fastformer.generation.sampling import Sampler, SamplingConfig

logger = logging.getLogger(__name__)

# A cache the loop allocates itself is rounded up to this many positions, so calls with
# slightly different prompt lengths reuse it (and its CUDA graph).
CAPACITY_ROUNDING = 64


@dataclass
class GenerationOutput:
    """What :meth:`Generator.generate` returns.

    Attributes:
        tokens: (batch, steps) int64 new tokens; ``pad_token_id`` after a row's stop token.
        new_tokens: per row, tokens generated up to and including its stop token.
        prompt_lengths: per row, the prompt's tokens (padding excluded).
        logits: with ``return_logits``, one (batch, vocab) tensor per step, in the model's
            dtype: the logits the step's token was chosen from.
        prefill_seconds: wall-clock time of the prefill and the first token's choice.
        decode_seconds, decode_steps: wall-clock time and number of the decode steps (the
            CUDA-graph capture, when one happens, is timed apart in ``capture_seconds``).
        captured: whether the decode steps ran as a CUDA-graph replay.
    """

    tokens: torch.Tensor
    new_tokens: list[int]
    prompt_lengths: list[int]
    logits: list[torch.Tensor] | None = None
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    decode_steps: int = 0
    captured: bool = False
    capture_seconds: float = 0.0

    @property
    def decode_tokens_per_second(self) -> float:
        """Tokens per second of the decode steps (batch rows count once each per step)."""
        done = self.decode_steps * self.tokens.shape[0]
        return done / self.decode_seconds if self.decode_seconds > 0 else float("nan")

    @property
    def tokens_per_second(self) -> float:
        """New tokens (stop tokens included, padding not) per second, prefill included."""
        total = self.prefill_seconds + self.decode_seconds
        return sum(self.new_tokens) / total if total > 0 else float("nan")


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Generator:
    """Generation for one transformers causal LM (see the module docstring).

    Args:
        model: a ``LlamaForCausalLM``-family or ``GPT2LMHeadModel`` in eval mode, fp32, fp16 or
            bf16, on a CUDA device (compiled kernels) or the CPU (Triton's interpreter).
        cuda_graph: capture the decode step in a CUDA graph: None (default) on CUDA devices,
            True (CUDA only), False never.

    The model's dtype and device are read here: build the generator after ``.to()``. The
    generator keeps its last cache (and CUDA graph) for the next call; one generator serves
    one caller at a time.
    """

    def __init__(self, model: torch.nn.Module, *, cuda_graph: bool | None = None) -> None:
        self.family = family_of(model)
        self.model = model
        param = next(model.parameters())
        self.dtype, self.device = param.dtype, param.device
        if self.dtype not in KERNEL_DTYPES:
            raise TypeError(
                f"the model's dtype is {self.dtype}; fastformer's kernels take {KERNEL_DTYPES}"
            )
        if cuda_graph is not None and not isinstance(cuda_graph, bool):
            raise TypeError(f"cuda_graph={cuda_graph!r} must be a bool or None")
        if cuda_graph and self.device.type != "cuda":
            raise ValueError(
                f"cuda_graph=True needs a model on a CUDA device; it is on {self.device}"
            )
        self.cuda_graph = self.device.type == "cuda" if cuda_graph is None else cuda_graph
        self._cache: KVCache | None = None
        self._captured: CapturedStep | None = None

    # --- the cache ---------------------------------------------------------------------------

    def allocate_cache(self, batch: int, capacity: int) -> KVCache:
        """A cache for ``batch`` rows of ``capacity`` positions, in the model's dtype."""
        return KVCache.allocate(
            self.family.spec, batch, capacity, dtype=self.dtype, device=self.device
        )

    def _cache_for(self, batch: int, needed: int, cache: KVCache | None) -> KVCache:
        if cache is not None:
            if not isinstance(cache, KVCache):
                raise TypeError(f"cache must be a KVCache, got {type(cache).__name__}")
            cache.check(self.family.spec, batch=batch, dtype=self.dtype, device=self.device)
            return cache
        held = self._cache
        if held is None or held.batch != batch or held.capacity < needed:
            capacity = -(-needed // CAPACITY_ROUNDING) * CAPACITY_ROUNDING
            if self.family.max_positions is not None:
                capacity = min(capacity, self.family.max_positions)
            self._cache, self._captured = self.allocate_cache(batch, capacity), None
        return self._cache

    # --- one forward -------------------------------------------------------------------------

    def _rotary(self):
        family = self.family
        inv_freq = family.inv_freq
        return (None, 1.0) if inv_freq is None else (inv_freq, family.attention_scaling)

    def prefill(self, ids: torch.Tensor, lengths: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """ids (B, S) with each row's ``lengths[b]`` tokens first, into an empty ``cache``
        (lengths 0, as :meth:`KVCache.reset` leaves it: the attention sees the prompt's own
        keys only); advances the lengths in place; returns the (B, vocab) logits after each
        row's last token."""
        inv_freq, scaling = self._rotary()
        positions = decode_positions(cache.lengths, ids.shape[1])  # (B, S)
        new_lengths = [cache.lengths]

        def attend(index, q, k, v, scale):
            if inv_freq is not None:
                q, k = apply_rotary(
                    q, k, inv_freq, position_ids=positions, attention_scaling=scaling
                )  # (B, S, H, D), (B, S, Hkv, D)
            q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, heads, S, D)
            k_cache, v_cache = cache.layer(index)
            new_lengths[0] = kv_cache_append_(
                k_cache, v_cache, k, v, cache.lengths, new_seqlens=lengths, validate=index == 0
            )
            out = scaled_dot_product_attention(
                q, k, v, is_causal=True, scale=scale, enable_gqa=True
            )
            return out.transpose(1, 2)  # (B, S, H, D)

        hidden = self.family.embed(ids, positions)  # (B, S, E)
        for index in range(self.family.spec.n_layers):
            hidden = self.family.layer(index, hidden, attend)
        last = (lengths.long() - 1).view(-1, 1, 1).expand(-1, 1, hidden.shape[2])  # (B, 1, E)
        logits = self.family.logits(hidden.gather(1, last)[:, 0])  # (B, V)
        cache.lengths.copy_(new_lengths[0])
        return logits

    def decode_step(self, tokens: torch.Tensor, cache: KVCache, validate: bool = False):
        """tokens (B, 1) int64, one per row, at each row's next position; appends to ``cache``
        and advances its lengths in place; returns the (B, vocab) logits. No host sync unless
        ``validate`` (so it can be captured in a CUDA graph)."""
        inv_freq, scaling = self._rotary()
        lengths = cache.lengths

        def attend(index, q, k, v, scale):
            q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, heads, 1, D)
            if inv_freq is not None:
                q = rotate_queries(q, inv_freq, lengths, attention_scaling=scaling)
            k_cache, v_cache = cache.layer(index)
            new_lengths = kv_cache_append_(
                k_cache, v_cache, k, v, lengths, inv_freq=inv_freq, attention_scaling=scaling,
                validate=validate and index == 0,
            )  # fmt: skip
            out = decode_attention(q, k_cache, v_cache, new_lengths, scale=scale, validate=False)
            return out.transpose(1, 2)  # (B, 1, H, D)

        hidden = self.family.embed(tokens, lengths.long()[:, None])  # (B, 1, E)
        for index in range(self.family.spec.n_layers):
            hidden = self.family.layer(index, hidden, attend)
        logits = self.family.logits(hidden[:, 0])  # (B, V)
        lengths.add_(1)
        return logits

    # --- the loop ----------------------------------------------------------------------------

    def _check_prompt(self, input_ids, attention_mask):
        """(ids moved so each row's tokens come first (B, S), lengths (B,) int32, host list)."""
        if not isinstance(input_ids, torch.Tensor):
            raise TypeError(f"input_ids must be a torch.Tensor, got {type(input_ids).__name__}")
        if input_ids.dim() != 2 or input_ids.shape[0] == 0 or input_ids.shape[1] == 0:
            raise ValueError(
                f"input_ids.shape={tuple(input_ids.shape)}; expected (batch, seq), non-empty"
            )
        if input_ids.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"input_ids.dtype={input_ids.dtype}; expected torch.int64 or int32")
        if input_ids.device != self.device:
            raise ValueError(f"input_ids is on {input_ids.device}; the model is on {self.device}")
        ids = input_ids.long()
        if attention_mask is None:
            mask = torch.ones_like(ids, dtype=torch.bool)
        else:
            if not isinstance(attention_mask, torch.Tensor):
                raise TypeError(
                    f"attention_mask must be a torch.Tensor, got {type(attention_mask).__name__}"
                )
            if attention_mask.shape != ids.shape or attention_mask.device != ids.device:
                raise ValueError(
                    f"attention_mask.shape={tuple(attention_mask.shape)} on "
                    f"{attention_mask.device}; expected {tuple(ids.shape)} on {ids.device}"
                )
            if attention_mask.dtype.is_floating_point or attention_mask.dtype.is_complex:
                raise TypeError(
                    f"attention_mask.dtype={attention_mask.dtype}; expected 0/1 ints or bool"
                )
            if ((attention_mask != 0) & (attention_mask != 1)).any():
                raise ValueError("attention_mask holds values other than 0 and 1")
            mask = attention_mask.bool()
        lengths = mask.sum(dim=1)  # (B,)
        runs = (mask[:, 1:] != mask[:, :-1]).sum(dim=1)
        bad_shape = runs > 1  # neither 0..01..1 (left padding) nor 1..10..0 (right)
        for name, bad in (("is empty", lengths == 0), ("has holes in its mask", bad_shape)):
            rows = bad.nonzero().flatten().tolist()
            if rows:
                raise ValueError(
                    f"prompt row {rows[0]} {name}: each row must be one run of real tokens, "
                    "padded on the left or on the right only"
                )
        vocab = self.family.vocab_size
        outside = (ids < 0) | (ids >= vocab)
        outside &= mask
        if outside.any():
            b, t = outside.nonzero()[0].tolist()
            raise ValueError(
                f"input_ids[{b}, {t}]={ids[b, t].item()}; the vocabulary has {vocab} tokens"
            )
        ids = ids.masked_fill(~mask, 0)  # padding ids may lie outside the vocabulary
        order = torch.argsort((~mask).to(torch.int32), dim=1, stable=True)  # real tokens first
        return ids.gather(1, order), lengths.to(torch.int32), lengths.tolist()

    def _check_stops(self, stop_token_ids, pad_token_id) -> tuple[list[int], int]:
        stops = [] if stop_token_ids is None else stop_token_ids
        if _is_int(stops):
            stops = [stops]
        if not isinstance(stops, (list, tuple)) or not all(_is_int(t) for t in stops):
            raise TypeError(f"stop_token_ids={stop_token_ids!r}; expected an int, ints or None")
        vocab = self.family.vocab_size
        for name, token in [
            *(("stop_token_ids", t) for t in stops),
            ("pad_token_id", pad_token_id),
        ]:
            if token is not None and (not _is_int(token) or not 0 <= token < vocab):
                raise ValueError(f"{name} holds {token!r}; expected a token id in [0, {vocab})")
        if pad_token_id is None:
            pad_token_id = stops[0] if stops else 0
        return [int(t) for t in stops], int(pad_token_id)

    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        max_new_tokens: int,
        sampling: SamplingConfig | None = None,
        stop_token_ids=None,
        pad_token_id: int | None = None,
        cache: KVCache | None = None,
        streamer=None,
        return_logits: bool = False,
    ) -> GenerationOutput:
        """Generate up to ``max_new_tokens`` tokens per row after ``input_ids``.

        Args:
            input_ids: (batch, seq) int64/int32 on the model's device.
            attention_mask: (batch, seq) 0/1 (or bool), left or right padding; None: no padding.
            max_new_tokens: >= 1. Each row needs ``its prompt + max_new_tokens`` positions in
                the cache (and, with learned positions, in the model).
            sampling: a :class:`SamplingConfig`; None: greedy.
            stop_token_ids: an int or ints that end a row (kept in its output); None: none.
            pad_token_id: fills a row after its stop; None: the first stop token (or 0).
            cache: a :class:`KVCache` (``allocate_cache``) to fill; None: the generator's own.
            streamer: an object with ``put(tokens)`` and ``end()`` (Hugging Face's
                ``TextStreamer`` works): the prompt ids first (as ``generate`` does), then each
                step's (batch,) tokens, on the CPU.
            return_logits: keep each step's logits in the output.
        """
        if not _is_int(max_new_tokens):
            raise TypeError(f"max_new_tokens={max_new_tokens!r} must be an int")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={max_new_tokens}; expected at least 1")
        sampling = SamplingConfig() if sampling is None else sampling
        if not isinstance(sampling, SamplingConfig):
            raise TypeError(f"sampling must be a SamplingConfig, got {type(sampling).__name__}")
        if self.model.training:
            raise ValueError(
                f"{type(self.model).__name__} is in training mode (dropout on); call model.eval()"
            )
        stops, pad = self._check_stops(stop_token_ids, pad_token_id)
        ids, lengths, host_lengths = self._check_prompt(input_ids, attention_mask)
        needed = max(host_lengths) + max_new_tokens
        limit = self.family.max_positions
        if limit is not None and needed > limit:
            raise ValueError(
                f"a prompt of {max(host_lengths)} tokens + max_new_tokens={max_new_tokens} = "
                f"{needed} positions; the model's learned positions stop at {limit}"
            )
        batch = ids.shape[0]
        cache = self._cache_for(batch, needed, cache)
        if needed > cache.capacity:
            raise ValueError(
                f"a prompt of {max(host_lengths)} tokens + max_new_tokens={max_new_tokens} = "
                f"{needed} positions; the cache holds {cache.capacity} per row"
            )
        with torch.inference_mode():
            return self._run(
                ids[:, : max(host_lengths)], lengths, host_lengths, cache, max_new_tokens,
                Sampler(sampling, self.device), stops, pad, streamer, return_logits, input_ids,
            )  # fmt: skip

    def _step_function(self, cache: KVCache):
        """The decode step to call in the loop, captured in a CUDA graph when enabled: (step,
        whether it is a graph replay, whether it was captured just now)."""
        if not self.cuda_graph:
            return (lambda tokens: self.decode_step(tokens, cache, validate=True)), False, False
        fresh = self._captured is None or self._captured.cache is not cache
        if fresh:
            self._captured = CapturedStep(lambda tokens: self.decode_step(tokens, cache), cache)
        return self._captured, True, fresh

    def _run(
        self, ids, lengths, host_lengths, cache, max_new_tokens, sampler, stops, pad, streamer,
        return_logits, input_ids,
    ):  # fmt: skip
        device = self.device
        batch = ids.shape[0]
        stop_ids = torch.tensor(stops, dtype=torch.long, device=device)
        finished = torch.zeros(batch, dtype=torch.bool, device=device)
        host_finished, new_tokens = [False] * batch, [0] * batch
        chosen, kept_logits = [], []

        def choose(logits: torch.Tensor) -> torch.Tensor:
            """The step's tokens (B,); updates the stop state; one host read."""
            if return_logits:
                kept_logits.append(logits.clone())  # a captured step reuses its buffer
            tokens = sampler(logits)
            tokens = torch.where(finished, torch.full_like(tokens, pad), tokens)  # (B,)
            finished.logical_or_(torch.isin(tokens, stop_ids))
            chosen.append(tokens)
            host_tokens = tokens.tolist()
            for b, token in enumerate(host_tokens):
                if not host_finished[b]:
                    new_tokens[b] += 1
                    host_finished[b] = token in stops
            if streamer is not None:
                streamer.put(torch.tensor(host_tokens))
            return tokens

        if streamer is not None:
            streamer.put(input_ids.cpu())
        _synchronize(device)
        start = time.perf_counter()
        cache.reset()
        tokens = choose(self.prefill(ids, lengths, cache))
        prefill_seconds = time.perf_counter() - start
        decode_steps, decode_seconds, capture_seconds, captured = 0, 0.0, 0.0, False
        if max_new_tokens > 1 and not all(host_finished):
            start = time.perf_counter()
            step, captured, fresh = self._step_function(cache)
            _synchronize(device)
            capture_seconds = time.perf_counter() - start if fresh else 0.0
            start = time.perf_counter()
            while decode_steps < max_new_tokens - 1 and not all(host_finished):
                tokens = choose(step(tokens.view(-1, 1)))
                decode_steps += 1
            decode_seconds = time.perf_counter() - start
        if streamer is not None:
            streamer.end()
        logger.info(
            "generated %s tokens: prefill %.3f s, %d decode steps in %.3f s%s",
            new_tokens, prefill_seconds, decode_steps, decode_seconds,
            f" (CUDA graph, captured in {capture_seconds:.3f} s)" if captured else "",
        )  # fmt: skip
        return GenerationOutput(
            tokens=torch.stack(chosen, dim=1),
            new_tokens=new_tokens,
            prompt_lengths=list(host_lengths),
            logits=kept_logits if return_logits else None,
            prefill_seconds=prefill_seconds,
            decode_seconds=decode_seconds,
            decode_steps=decode_steps,
            captured=captured,
            capture_seconds=capture_seconds,
        )


def generate(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask=None, **kwargs):
    """One-shot :meth:`Generator.generate` (builds a :class:`Generator`; keep one instead to
    reuse its cache and CUDA graph across calls)."""
    cuda_graph = kwargs.pop("cuda_graph", None)
    return Generator(model, cuda_graph=cuda_graph).generate(input_ids, attention_mask, **kwargs)
