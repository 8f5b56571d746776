"""The generation cases of the models suite: tokens per second of a decode step on a filled KV
cache, and the prefill's latency, for transformers LLaMA models with random weights.

Providers (names as the table shows them):

- ``eager``: transformers' own forward (the model's default attention) with its
  ``DynamicCache``, as ``generate`` runs by default. Prefill: the prompt's forward into a new
  cache.
- ``compile``: transformers' ``StaticCache`` with ``torch.compile(model.forward,
  mode="reduce-overhead", fullgraph=True)`` (its documented recipe; CUDA graphs). GPU only. Its
  prefill is not timed: transformers compiles the decode step only.
- ``ff_nograph``: :class:`fastformer.generation.Generator` on ``fastformer.optimize(model)``,
  its decode step uncaptured (lengths validated on the host, as the loop does). GPU only (on
  the CPU it is ``fastformer``).
- ``fastformer``: the same Generator with its default: the decode step captured in a CUDA
  graph on a GPU, uncaptured on the CPU. Prefill: :meth:`Generator.prefill` into an emptied
  cache (both fastformer providers' prefill is the same; ``fastformer`` times it).

How a step is timed: the prompt (``context`` random tokens per row) fills the provider's cache
once; the timed call runs one decode step of one random token per row on that cache and rewinds
the cache by that token (transformers' ``cache.crop(-1)``, fastformer's lengths copied back), so
every call sees the same ``context`` cached tokens. The rewind is inside the timed call (a few
microseconds: slicing each layer's tensors, or one tiny copy). Tokens per second = batch /
step time (decode) or batch x context / prefill time.

Correctness, before any timing: each provider's next-token logits (its first step on the filled
cache) against float64 logits of the prompt plus that token through the same weights
(:func:`fastformer.testing.compare`: at most ``ERROR_FACTOR`` times eager's error in the dtype,
plus a floor; eager's logits come from its own step). A provider that fails the check, or
raises, gets FAILED rows.

Models, bf16 on a GPU: ``smollm2-135m`` (SmolLM2-135M's shape: 30 layers, hidden 576, 9 query
and 3 KV heads, FFN 1536, vocabulary 49152, tied embeddings) at batch 1 and 16, and
``llama-1b`` (a 1B LLaMA-3.2-like config: 16 layers, hidden 2048, 32/8 heads, FFN 8192,
vocabulary 128256) at batch 1, each over a 1024-token prompt. On the CPU the kernels run in
Triton's interpreter: a two-layer model of 64 features, 2 rows of 16 tokens, eager against
fastformer, one timed call each (its times are interpreter times, not GPU performance).

Compiling a model takes tens of seconds on a GPU: the compile provider is skipped (and listed
as not run) when less than ``COMPILE_RESERVE_S`` seconds of the suite's time share are left.
"""

from __future__ import annotations

import gc
import importlib
import inspect
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial

import torch

from fastformer import testing
from fastformer.benchmarks import device as devices
from fastformer.benchmarks.runner import (
    COMPILE,
    EAGER,
    FASTFORMER,
    SEED,
    Row,
    add_speedups,
    make_row,
    timed_row,
)

logger = logging.getLogger(__name__)

FF_NO_GRAPH = "ff_nograph"
# In the order they run: compile last, as the one a spent time budget leaves out first.
GENERATION_PROVIDERS = (EAGER, FASTFORMER, FF_NO_GRAPH, COMPILE)
GPU_ONLY = (COMPILE, FF_NO_GRAPH)
DECODE, PREFILL = "decode", "prefill"
GENERATION_MODES = (DECODE, PREFILL)
DEFAULT_DTYPE = torch.bfloat16
# Untimed steps after the check and before timing (torch.compile's CUDA graphs record on the
# second or third call; the other providers are warm after one).
WARM_STEPS = 3
CPU_WARM_STEPS = 1
# The compile provider starts only with this much of the suite's share left: compiling a
# 30-layer decode step takes tens of seconds.
COMPILE_RESERVE_S = 45.0
# The CPU stand-in times one call (the interpreter takes a fraction of a second per step).
CPU_MIN_REPS = 1
CPU_WARMUP_CALLS = 0

SMOLLM2_135M = dict(
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    vocab_size=49152,
    max_position_embeddings=8192,
    rope_theta=100000.0,
    rms_norm_eps=1e-5,
    tie_word_embeddings=True,
)
LLAMA_1B = dict(
    hidden_size=2048,
    intermediate_size=8192,
    num_hidden_layers=16,
    num_attention_heads=32,
    num_key_value_heads=8,
    vocab_size=128256,
    max_position_embeddings=8192,
    rope_theta=500000.0,
    rms_norm_eps=1e-5,
    tie_word_embeddings=True,
)
TINY = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=256,
    max_position_embeddings=64,
)
GPU_CONTEXT = 1024


@dataclass(frozen=True)
class GenerationSpec:
    """A LLaMA config and the (batch, context) shapes it runs at."""

    name: str
    config: Mapping[str, object]
    shapes: tuple[tuple[int, int], ...]


GPU_SPECS = (
    GenerationSpec("smollm2-135m", SMOLLM2_135M, ((1, GPU_CONTEXT),)),
    GenerationSpec("llama-1b", LLAMA_1B, ((1, GPU_CONTEXT),)),
    GenerationSpec("smollm2-135m", SMOLLM2_135M, ((16, GPU_CONTEXT),)),
)
CPU_SPECS = (GenerationSpec("tiny-llama", TINY, ((2, 16),)),)


@dataclass(frozen=True)
class GenerationCase:
    """One model at one (batch, context) and dtype; ``build(device, dtype)`` returns a fresh
    eager model (torch's RNG is seeded before each call, so every build has the same weights);
    ``sessions`` maps provider names to a function ``(model, ids, token) -> session``."""

    op: str
    shape: tuple[int, int]  # (batch, context)
    dtype: torch.dtype
    build: Callable[[torch.device, torch.dtype], torch.nn.Module]
    sessions: Mapping[str, Callable[..., object]]
    vocab_size: int
    x_axis: str | None = "batch"
    x_value: int | None = None
    variant: str = ""


def _transformers():
    return importlib.import_module("transformers")


def _cache_keyword(model: torch.nn.Module) -> str:
    """The forward's cache argument: ``cache`` (transformers 5.2x) or ``past_key_values``."""
    parameters = inspect.signature(model.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


class EagerSession:
    """transformers' forward with its DynamicCache."""

    def __init__(self, model, ids, token):
        self.model, self.ids, self.token = model, ids, token
        self.keyword = _cache_keyword(model)
        self.cache = None

    def prefill(self):
        """The prompt's forward into a new cache (only the last position's logits, as
        ``generate`` asks)."""
        with torch.inference_mode():
            cache = _transformers().DynamicCache(config=self.model.config)
            kwargs = {self.keyword: cache}
            return self.model(input_ids=self.ids, use_cache=True, logits_to_keep=1, **kwargs)

    def fill(self) -> None:
        self.cache = _transformers().DynamicCache(config=self.model.config)
        with torch.inference_mode():
            kwargs = {self.keyword: self.cache}
            self.model(input_ids=self.ids, use_cache=True, logits_to_keep=1, **kwargs)

    def step(self) -> torch.Tensor:
        with torch.inference_mode():
            kwargs = {self.keyword: self.cache}
            logits = self.model(input_ids=self.token, use_cache=True, **kwargs).logits[:, -1]
            self.cache.crop(-1)  # forget the step's token: every call sees the same cache
        return logits  # (B, V)


class StaticCompileSession:
    """transformers' StaticCache with the forward compiled (mode "reduce-overhead")."""

    prefill = None  # transformers compiles the decode step only; its prefill is eager's

    def __init__(self, model, ids, token):
        self.model, self.ids, self.token = model, ids, token
        self.keyword = _cache_keyword(model)
        batch, context = ids.shape
        self.cache = _transformers().StaticCache(config=model.config, max_cache_len=context + 1)
        self.positions = torch.full((batch, 1), context, dtype=torch.long, device=ids.device)
        self.forward = torch.compile(model.forward, mode="reduce-overhead", fullgraph=True)

    def fill(self) -> None:
        with torch.inference_mode():
            kwargs = {self.keyword: self.cache}
            self.model(input_ids=self.ids, use_cache=True, logits_to_keep=1, **kwargs)

    def step(self) -> torch.Tensor:
        with torch.inference_mode():
            torch.compiler.cudagraph_mark_step_begin()
            kwargs = {self.keyword: self.cache}
            out = self.forward(
                input_ids=self.token, position_ids=self.positions, use_cache=True, **kwargs
            )
            self.cache.crop(-1)
        return out.logits[:, -1]  # (B, V); the CUDA graph's buffer, overwritten by the next call


class FastformerSession:
    """fastformer's Generator on ``fastformer.optimize(model)``, over its own KV cache."""

    def __init__(self, model, ids, token, *, cuda_graph: bool | None):
        import fastformer
        from fastformer.generation import Generator

        self.ids, self.token = ids, token
        self.generator = Generator(fastformer.optimize(model), cuda_graph=cuda_graph)
        batch, context = ids.shape
        self.cache = self.generator.allocate_cache(batch, context + 1)
        self.lengths = torch.full((batch,), context, dtype=torch.int32, device=ids.device)
        self.saved = None
        self.captured = None

    def prefill(self) -> torch.Tensor:
        """The prompt into the emptied cache: (B, V) logits of each row's last token."""
        with torch.inference_mode():
            self.cache.reset()
            return self.generator.prefill(self.ids, self.lengths, self.cache)

    def fill(self) -> None:
        from fastformer.generation.graphs import CapturedStep

        self.prefill()
        self.saved = self.cache.lengths.clone()
        if self.generator.cuda_graph:
            generator, cache = self.generator, self.cache
            with torch.inference_mode():
                self.captured = CapturedStep(lambda t: generator.decode_step(t, cache), cache)

    def step(self) -> torch.Tensor:
        with torch.inference_mode():
            if self.captured is not None:
                logits = self.captured(self.token)  # the graph's buffer, overwritten next call
            else:  # as the loop runs an uncaptured step: lengths validated on the host
                logits = self.generator.decode_step(self.token, self.cache, validate=True)
            self.cache.lengths.copy_(self.saved)
        return logits  # (B, V)


def default_sessions() -> dict[str, Callable[..., object]]:
    return {
        EAGER: EagerSession,
        COMPILE: StaticCompileSession,
        FF_NO_GRAPH: partial(FastformerSession, cuda_graph=False),
        FASTFORMER: partial(FastformerSession, cuda_graph=None),
    }


def _build(device: torch.device, dtype: torch.dtype, *, config) -> torch.nn.Module:
    with torch.device(device):
        model = _transformers().LlamaForCausalLM(config)
    return model.to(dtype).eval()


def generation_case(
    spec: GenerationSpec,
    batch: int,
    context: int,
    dtype: torch.dtype = DEFAULT_DTYPE,
    sessions: Mapping[str, Callable[..., object]] | None = None,
) -> GenerationCase:
    config = _transformers().LlamaConfig(**spec.config)
    return GenerationCase(
        op=f"generate:{spec.name}",
        shape=(batch, context),
        dtype=dtype,
        build=partial(_build, config=config),
        sessions=default_sessions() if sessions is None else sessions,
        vocab_size=config.vocab_size,
        x_value=batch,
        variant=f"context {context}",
    )


def generation_suite(
    device: torch.device, dtypes: Sequence[torch.dtype] = (DEFAULT_DTYPE,)
) -> tuple[list[GenerationCase], list[str]]:
    """(cases, notes): every spec's shapes in every dtype on ``device``; a note for each
    provider left out on the CPU."""
    on_gpu = device.type == "cuda"
    specs = GPU_SPECS if on_gpu else CPU_SPECS
    cases = [
        generation_case(spec, batch, context, dtype)
        for spec in specs
        for batch, context in spec.shapes
        for dtype in dtypes
    ]
    notes = []
    if not on_gpu:
        notes.append(
            "generation: compile (transformers' StaticCache + torch.compile with CUDA graphs) "
            "and ff_nograph (fastformer without its CUDA graph) run on a GPU only"
        )
    return cases, notes


def _seeded_build(case: GenerationCase, device: torch.device) -> torch.nn.Module:
    torch.manual_seed(SEED)
    return case.build(device, case.dtype)


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def make_inputs(case: GenerationCase, device, generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(prompt ids (B, context), the step's token (B, 1)), random token ids."""
    batch, context = case.shape
    ids = torch.randint(0, case.vocab_size, (batch, context), device=device, generator=generator)
    token = torch.randint(0, case.vocab_size, (batch, 1), device=device, generator=generator)
    return ids, token


def reference_logits(case: GenerationCase, device, ids, token) -> tuple:
    """(eager's step logits in the dtype, float64 logits of the prompt plus the token), on the
    host: one eager model, then the same model cast to float64."""
    model = _seeded_build(case, device)
    session = EagerSession(model, ids, token)
    session.fill()
    eager = session.step().cpu()
    del session
    model.to(torch.float64)
    with torch.inference_mode():
        full = torch.cat([ids, token], dim=1)  # (B, context + 1)
        expected = model(input_ids=full, logits_to_keep=1).logits[:, -1].cpu()
    del model
    _free(device)
    return eager, expected


def _check(provider: str, logits: torch.Tensor, reference, device):
    if provider == EAGER:
        return True, "baseline"
    eager, expected = (tensor.to(device) for tensor in reference)
    comparison = testing.compare("next-token logits", logits, expected, eager)
    return comparison.ok, str(comparison)


def _tokens_per_s(mode: str, case: GenerationCase, median_ms: float) -> float:
    batch, context = case.shape
    tokens = batch if mode == DECODE else batch * context
    return tokens / (median_ms / devices.MS_PER_S)


def provider_rows(case, provider, device, ids, token, reference) -> list[Row]:
    """Check ``provider``'s step, then time its decode step and its prefill (where it has one):
    one row per mode, FAILED rows where the check fails or anything raises."""
    model = session = None
    modes = list(GENERATION_MODES)

    def failed(detail: str) -> list[Row]:
        logger.info("%s %s failed: %s", case.op, provider, detail)
        return [make_row(case, mode, provider, device, ok=False, detail=detail) for mode in modes]

    try:
        model = _seeded_build(case, device)
        session = case.sessions[provider](model, ids, token)
        if session.prefill is None:
            modes = [DECODE]
        session.fill()
        ok, detail = _check(provider, session.step().clone(), reference, device)
        if not ok:
            return failed(detail)
        for _ in range(WARM_STEPS if device.type == "cuda" else CPU_WARM_STEPS):
            session.step()
        rows = []
        for mode in modes:
            call = session.step if mode == DECODE else session.prefill
            rows.append(
                timed_row(
                    case,
                    mode,
                    provider,
                    device,
                    call,
                    detail=detail,
                    rate=lambda ms, mode=mode: {"tokens_per_s": _tokens_per_s(mode, case, ms)},
                    cpu_min_reps=CPU_MIN_REPS,
                    cpu_warmup_calls=CPU_WARMUP_CALLS,
                )  # fmt: skip
            )
        return rows
    except Exception as error:  # a provider that fails to build or run fails its rows
        return failed(f"raised {type(error).__name__}: {error}")
    finally:
        del session, model
        _free(device)


def step_label(case: GenerationCase) -> str:
    shape = "x".join(str(size) for size in case.shape)
    return f"{case.op} {shape} {str(case.dtype).removeprefix('torch.')} decode/prefill"


def run_generation_case(
    case: GenerationCase,
    providers: Sequence[str],
    device: torch.device,
    generator: torch.Generator,
    deadline: float | None = None,
    on_skip: Callable[[str], None] | None = None,
) -> list[Row]:
    """Every offered provider's rows (GPU-only providers left out on the CPU), decode rows
    first; speedups against fastformer within each mode."""
    offered = [p for p in GENERATION_PROVIDERS if p in providers and p in case.sessions]
    if device.type != "cuda":
        offered = [p for p in offered if p not in GPU_ONLY]
    ids, token = make_inputs(case, device, generator)
    reference = reference_logits(case, device, ids, token)
    rows: list[Row] = []
    for provider in offered:
        if provider == COMPILE and deadline is not None:
            if deadline - time.monotonic() < COMPILE_RESERVE_S:
                logger.info("time budget too short to compile: %s %s not run", case.op, provider)
                if on_skip is not None:
                    on_skip(f"{step_label(case)} {provider}")
                continue
        rows += provider_rows(case, provider, device, ids, token, reference)
    ordered = []
    for mode in GENERATION_MODES:
        mode_rows = [row for row in rows if row.mode == mode]
        add_speedups(mode_rows)
        ordered += mode_rows
    return ordered


def run_generation_cases(
    cases: Sequence[GenerationCase],
    providers: Sequence[str] = GENERATION_PROVIDERS,
    device: torch.device | None = None,
    on_rows: Callable[[list[Row]], None] | None = None,
    on_start: Callable[[str], None] | None = None,
    deadline: float | None = None,
    on_skip: Callable[[str], None] | None = None,
) -> list[Row]:
    """Run every case; the callbacks and ``deadline`` work as in
    :func:`fastformer.benchmarks.runner.run_cases`, per case (and the compile provider needs
    ``COMPILE_RESERVE_S`` seconds left to start)."""
    device = device or devices.default_device()
    generator = torch.Generator(device=device).manual_seed(SEED)
    all_rows: list[Row] = []
    for case in cases:
        label = step_label(case)
        if deadline is not None and time.monotonic() > deadline:
            if on_skip is not None:
                on_skip(label)
            continue
        if on_start is not None:
            on_start(label)
        torch.compiler.reset()  # a fresh compile cache per case (dynamo's recompile limit)
        rows = run_generation_case(case, providers, device, generator, deadline, on_skip)
        all_rows.extend(rows)
        if on_rows is not None:
            on_rows(rows)
    return all_rows
