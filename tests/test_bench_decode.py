"""The decode suites (decode attention, the KV-cache append), the generation cases and the
targets section, on tiny CPU shapes: byte formulas against hand counts, wrong providers caught
by the check, the inference path taken (inputs without gradients), rows and target lines."""

from __future__ import annotations

import dataclasses
import io

import pytest
import torch

import fastformer
from fastformer import cli, reference
from fastformer.benchmarks import command, counts, decode, generation, runner, suites, targets
from fastformer.benchmarks import device as devices
from fastformer.functional import decode as functional_decode

WRONG_FACTOR = 1.01
MIXED = decode.DecodeShape(3, 4, 2, 64, 32, mixed=True)
TINY_APPEND = decode.AppendShape(2, 2, 3, 32, 16, 5)


def _rows(case, device, modes=("fwd",), providers=None):
    providers = providers or runner.default_providers(device)
    return {
        row.provider: row
        for row in runner.run_cases([case], modes, providers, device, devices.environment(device))
    }


def _with_fastformer(case: runner.Case, fn) -> runner.Case:
    providers = {runner.EAGER: case.providers[runner.EAGER], runner.FASTFORMER: fn}
    return dataclasses.replace(case, providers=providers)


# --- byte counts ----------------------------------------------------------------------------


def test_decode_bytes_against_a_hand_count():
    # Rows of 3 and 5 keys, 2 KV heads of 8 features, 4 query heads, fp16:
    # cache: (3 + 5) keys * 2 heads * 8 * 2 bytes * 2 (k and v) = 512
    # q and out: 2 rows * 4 heads * 1 query * 8 * 2 bytes * 2 = 256; lengths: 2 * 4 = 8
    assert counts.decode_attention_bytes([3, 5], 4, 2, 8, elem_bytes=2) == 512 + 256 + 8
    # Two new queries a row double q and out.
    assert counts.decode_attention_bytes([3, 5], 4, 2, 8, 2, elem_bytes=2) == 512 + 512 + 8


def test_decode_case_counts_the_rows_actually_read():
    case = decode.decode_case(MIXED, torch.bfloat16)
    assert MIXED.lengths() == [21, 42, 64]  # 64 * (b + 1) // 3
    cache = (21 + 42 + 64) * 2 * 32 * 2 * 2
    assert case.fwd_bytes == cache + 3 * 4 * 32 * 2 * 2 + 3 * 4
    full = decode.decode_case(dataclasses.replace(MIXED, mixed=False), torch.bfloat16)
    assert full.fwd_bytes == 3 * 64 * 2 * 32 * 2 * 2 + 3 * 4 * 32 * 2 * 2 + 3 * 4


def test_append_bytes_against_a_hand_count():
    # 2 rows, 2 KV heads, 3 new tokens of 32 features, bf16: k_new and v_new read, both written:
    # 2 * 2 * 3 * 32 * 2 bytes * 4 = 3072; lengths 2 * 4 = 8; inv_freq 16 * 4 = 64.
    assert counts.kv_append_bytes(2, 2, 3, 32, elem_bytes=2, rotary_dim=32) == 3072 + 8 + 64
    assert decode.append_case(TINY_APPEND).fwd_bytes == 3072 + 8 + 64


# --- decode attention -----------------------------------------------------------------------


def test_cpu_decode_suite_runs_forward_only_and_gives_rows(device):
    cases = suites.cases("decode_attention", device, [torch.bfloat16])
    assert [case.op for case in cases] == [decode.DECODE_OP, decode.MIXED_OP]
    env = devices.environment(device)
    rows = runner.run_cases(cases, runner.MODES, runner.default_providers(device), device, env)
    assert {row.mode for row in rows} == {"fwd"}  # not differentiable: no backward rows
    assert {(row.op, row.provider) for row in rows} == {
        (op, provider)
        for op in (decode.DECODE_OP, decode.MIXED_OP)
        for provider in (runner.EAGER, runner.SDPA, runner.FASTFORMER)
    }
    assert all(row.ok for row in rows), [row.detail for row in rows if not row.ok]
    for row in rows:
        assert row.x_axis == "context length" and row.x_value == 64
        assert (row.speedup is None) == (row.provider == runner.FASTFORMER)


def test_decode_inputs_do_not_require_grad_and_take_the_kernel_path(device, monkeypatch):
    case = decode.decode_case(MIXED, torch.float32)
    generator = torch.Generator(device=device).manual_seed(runner.SEED)
    prepared = runner.prepare(case, "fwd", device, generator)
    assert not prepared.inputs["q"].requires_grad
    cache = prepared.inputs["cache"]
    assert not cache.k_cache.requires_grad and cache.cache_seqlens.dtype == torch.int32

    def no_differentiable_route(*args, **kwargs):
        raise AssertionError("decode_attention took its differentiable route")

    monkeypatch.setattr(functional_decode, "_differentiable", no_differentiable_route)
    assert _rows(case, device)[runner.FASTFORMER].ok
    # The same case with inputs that require grad takes that route: the guard can fail.
    graded = dataclasses.replace(case, differentiable=True)
    row = _rows(graded, device)[runner.FASTFORMER]
    assert not row.ok and "differentiable route" in row.detail


def _ignores_lengths(q, cache):
    full = torch.full_like(cache.cache_seqlens, cache.k_cache.shape[2])
    return fastformer.decode_attention(q, cache.k_cache, cache.v_cache, full, validate=False)


def _scaled(q, cache):
    return decode._fastformer(q, cache) * WRONG_FACTOR


@pytest.mark.parametrize(
    "fn, reason",
    [(_ignores_lengths, "output[0]: FAILED"), (_scaled, "output[0]: FAILED")],
    ids=["reads-past-the-lengths", "scaled"],
)
def test_wrong_decode_provider_is_caught(device, fn, reason):
    # fp32: a 1% error is far above its floor (in bf16 it would hide under the floor's 2 ulps)
    rows = _rows(_with_fastformer(decode.decode_case(MIXED, torch.float32), fn), device)
    bad = rows[runner.FASTFORMER]
    assert not bad.ok and reason in bad.detail
    assert bad.median_ms is None and rows[runner.EAGER].speedup is None


def test_decode_truth_is_float64_one_row_at_a_time_and_kept(device):
    generator = torch.Generator(device=device).manual_seed(runner.SEED)
    inputs = decode._decode_inputs(device, generator, shape=MIXED, dtype=torch.bfloat16)
    q, cache = inputs["q"], inputs["cache"]
    truth = decode.decode_reference(q.double(), cache)
    assert truth.dtype == torch.float64
    direct = reference.decode_attention(
        q.double(), cache.k_cache.double(), cache.v_cache.double(), cache.cache_seqlens
    )
    torch.testing.assert_close(truth, direct)
    assert torch.equal(decode.decode_reference(q.double(), cache), truth)  # kept, same q
    other = decode.decode_reference(q.double() + 1, cache)  # another q: computed anew
    assert not torch.equal(other, truth)


# --- the KV-cache append ----------------------------------------------------------------------


def test_cpu_append_suite_passes(device):
    cases = suites.cases("kv_cache_append", device, [torch.bfloat16])
    rows = _rows(cases[0], device, modes=runner.MODES)
    assert set(rows) == {runner.EAGER, runner.FASTFORMER}
    assert all(row.ok and row.mode == "fwd" for row in rows.values())


def _append_without_rotary(k_cache, v_cache, k_new, v_new, state):
    fastformer.kv_cache_append_(k_cache, v_cache, k_new, v_new, state.cache_seqlens)
    return decode._written(k_cache, v_cache, state)


def _append_nothing(k_cache, v_cache, k_new, v_new, state):
    return decode._written(k_cache, v_cache, state)


@pytest.mark.parametrize(
    "fn", [_append_without_rotary, _append_nothing], ids=["no-rotary", "writes-nothing"]
)
def test_wrong_append_provider_is_caught(device, fn):
    rows = _rows(_with_fastformer(decode.append_case(TINY_APPEND), fn), device)
    assert not rows[runner.FASTFORMER].ok
    assert "FAILED" in rows[runner.FASTFORMER].detail


# --- generation -----------------------------------------------------------------------------


def _tiny_case(sessions):
    return generation.generation_case(generation.CPU_SPECS[0], 2, 16, torch.float32, sessions)


def _generation_rows(case, device, providers=generation.GENERATION_PROVIDERS):
    generator = torch.Generator(device=device).manual_seed(runner.SEED)
    rows = generation.run_generation_case(case, providers, device, generator)
    return {(row.mode, row.provider): row for row in rows}


def test_generation_case_rows_on_the_cpu(device):
    if device.type == "cuda":
        pytest.skip("the CPU's provider set (the GPU adds compile and ff_nograph)")
    rows = _generation_rows(_tiny_case(None), device)
    assert set(rows) == {
        (mode, provider)
        for mode in generation.GENERATION_MODES
        for provider in (runner.EAGER, runner.FASTFORMER)
    }
    assert all(row.ok for row in rows.values()), [row.detail for row in rows.values()]
    decode_row = rows[("decode", runner.FASTFORMER)]
    assert decode_row.tokens_per_s == pytest.approx(2 / (decode_row.median_ms / 1000))
    prefill_row = rows[("prefill", runner.FASTFORMER)]
    assert prefill_row.tokens_per_s == pytest.approx(2 * 16 / (prefill_row.median_ms / 1000))
    assert "next-token logits: ok" in decode_row.detail
    eager_row = rows[("decode", runner.EAGER)]
    assert eager_row.speedup == pytest.approx(eager_row.median_ms / decode_row.median_ms)


class _Forgetful(generation.EagerSession):
    """Steps on an empty cache: the prompt is forgotten."""

    def fill(self):
        self.cache = generation._transformers().DynamicCache(config=self.model.config)


def test_wrong_generation_provider_is_caught(device):
    sessions = {runner.EAGER: generation.EagerSession, runner.FASTFORMER: _Forgetful}
    rows = _generation_rows(_tiny_case(sessions), device)
    bad = rows[("decode", runner.FASTFORMER)]
    assert not bad.ok and "next-token logits: FAILED" in bad.detail
    assert not rows[("prefill", runner.FASTFORMER)].ok
    assert rows[("decode", runner.EAGER)].ok


def _steps_repeat(session) -> None:
    session.fill()
    first = session.step().clone()
    for _ in range(2):
        torch.testing.assert_close(session.step(), first, rtol=0, atol=0)


def test_steps_rewind_the_cache(device, monkeypatch):
    case = _tiny_case(None)
    ids, token = generation.make_inputs(case, device, torch.Generator(device).manual_seed(0))
    torch.manual_seed(runner.SEED)
    model = case.build(device, case.dtype)
    _steps_repeat(generation.EagerSession(model, ids, token))
    # The static-cache session's mechanics, without compiling (GPU only in the suite).
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: fn)
    static = generation.StaticCompileSession(model, ids, token)
    _steps_repeat(static)
    eager = generation.EagerSession(model, ids, token)
    eager.fill()
    torch.testing.assert_close(static.step(), eager.step())


# --- targets and the command line -------------------------------------------------------------


def _target_row(variant, provider=runner.FASTFORMER, fraction=0.9, ok=True):
    return runner.Row(
        op="decode_attention", shape="8x32x8x32768x128", dtype="bfloat16", mode="fwd",
        provider=provider, median_ms=0.3, q20_ms=0.3, q80_ms=0.3, gbps=fraction * 4000,
        tflops=None, peak_fraction=fraction, speedup=None, ok=ok, detail="ok", timing="gpu",
        x_axis="context length", x_value=32768, variant=variant,
    )  # fmt: skip


def test_target_lines():
    rows = [
        _target_row("batch 8", fraction=0.9),
        _target_row("batch 8", provider=runner.SDPA, fraction=0.5),
        _target_row("batch 32", fraction=0.8),
    ]
    met, missed = targets.target_lines(rows)
    assert "batch 8" in met and "90% (3600 GB/s): met" in met and "others: sdpa 50%" in met
    assert "batch 32" in missed and "80% (3200 GB/s): MISSED" in missed
    cpu = dataclasses.replace(rows[0], peak_fraction=None, gbps=None)
    assert "no GPU" in targets.target_lines([cpu])[0]
    assert targets.target_lines([cpu])[1].endswith(": not run")  # a GPU run that left it out
    on_cpu = dataclasses.replace(cpu, timing=devices.CPU_TIMING, x_value=64)
    assert all("tiny shapes" in line for line in targets.target_lines([on_cpu]))
    failed = dataclasses.replace(rows[0], ok=False)
    assert "FAILED" in targets.target_lines([failed])[0]
    assert targets.target_lines([dataclasses.replace(rows[0], op="attention")]) == []


def test_command_runs_the_decode_ops_and_prints_the_targets(monkeypatch):
    # The CPU's tiny shapes on any device (a GPU's grid is the gpu_check's job).
    monkeypatch.setattr(decode, "_gpu_shapes", lambda: list(decode.CPU_SHAPES))
    monkeypatch.setattr(decode, "GPU_APPEND_SHAPES", decode.CPU_APPEND_SHAPES)
    capture = io.StringIO()
    monkeypatch.setattr("sys.stdout", capture)
    argv = ["bench", "--op", "decode_attention", "kv_cache_append", "--mode", "fwd", "bwd"]
    assert cli.main(argv) == cli.EXIT_OK
    out = capture.getvalue()
    assert "decode_attention+mixed" in out and "kv_cache_append+rotary" in out
    assert " bwd " not in out
    target = [line for line in out.splitlines() if line.startswith("target: ")]
    assert len(target) == 2
    if not torch.cuda.is_available():
        assert all("no GPU" in line for line in target)


def test_budget_weights_decode_and_generation(monkeypatch):
    monkeypatch.setattr(command.time, "monotonic", lambda: 0.0)
    names = ["layer_norm", "decode_attention", "models", command.GENERATION]
    deadlines = list(command._deadlines(90.0, names))  # weights 1, 2, 1, 5: 9 in all
    assert deadlines == pytest.approx([10.0, 90.0 * 2 / 8, 90.0 / 6, 90.0])
    assert list(command._deadlines(None, names)) == [None] * 4
