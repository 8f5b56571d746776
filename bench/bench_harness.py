"""What every pytest-benchmark suite in bench/ shares: one test per (case, mode, provider).

``pytest bench/`` (``--benchmark-json PATH`` to keep the numbers). The cases, providers, inputs,
correctness check and timed calls are the shared runner's (:mod:`fastformer.benchmarks.runner`)
and the suites' (:func:`fastformer.benchmarks.suites.cases`), so these numbers and
``fastformer bench``'s measure the same thing; pytest-benchmark adds its statistics, comparison
between saved runs and histograms. Each test first checks its provider against a float64
reference and fails if it differs. pytest-benchmark times with the wall clock, so each call on a
GPU ends with a synchronize. On the CPU the kernels run in Triton's interpreter (bench/conftest.py
switches it on): those times are not GPU performance.
"""

from __future__ import annotations

import pytest
import torch

from fastformer.benchmarks import counts, runner, suites
from fastformer.benchmarks import device as devices

DEVICE = devices.default_device()
# Rounds per benchmark: the interpreter takes up to a third of a second a call on the CPU.
ROUNDS = {"cuda": 50, "cpu": 3}
WARMUP_ROUNDS = {"cuda": 10, "cpu": 1}
# The dtypes each suite runs in: bf16, what the models train in, as `fastformer bench` does.
DTYPES = (torch.bfloat16,)


def case_id(case: runner.Case) -> str:
    shape = "x".join(str(size) for size in case.shape)
    variant = f"-{case.variant.replace(' ', '_')}" if case.variant else ""
    return f"{case.op}-{shape}-{str(case.dtype).removeprefix('torch.')}{variant}"


def params(op: str) -> list:
    """One pytest parameter per (case, mode, provider) of kernel suite ``op``, with a readable
    id; the modes a case does not run in and the providers it does not offer are left out."""
    providers = runner.default_providers(DEVICE)
    found = []
    for case in suites.cases(op, DEVICE, DTYPES):
        for mode in runner.case_modes(case, runner.MODES):
            for provider in providers:
                if provider not in case.providers:
                    continue
                if mode != "fwd" and provider in case.forward_only:
                    continue
                found.append(
                    pytest.param(case, mode, provider, id=f"{case_id(case)}-{mode}-{provider}")
                )
    return found


def _synchronized(call):
    if DEVICE.type != "cuda":
        return call

    def call_and_wait():
        call()
        torch.cuda.synchronize(DEVICE)

    return call_and_wait


def run(benchmark, case: runner.Case, mode: str, provider: str) -> None:
    """Check ``provider`` on ``case`` against the float64 reference, then time it in ``mode``."""
    if runner.COMPILE == provider:
        # A fresh compile cache per test: dynamo's recompile limit would otherwise send later
        # shapes back to eager without a word.
        torch.compiler.reset()
    generator = torch.Generator(device=DEVICE).manual_seed(runner.SEED)
    prepared = runner.prepare(case, mode, DEVICE, generator)
    call = runner.timed_call(case, provider, mode, prepared)  # before the check: see timed_call
    result = runner.check(case, provider, prepared)
    if not result.ok:
        pytest.fail(f"{provider} differs from the float64 reference: {result.detail}")

    benchmark.group = f"{case_id(case)} {mode}"
    benchmark.extra_info.update(
        op=case.op,
        shape=list(case.shape),
        dtype=str(case.dtype),
        mode=mode,
        provider=provider,
        bytes=counts.for_mode(mode, case.fwd_bytes, case.bwd_bytes),
        flops=counts.for_mode(mode, case.fwd_flops, case.bwd_flops),
        timing=devices.timing_label(DEVICE),
    )

    def clear_grads():
        for leaf in prepared.leaves:
            leaf.grad = None

    benchmark.pedantic(
        _synchronized(call),
        setup=clear_grads,
        rounds=ROUNDS[DEVICE.type],
        warmup_rounds=WARMUP_ROUNDS[DEVICE.type],
    )
