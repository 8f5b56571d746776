"""The shared benchmark runner: every suite describes its cases, this times them.

A :class:`Case` is one op at one shape and dtype, with its named providers (callables with the
eager reference's signature), its eager reference and its byte counts. For each case and mode
("fwd", "bwd", "fwd+bwd") the runner draws fresh random inputs, checks every provider but eager
against a float64 reference (:mod:`fastformer.benchmarks.check`), times the ones that pass
(:func:`fastformer.benchmarks.device.time_ms`) and returns one :class:`Row` per provider. A
provider that fails its check, or raises, gets a failed row with the reason, and no time and
no speedup. The measured peak bandwidth comes from :mod:`fastformer.benchmarks.device`, the
byte counts from :mod:`fastformer.benchmarks.counts`.

Modes: "fwd" times the forward with inputs that require grad (a training forward, which also
saves what the backward needs); "bwd" times the backward alone, replaying one forward's graph;
"fwd+bwd" times both. A case marked ``differentiable=False`` (an inference op: decode attention,
the KV-cache append) runs in "fwd" mode only, with inputs that do not require grad, so that the
op takes its inference path. A case marked ``in_place`` (the providers write into an input, as
the cache append does) draws its inputs again, the same values, for each provider. Gradients are
reset to None before each timed call. On a GPU each passing row also gets the peak memory of one
more call (:func:`.device.peak_memory_mib`).

Providers: eager PyTorch, torch.compile, SDPA, cuBLASLt's fused epilogue, fastformer, and two
optional ones that join on a GPU only when their package imports
(:mod:`fastformer.benchmarks.external`): flash-attn's ``flash_attn_func`` (attention) and
Liger-Kernel's norms.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass

import torch
import torch._functorch.config  # lazy_compile's knobs; `import torch` does not load it

from fastformer.benchmarks import counts, external
from fastformer.benchmarks import device as devices
from fastformer.benchmarks.check import CheckResult, as_tuple, check_provider, leaf_copies

logger = logging.getLogger(__name__)

EAGER = "eager"
COMPILE = "compile"
SDPA = "sdpa"  # torch.nn.functional.scaled_dot_product_attention, whichever backend it picks
ADDMM_ACTIVATION = "addmm_act"  # torch._addmm_activation: cuBLASLt's fused epilogue on CUDA
FASTFORMER = "fastformer"
FLASH_ATTN = external.FLASH_ATTN  # optional: flash_attn.flash_attn_func, when it imports
LIGER = external.LIGER  # optional: Liger-Kernel's norms, when liger_kernel imports
PROVIDERS = (EAGER, COMPILE, SDPA, ADDMM_ACTIVATION, FLASH_ATTN, LIGER, FASTFORMER)
MODES = counts.MODES
# Inputs are random but the same from run to run.
SEED = 0


@dataclass(frozen=True)
class Case:
    """One op at one shape and dtype.

    ``make_inputs(device, generator)`` returns the call's keyword arguments: fresh random
    tensors in ``dtype`` (every floating-point one gets a gradient, unless the case is not
    ``differentiable``) and any options; tensors held in other objects are passed as they are
    (neither copied nor upcast for the reference).
    ``providers`` maps provider names to callables taking those keyword arguments;
    ``reference`` is the eager reference, run in float64 for the truth. ``x_axis`` and
    ``x_value`` name the size the suite sweeps (sequence length, hidden size, tokens) and its
    value here, ``variant`` what else tells this case apart from others with the same op and
    ``x_value`` (the plots draw one line per provider and variant).
    """

    op: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    make_inputs: Callable[[torch.device, torch.Generator], dict[str, object]]
    reference: Callable[..., object]
    providers: Mapping[str, Callable[..., object]]
    fwd_bytes: int
    bwd_bytes: int
    fwd_flops: int = 0  # 0: a memory-bound op, judged by GB/s against the copy peak
    bwd_flops: int = 0
    forward_only: tuple[str, ...] = ()  # providers with no backward: timed in "fwd" mode only
    # False: an inference op; no input gets a gradient and only "fwd" mode runs.
    differentiable: bool = True
    # True: the providers write into their inputs (a cache); each provider starts from the same
    # inputs drawn again, so that one provider's writes cannot make another's check pass.
    in_place: bool = False
    x_axis: str | None = None
    x_value: int | None = None
    variant: str = ""


@dataclass
class Row:
    """One provider on one case in one mode. Times in ms. ``speedup`` is fastformer's over this
    provider (this provider's median / fastformer's), None on fastformer's own row and where
    either failed; ``gbps``, ``peak_fraction`` and ``peak_mib`` (peak memory) are None on the
    CPU; ``detail`` says why a failed row (``ok`` False) failed; ``x_axis``, ``x_value`` and
    ``variant`` come from the case (for the plots); ``tokens_per_s`` is set by the generation
    rows only (tokens a second of a decode step or a prefill)."""

    op: str
    shape: str
    dtype: str
    mode: str
    provider: str
    median_ms: float | None
    q20_ms: float | None
    q80_ms: float | None
    gbps: float | None
    tflops: float | None
    peak_fraction: float | None
    speedup: float | None
    ok: bool
    detail: str
    timing: str
    peak_mib: float | None = None
    x_axis: str | None = None
    x_value: int | None = None
    variant: str = ""
    tokens_per_s: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def default_providers(device: torch.device, include_compile: bool = False) -> tuple[str, ...]:
    """Eager, SDPA, cuBLASLt's epilogue and fastformer; torch.compile too on a GPU, or on the
    CPU when asked (compiling takes tens of seconds a case there); flash-attn and Liger on a GPU
    where they import. Cases offer the providers that apply."""
    on_gpu = device.type == "cuda"
    optional = {name for name in external.OPTIONAL if on_gpu and external.available(name)}
    if on_gpu or include_compile:
        optional.add(COMPILE)
    return tuple(
        p for p in PROVIDERS if p in (EAGER, SDPA, ADDMM_ACTIVATION, FASTFORMER) or p in optional
    )


def lazy_compile(fn: Callable[..., object]) -> Callable[..., object]:
    """``torch.compile(fn)``, built on the first call: building it imports dynamo (seconds),
    which a run without the compile provider should not pay for.

    Without AOTAutograd's on-disk cache: a graph cached by an earlier process can come back with
    a backward that frees its saved tensors ("donated buffers"), which the "bwd" mode's replays
    (``retain_graph=True``) cannot use; see :func:`timed_call`.
    """
    compiled = None

    def call(*args, **kwargs):
        nonlocal compiled
        if compiled is None:
            compiled = torch.compile(fn)
        with torch._functorch.config.patch(enable_autograd_cache=False):
            return compiled(*args, **kwargs)

    return call


def _check_names(kind: str, names: Sequence[str], allowed: Sequence[str]) -> None:
    unknown = [name for name in names if name not in allowed]
    if unknown:
        raise ValueError(f"{kind}={unknown} not known; expected some of {list(allowed)}")


@dataclass(frozen=True)
class Prepared:
    """One case's inputs for one mode, shared by all its providers: keyword arguments whose
    floating-point tensors are leaves that require grad, those leaves, and the gradients fed to
    the outputs (None in "fwd" mode)."""

    inputs: dict[str, object]
    leaves: list[torch.Tensor]
    grads_out: list[torch.Tensor] | None


def case_modes(case: Case, modes: Sequence[str]) -> list[str]:
    """The modes among ``modes`` that ``case`` runs in: all of them, or "fwd" alone for a case
    that is not differentiable."""
    return [mode for mode in modes if case.differentiable or mode == "fwd"]


def prepare(case: Case, mode: str, device: torch.device, generator: torch.Generator) -> Prepared:
    """Fresh random inputs (and output gradients for the backward modes) for ``case``."""
    inputs = leaf_copies(case.make_inputs(device, generator), requires_grad=case.differentiable)
    grads_out = None
    if mode != "fwd":
        with torch.no_grad():
            outputs = as_tuple(case.reference(**inputs))
        grads_out = [
            torch.randn(out.shape, dtype=out.dtype, device=device, generator=generator)
            for out in outputs
        ]
    leaves = [value for value in inputs.values() if isinstance(value, torch.Tensor)]
    return Prepared(inputs, leaves, grads_out)


def check(case: Case, provider: str, prepared: Prepared) -> CheckResult:
    """The correctness check of ``provider`` on ``case`` (eager, the baseline, passes as such)."""
    if provider == EAGER:
        return CheckResult(True, "baseline")
    fn = case.providers[provider]
    return check_provider(fn, case.reference, prepared.inputs, prepared.grads_out)


def timed_call(case: Case, provider: str, mode: str, prepared: Prepared) -> Callable[[], object]:
    """The call the timer repeats: the forward, the backward (replaying one forward's graph), or
    both. Clear ``prepared.leaves``' gradients before each call.

    In "bwd" mode the forward runs here, and its backward once: a compiled provider's first
    backward decides whether it frees its saved tensors (torch.compile's donated buffers), and
    the replays need it not to, so build this before the check runs a backward of its own,
    and run the modes in ``MODES`` order ("bwd" before "fwd+bwd").
    """
    fn, inputs, grads_out = case.providers[provider], prepared.inputs, prepared.grads_out
    if mode == "fwd":
        return lambda: fn(**inputs)
    if mode == "bwd":
        outputs = as_tuple(fn(**inputs))
        torch.autograd.backward(outputs, grads_out, retain_graph=True)
        return lambda: torch.autograd.backward(outputs, grads_out, retain_graph=True)
    return lambda: torch.autograd.backward(as_tuple(fn(**inputs)), grads_out)


def make_row(case, mode: str, provider: str, device: torch.device, **fields) -> Row:
    """A row of ``case`` (a :class:`Case`, or any object with its naming fields: ``op``,
    ``shape``, ``dtype``, ``x_axis``, ``x_value``, ``variant``); ``fields`` fill the rest."""
    values = dict(
        median_ms=None,
        q20_ms=None,
        q80_ms=None,
        gbps=None,
        tflops=None,
        peak_fraction=None,
        speedup=None,
        peak_mib=None,
    )
    values.update(fields)
    return Row(
        op=case.op,
        shape="x".join(str(size) for size in case.shape),
        dtype=str(case.dtype).removeprefix("torch."),
        mode=mode,
        provider=provider,
        timing=devices.timing_label(device),
        x_axis=case.x_axis,
        x_value=case.x_value,
        variant=case.variant,
        **values,
    )


def timed_row(
    case,
    mode: str,
    provider: str,
    device: torch.device,
    call: Callable[[], object],
    leaves: Sequence[torch.Tensor] = (),
    *,
    detail: str,
    rate: Callable[[float], dict] | None = None,
    **time_options,
) -> Row:
    """Time ``call`` (median and 20/80 quantiles; ``leaves``' gradients cleared before each
    call), read the peak memory of one more call, and make the passing row; ``rate(median)``
    gives the throughput fields, ``time_options`` go to :func:`device.time_ms`."""
    median, q20, q80 = devices.time_ms(call, device, leaves, **time_options)
    peak_mib = devices.peak_memory_mib(call, device, leaves)
    return make_row(
        case, mode, provider, device, median_ms=median, q20_ms=q20, q80_ms=q80,
        peak_mib=peak_mib, ok=True, detail=detail, **(rate(median) if rate else {}),
    )  # fmt: skip


def rates(
    device: torch.device,
    median_ms: float,
    n_bytes: int,
    n_flops: int,
    peak_gbps: float | None,
    peak_tflops: float | None,
) -> dict[str, float | None]:
    """GB/s, TFLOP/s (where the case counts FLOPs) and the fraction of the matching peak (the
    matmul peak for TFLOP/s rows, the copy bandwidth otherwise); all None on the CPU."""
    on_gpu = device.type == "cuda"
    rate = counts.gbps(n_bytes, median_ms) if on_gpu and n_bytes else None
    tflops = counts.tflops(n_flops, median_ms) if on_gpu and n_flops else None
    if tflops is not None:
        fraction = tflops / peak_tflops if peak_tflops else None
    else:
        fraction = rate / peak_gbps if rate is not None and peak_gbps else None
    return {"gbps": rate, "tflops": tflops, "peak_fraction": fraction}


def add_speedups(rows: Sequence[Row]) -> None:
    """Set each passing row's ``speedup``: fastformer's over it (its median / fastformer's)."""
    fastformer_ms = next((r.median_ms for r in rows if r.provider == FASTFORMER and r.ok), None)
    for row in rows:
        if fastformer_ms and row.ok and row.provider != FASTFORMER:
            row.speedup = row.median_ms / fastformer_ms


def run_case(
    case: Case,
    mode: str,
    providers: Sequence[str],
    device: torch.device,
    generator: torch.Generator,
    peak_gbps: float | None = None,
    peak_tflops: float | None = None,
) -> list[Row]:
    """Check and time each of ``providers`` that ``case`` offers, in ``mode``. A case with a
    FLOP count is judged against the matmul peak, others against the copy bandwidth. A case
    that is not differentiable gives no rows outside "fwd" mode."""
    if mode not in case_modes(case, (mode,)):
        return []
    drawn_from = generator.get_state()
    prepared = prepare(case, mode, device, generator)
    n_bytes = counts.for_mode(mode, case.fwd_bytes, case.bwd_bytes)
    n_flops = counts.for_mode(mode, case.fwd_flops, case.bwd_flops)
    rows: list[Row] = []
    for provider in providers:
        if provider not in case.providers:
            continue
        if mode != "fwd" and provider in case.forward_only:
            continue
        if case.in_place and rows:  # the same inputs as the first provider's, drawn again
            generator.set_state(drawn_from)
            prepared = prepare(case, mode, device, generator)
        try:
            call = timed_call(case, provider, mode, prepared)
            result = check(case, provider, prepared)
            if result.ok:
                rows.append(
                    timed_row(
                        case,
                        mode,
                        provider,
                        device,
                        call,
                        prepared.leaves,
                        detail=result.detail,
                        rate=lambda ms: rates(device, ms, n_bytes, n_flops, peak_gbps, peak_tflops),
                    )  # fmt: skip
                )
                continue
        except Exception as error:  # a provider that fails to run fails its row
            result = CheckResult(False, f"raised {type(error).__name__}: {error}")
        logger.info("%s %s %s %s failed: %s", case.op, case.shape, mode, provider, result.detail)
        rows.append(make_row(case, mode, provider, device, ok=False, detail=result.detail))
    add_speedups(rows)
    return rows


def run_cases(
    cases: Sequence[Case],
    modes: Sequence[str] = MODES,
    providers: Sequence[str] | None = None,
    device: torch.device | None = None,
    env: devices.Environment | None = None,
    on_rows: Callable[[list[Row]], None] | None = None,
    on_start: Callable[[str], None] | None = None,
    deadline: float | None = None,
    on_skip: Callable[[str], None] | None = None,
) -> list[Row]:
    """Run every case in every mode; ``on_rows`` sees each (case, mode)'s rows as they finish.

    ``env`` (default: :func:`fastformer.benchmarks.device.environment` of ``device``) supplies
    the measured peak bandwidth; pass the one you record with the rows. ``on_start`` gets each
    (case, mode)'s label (:func:`step_label`) before it runs. Past ``deadline`` (a
    ``time.monotonic()`` value) no further (case, mode) starts: ``on_skip`` gets the label of
    each one left out.
    """
    device = device or devices.default_device()
    providers = tuple(providers or default_providers(device))
    _check_names("modes", modes, MODES)
    modes = [mode for mode in MODES if mode in modes]  # see timed_call
    _check_names("providers", providers, PROVIDERS)
    env = env or devices.environment(device)
    generator = torch.Generator(device=device).manual_seed(SEED)
    all_rows: list[Row] = []
    for case in cases:
        if COMPILE in providers:
            # A fresh compile cache per case: dynamo's per-function recompile limit would
            # otherwise send later shapes back to eager without a word.
            torch.compiler.reset()
        for mode in case_modes(case, modes):
            label = step_label(case, mode)
            if deadline is not None and time.monotonic() > deadline:
                logger.info("time budget spent: %s not run", label)
                if on_skip is not None:
                    on_skip(label)
                continue
            if on_start is not None:
                on_start(label)
            rows = run_case(
                case, mode, providers, device, generator, env.peak_gbps, env.peak_tflops
            )
            all_rows.extend(rows)
            if on_rows is not None:
                on_rows(rows)
    return all_rows


def step_label(case, mode: str) -> str:
    """``op shape dtype mode``: how progress and skipped steps name one (case, mode)."""
    shape = "x".join(str(size) for size in case.shape)
    return f"{case.op} {shape} {str(case.dtype).removeprefix('torch.')} {mode}"


def any_failed(rows: Sequence[Row]) -> bool:
    return any(not row.ok for row in rows)
