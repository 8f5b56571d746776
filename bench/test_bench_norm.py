"""The norm suite under pytest-benchmark: ``pytest bench/`` (``--benchmark-json PATH`` to keep it).

The cases, providers, inputs, correctness check and timed calls are the shared runner's
(:mod:`fastformer.benchmarks.runner`), so these numbers and ``fastformer bench``'s measure the
same thing; pytest-benchmark adds its statistics, comparison between saved runs and histograms.
Each test first checks its provider against a float64 reference and fails if it differs.
pytest-benchmark times with the wall clock, so each call on a GPU ends with a synchronize. On
the CPU the kernels run in Triton's interpreter: those times are not GPU performance.
"""

from __future__ import annotations

import pytest
import torch

from fastformer.benchmarks import counts, norm, runner
from fastformer.benchmarks import device as devices

DEVICE = devices.default_device()
CASES = norm.norm_cases(DEVICE)
# The providers the norm cases offer (the runner's list also has attention- and GEMM-only ones).
PROVIDERS = [p for p in runner.default_providers(DEVICE) if p in CASES[0].providers]
# Rounds per benchmark: the interpreter takes up to a third of a second a call on the CPU.
ROUNDS = {"cuda": 50, "cpu": 3}
WARMUP_ROUNDS = {"cuda": 10, "cpu": 1}


def _case_id(case: runner.Case) -> str:
    shape = "x".join(str(size) for size in case.shape)
    return f"{case.op}-{shape}-{str(case.dtype).removeprefix('torch.')}"


def _synchronized(call):
    if DEVICE.type != "cuda":
        return call

    def call_and_wait():
        call()
        torch.cuda.synchronize(DEVICE)

    return call_and_wait


@pytest.fixture(scope="module", params=CASES, ids=_case_id)
def case(request) -> runner.Case:
    """One case at a time (pytest groups a module-scoped parameter's tests), each with a fresh
    torch.compile cache, as the runner does: dynamo's recompile limit would otherwise send later
    shapes back to eager without a word."""
    if runner.COMPILE in PROVIDERS:
        torch.compiler.reset()
    return request.param


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("mode", runner.MODES)
def test_norm(benchmark, case: runner.Case, mode: str, provider: str) -> None:
    generator = torch.Generator(device=DEVICE).manual_seed(runner.SEED)
    prepared = runner.prepare(case, mode, DEVICE, generator)
    call = runner.timed_call(case, provider, mode, prepared)  # before the check: see timed_call
    result = runner.check(case, provider, prepared)
    if not result.ok:
        pytest.fail(f"{provider} differs from the float64 reference: {result.detail}")

    benchmark.group = f"{_case_id(case)} {mode}"
    benchmark.extra_info.update(
        op=case.op,
        shape=list(case.shape),
        dtype=str(case.dtype),
        mode=mode,
        provider=provider,
        bytes=counts.for_mode(mode, case.fwd_bytes, case.bwd_bytes),
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
