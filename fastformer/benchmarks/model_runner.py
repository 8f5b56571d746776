"""Whole-model benchmark steps: a model's forward latency and its training-step time, per
provider (eager, fastformer's ``optimize``, torch.compile), each provider checked first.

A :class:`ModelCase` is one model at one batch shape and dtype: how to build a fresh eager
model, how to make its inputs, and per provider a function that turns a freshly built eager
model into that provider's model. Per case the runner:

1. builds the eager model (torch's RNG seeded with ``SEED`` before every build, so every build
   of a random-weight model has the same weights), runs it on the inputs in eval mode, then
   casts that same model to float64 in place and runs it again: the eager output in the dtype
   and the float64 reference, from the same (rounded) weights;
2. per provider, builds a fresh model, transforms it, and checks its output against the
   reference with :func:`fastformer.testing.compare` (the one tolerance rule: at most
   ``ERROR_FACTOR`` times eager's own error, plus a floor; NaN never passes). A provider that
   fails the check, or raises, gets a FAILED row in every mode and is not timed;
3. times the provider's model in each mode: "fwd", the forward alone in eval mode under
   ``torch.no_grad`` (inference latency), and "fwd+bwd", a training step in train mode (dropout
   on): the forward, then the backward of the output against a fixed random gradient, with the
   parameters' gradients reset to None before each call. The optimizer's update is left out: it
   is the same work for every provider. "bwd" alone does not apply to whole models.

Only one provider's model lives at a time (the previous one is freed first), and the reference
outputs wait in host memory (they come to the device for the check only), so the peak memory
column (on a GPU) is that model's weights, activations and gradients, plus the inputs and, in a
training step, the output's gradient. The check covers the output in eval mode; the training
step's gradients are not compared.

On the CPU the kernels run in Triton's interpreter, where a small model's forward takes seconds:
the timer's stand-in then makes no warm-up call of its own (the check's forward, on the same
model, came just before) and at least ``CPU_MIN_REPS`` timed call (more while they fit in its
150 ms budget, so one, for most providers: its quantiles are that call's time), and the suite's
CPU shapes are tiny. Those times only show the run works; they are not GPU performance.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from fastformer import testing
from fastformer.benchmarks import counts
from fastformer.benchmarks import device as devices
from fastformer.benchmarks.check import CheckResult
from fastformer.benchmarks.runner import (
    COMPILE,
    EAGER,
    FASTFORMER,
    SEED,
    Row,
    add_speedups,
    make_row,
    rates,
    step_label,
    timed_row,
)

logger = logging.getLogger(__name__)

MODEL_MODES = ("fwd", "fwd+bwd")
MODEL_PROVIDERS = (EAGER, COMPILE, FASTFORMER)
# A training step's FLOPs over its forward's: the backward does two products per forward one.
TRAIN_STEP_FLOPS_RATIO = 3
CPU_WARMUP_CALLS = 0  # the check's forward warms the model up
CPU_MIN_REPS = 1  # keeps the default CPU run of `fastformer bench` within three minutes


def model_output(output) -> torch.Tensor:
    """The tensor a model case compares and backpropagates: ``logits`` where the output has
    them, else ``last_hidden_state``, else the first element of a tuple, else the output."""
    for name in ("logits", "last_hidden_state"):
        value = getattr(output, name, None)
        if isinstance(value, torch.Tensor):
            return value
    if isinstance(output, (tuple, list)):
        return output[0]
    return output


def identity(model: torch.nn.Module) -> torch.nn.Module:
    return model


@dataclass(frozen=True)
class ModelCase:
    """One whole model at one batch shape and dtype.

    ``build(device, dtype)`` returns a fresh eager model on ``device`` in ``dtype`` (the runner
    seeds torch's RNG before each call). ``make_inputs(device, generator)`` returns the model's
    keyword arguments (token ids, attention mask, ...); floating-point tensors among them are
    upcast for the float64 reference. ``providers`` maps provider names to functions taking a
    freshly built eager model and returning that provider's model (they may change it in
    place, as ``fastformer.optimize`` does; eager's is :func:`identity`). ``output`` picks the
    tensor compared and backpropagated from the model's output. ``fwd_flops`` (0: not counted)
    gives TFLOP/s on a GPU; a training step counts ``TRAIN_STEP_FLOPS_RATIO`` times it.
    ``forward_only`` cases are timed in "fwd" mode only.
    """

    op: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    build: Callable[[torch.device, torch.dtype], torch.nn.Module]
    make_inputs: Callable[[torch.device, torch.Generator], dict[str, object]]
    providers: Mapping[str, Callable[[torch.nn.Module], torch.nn.Module]]
    output: Callable[[object], torch.Tensor] = model_output
    fwd_flops: int = 0
    forward_only: bool = False
    x_axis: str | None = "sequence length"
    x_value: int | None = None
    variant: str = ""


def _build(case: ModelCase, device: torch.device) -> torch.nn.Module:
    torch.manual_seed(SEED)
    return case.build(device, case.dtype).eval()


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _upcast(inputs: Mapping[str, object]) -> dict[str, object]:
    return {
        name: value.double()
        if isinstance(value, torch.Tensor) and value.dtype.is_floating_point
        else value
        for name, value in inputs.items()
    }


def _forward(case: ModelCase, model: torch.nn.Module, inputs) -> torch.Tensor:
    with torch.no_grad():
        return case.output(model(**inputs))


def reference_outputs(case: ModelCase, device: torch.device, inputs) -> tuple:
    """(eager output in the case's dtype, float64 output) from one eager model, in host memory
    (a large vocabulary's float64 logits are gigabytes, which must not count in the peaks)."""
    model = _build(case, device)
    eager = _forward(case, model, inputs).cpu()
    model.to(torch.float64)
    expected = _forward(case, model, _upcast(inputs)).cpu()
    del model
    _free(device)
    return eager, expected


def output_gradient(like: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The fixed random gradient a training step feeds to the output (the same values for every
    provider: a generator seeded with ``SEED``)."""
    generator = torch.Generator(device=device).manual_seed(SEED)
    return torch.randn(like.shape, dtype=like.dtype, device=device, generator=generator)


def _check(case, provider, model, inputs, reference, device) -> CheckResult:
    """The check of ``provider``'s model; eager's model, the baseline, runs its forward once all
    the same (the warm-up every provider gets from its check)."""
    output = _forward(case, model, inputs)
    if provider == EAGER:
        return CheckResult(True, "baseline")
    eager, expected = (tensor.to(device) for tensor in reference)
    comparison = testing.compare("output", output, expected, eager)
    return CheckResult(comparison.ok, str(comparison))


def timed_call(case: ModelCase, mode: str, model, inputs, grad_out) -> tuple:
    """(the call the timer repeats in ``mode``, the tensors whose gradients it resets), with
    ``model`` put in eval mode ("fwd") or train mode ("fwd+bwd") once, outside the call."""
    if mode == "fwd":
        model.eval()

        def forward():
            with torch.no_grad():
                return model(**inputs)

        return forward, ()
    model.train()

    def training_step():
        torch.autograd.backward(case.output(model(**inputs)), grad_out)

    return training_step, [p for p in model.parameters() if p.requires_grad]


def _provider_rows(case, provider, modes, device, inputs, reference, env) -> list[Row]:
    """Check ``provider`` against ``reference`` (eager output, float64 output), then time it."""

    def failed(detail: str) -> list[Row]:
        logger.info("%s %s failed: %s", case.op, provider, detail)
        return [make_row(case, mode, provider, device, ok=False, detail=detail) for mode in modes]

    model = None
    try:
        model = case.providers[provider](_build(case, device))
        result = _check(case, provider, model, inputs, reference, device)
        _free(device)
        if not result.ok:
            return failed(result.detail)
        rows = []
        for mode in modes:
            grad_out = output_gradient(reference[0], device) if mode == "fwd+bwd" else None
            call, leaves = timed_call(case, mode, model, inputs, grad_out)
            flops = model_flops(case.fwd_flops, mode)
            rows.append(
                timed_row(
                    case,
                    mode,
                    provider,
                    device,
                    call,
                    leaves,
                    detail=result.detail,
                    rate=lambda ms, flops=flops: rates(
                        device, ms, 0, flops, env.peak_gbps, env.peak_tflops
                    ),
                    cpu_min_reps=CPU_MIN_REPS,
                    cpu_warmup_calls=CPU_WARMUP_CALLS,
                )  # fmt: skip
            )
        return rows
    except Exception as error:  # a provider that fails to build or run fails its rows
        return failed(f"raised {type(error).__name__}: {error}")
    finally:
        del model
        _free(device)


def run_model_case(
    case: ModelCase,
    modes: Sequence[str],
    providers: Sequence[str],
    device: torch.device,
    generator: torch.Generator,
    env: devices.Environment,
) -> list[Row]:
    """Check, then time, each of ``providers`` that ``case`` offers in each of ``modes`` (those
    in ``MODEL_MODES``); rows in mode order, speedups against fastformer within each mode."""
    modes = [mode for mode in MODEL_MODES if mode in modes]
    if case.forward_only:
        modes = [mode for mode in modes if mode == "fwd"]
    offered = [p for p in providers if p in case.providers]
    if not modes or not offered:
        return []
    inputs = case.make_inputs(device, generator)
    reference = reference_outputs(case, device, inputs)
    by_provider = [_provider_rows(case, p, modes, device, inputs, reference, env) for p in offered]
    rows = []
    for i, _mode in enumerate(modes):
        mode_rows = [provider_rows[i] for provider_rows in by_provider]
        add_speedups(mode_rows)
        rows.extend(mode_rows)
    return rows


def run_model_cases(
    cases: Sequence[ModelCase],
    modes: Sequence[str] = MODEL_MODES,
    providers: Sequence[str] = MODEL_PROVIDERS,
    device: torch.device | None = None,
    env: devices.Environment | None = None,
    on_rows: Callable[[list[Row]], None] | None = None,
    on_start: Callable[[str], None] | None = None,
    deadline: float | None = None,
    on_skip: Callable[[str], None] | None = None,
) -> list[Row]:
    """Run every case (each in all its modes at once); the callbacks and ``deadline`` work as
    in :func:`fastformer.benchmarks.runner.run_cases`, per case."""
    device = device or devices.default_device()
    env = env or devices.environment(device)
    generator = torch.Generator(device=device).manual_seed(SEED)
    all_rows: list[Row] = []
    for case in cases:
        label = step_label(case, "/".join(m for m in MODEL_MODES if m in modes))  # fwd/fwd+bwd
        if deadline is not None and time.monotonic() > deadline:
            if on_skip is not None:
                on_skip(label)
            continue
        if on_start is not None:
            on_start(label)
        if COMPILE in providers:
            torch.compiler.reset()
        rows = run_model_case(case, modes, providers, device, generator, env)
        all_rows.extend(rows)
        if on_rows is not None:
            on_rows(rows)
    return all_rows


def model_flops(fwd_flops: int, mode: str) -> int:
    """A model case's FLOPs in ``mode`` (the forward's, or a training step's)."""
    return counts.for_mode(mode, fwd_flops, (TRAIN_STEP_FLOPS_RATIO - 1) * fwd_flops)
