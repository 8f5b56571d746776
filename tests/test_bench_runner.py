"""The benchmark runner itself: byte formulas, the correctness gate, the timer, the command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from fastformer import cli, reference
from fastformer.benchmarks import counts, norm, runner, suites
from fastformer.benchmarks import device as devices

# Shapes small enough for the interpreter, in float32 so that a 1% error is far past the rule.
TINY_SHAPE = (8, 64)
TINY_ARGS = ["--rows", "8", "--cols", "64", "--mode", "fwd"]
WRONG_FACTOR = 1.01
SUBPROCESS_TIMEOUT_S = 300


# --- byte formulas, against counts worked out by hand -----------------------------------------


def test_norm_fwd_bytes_layer_norm_with_residual():
    # read x, residual; write y, h: 4 * 4096 * 1024 * 2 B; read weight, bias: 2 * 1024 * 2 B.
    assert (
        counts.norm_fwd_bytes(
            4096, 1024, elem_bytes=2, has_residual=True, has_weight=True, has_bias=True
        )
        == 33_554_432 + 4_096
    )


def test_norm_fwd_bytes_rms_norm_fp32_weight():
    # read x, write y: 2 * 4096 * 4096 * 2 B; read an fp32 weight: 4096 * 4 B.
    assert counts.norm_fwd_bytes(4096, 4096, elem_bytes=2, param_bytes=4) == 67_108_864 + 16_384


def test_norm_bwd_bytes_layer_norm_with_residual():
    # read dy, h, dh; write dx: 4 * 4096 * 1024 * 2 B; read w, write dw, db: 3 * 1024 * 2 B.
    assert (
        counts.norm_bwd_bytes(
            4096, 1024, elem_bytes=2, has_residual=True, has_weight=True, has_bias=True
        )
        == 33_554_432 + 6_144
    )


def test_norm_bwd_bytes_rms_norm_fp32():
    # read dy, x; write dx: 3 * 64 * 256 * 4 B; read w, write dw: 2 * 256 * 4 B.
    assert counts.norm_bwd_bytes(64, 256, elem_bytes=4) == 196_608 + 2_048


def test_for_mode_and_gbps():
    assert counts.for_mode("fwd", 10, 3) == 10
    assert counts.for_mode("bwd", 10, 3) == 3
    assert counts.for_mode("fwd+bwd", 10, 3) == 13
    assert counts.gbps(10**9, 1000.0) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="mode='both'"):
        counts.for_mode("both", 10, 3)


def test_flop_formulas_against_hand_counts():
    # Attention forward: q @ k^T and p @ v, 2 * Sq * Sk * D each per (batch, head).
    assert counts.attention_flops(2, 3, 5, 7, 11, is_causal=False) == 2 * 3 * (2 * 5 * 7 * 11) * 2
    assert counts.attention_flops(2, 3, 8, 8, 16, is_causal=True) == 2 * 3 * 4 * 8 * 8 * 16 // 2
    assert counts.gemm_flops(4, 5, 6) == 2 * 4 * 5 * 6
    # 1 TFLOP in 1 ms is 1000 TFLOP/s.
    assert counts.tflops(10**12, 1.0) == pytest.approx(1000.0)


def test_attention_and_linear_cases_carry_their_flops():
    from fastformer.benchmarks import attention, linear

    shape = attention.AttentionShape(4, 16, 1024, 128)
    case = attention.attention_case(shape, torch.bfloat16, is_causal=True)
    assert case.fwd_flops == 4 * 4 * 16 * 1024 * 1024 * 128 // 2
    assert case.bwd_flops == int(2.5 * case.fwd_flops)
    gated = linear.linear_case("t", 64, 96, True, "silu", 32, torch.bfloat16)
    assert gated.fwd_flops == 2 * (2 * 32 * 96 * 64) and gated.bwd_flops == 2 * gated.fwd_flops


def test_norm_case_uses_the_formulas():
    case = norm.norm_case("layer_norm", (4096, 1024), torch.bfloat16, has_residual=True)
    assert case.op == "layer_norm+residual"
    assert case.fwd_bytes == 33_554_432 + 4_096
    assert case.bwd_bytes == 33_554_432 + 6_144


# --- the correctness gate ---------------------------------------------------------------------


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; the backward scales the gradient by WRONG_FACTOR."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * WRONG_FACTOR


def _wrong_output(**kwargs):
    return reference.rms_norm(**kwargs) * WRONG_FACTOR


def _wrong_grad(x, **kwargs):
    return reference.rms_norm(_ScaleGrad.apply(x), **kwargs)


def _raises(**kwargs):
    raise RuntimeError("kernel exploded")


def _case_with(fastformer_fn) -> runner.Case:
    case = norm.norm_case("rms_norm", TINY_SHAPE, torch.float32, has_residual=False)
    providers = {runner.EAGER: reference.rms_norm, runner.FASTFORMER: fastformer_fn}
    return runner.Case(**{**vars(case), "providers": providers})


def _rows(case, mode, device):
    generator = torch.Generator(device=device).manual_seed(runner.SEED)
    rows = runner.run_case(case, mode, runner.default_providers(device), device, generator)
    return {row.provider: row for row in rows}


@pytest.mark.parametrize(
    "fn, mode, reason",
    [(_wrong_output, "fwd", "output[0]"), (_wrong_grad, "bwd", "grad x"), (_raises, "fwd", "")],
    ids=["wrong-output", "wrong-grad", "raises"],
)
def test_wrong_provider_row_is_failed(device, fn, mode, reason):
    rows = _rows(_case_with(fn), mode, device)
    assert set(rows) == {runner.EAGER, runner.FASTFORMER}
    bad = rows[runner.FASTFORMER]
    assert not bad.ok
    assert reason in bad.detail
    assert bad.median_ms is None and bad.speedup is None
    assert rows[runner.EAGER].ok
    assert rows[runner.EAGER].speedup is None  # no speedup against a failed fastformer
    assert runner.any_failed(list(rows.values()))


@pytest.mark.parametrize("mode", runner.MODES)
def test_fastformer_rows_pass_and_give_a_speedup(device, mode):
    case = norm.norm_case("layer_norm", TINY_SHAPE, torch.float32, has_residual=True)
    rows = _rows(case, mode, device)
    assert all(row.ok for row in rows.values()), [row.detail for row in rows.values()]
    fastformer_row, eager_row = rows[runner.FASTFORMER], rows[runner.EAGER]
    assert fastformer_row.q20_ms <= fastformer_row.median_ms <= fastformer_row.q80_ms
    assert eager_row.speedup == pytest.approx(eager_row.median_ms / fastformer_row.median_ms)
    assert fastformer_row.speedup is None
    if device.type == "cuda":
        assert fastformer_row.gbps > 0 and fastformer_row.peak_fraction > 0
    else:
        assert fastformer_row.gbps is None and "NOT GPU" in fastformer_row.timing


def test_run_cases_rejects_unknown_names(device):
    with pytest.raises(ValueError, match="modes"):
        runner.run_cases([], modes=["sideways"], device=device)
    with pytest.raises(ValueError, match="providers"):
        runner.run_cases([], providers=["numpy"], device=device)


def test_environment_records_versions_and_commit(device):
    env = devices.environment(device)
    assert env.torch == torch.__version__
    assert env.commit == "unknown" or len(env.commit) == 40
    if device.type == "cpu":
        assert env.device == devices.CPU_DEVICE_NAME and env.peak_gbps is None


# --- the command line -------------------------------------------------------------------------


def test_cli_ops_match_the_suite():
    assert cli.BENCH_OPS == suites.OPS


def test_cli_bench_prints_a_row_per_op(capsys, tmp_path):
    json_path, csv_path = tmp_path / "bench.json", tmp_path / "bench.csv"
    argv = ["bench", "--op", *norm.OPS, *TINY_ARGS, "--json", str(json_path)]
    argv += ["--csv", str(csv_path)]
    assert cli.main(argv) == cli.EXIT_OK
    out = capsys.readouterr().out
    ops = {line.split()[0] for line in out.splitlines() if line.split()[:1] and "x" in line}
    for op in norm.OPS:
        assert {op, f"{op}+residual"} <= ops
    if not torch.cuda.is_available():
        assert "NOT GPU performance" in out
    payload = json.loads(json_path.read_text())
    assert payload["environment"]["torch"] == torch.__version__
    assert {row["op"] for row in payload["rows"]} == {
        op + suffix for op in norm.OPS for suffix in ("", "+residual")
    }
    assert all(row["ok"] for row in payload["rows"])
    assert csv_path.read_text().count("\n") == len(payload["rows"]) + 1


def test_cli_exits_non_zero_when_a_row_fails(capsys, monkeypatch):
    monkeypatch.setitem(norm._FASTFORMER_OPS, "rms_norm", _wrong_output)
    assert cli.main(["bench", "--op", "rms_norm", *TINY_ARGS]) == cli.EXIT_FAILED
    assert "FAILED" in capsys.readouterr().out


@pytest.mark.skipif(torch.cuda.is_available(), reason="the interpreter switch is for CPU runs")
def test_cli_switches_on_the_interpreter_itself():
    # A fresh process without TRITON_INTERPRET, as a user would type `python -m fastformer bench`.
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    argv = [sys.executable, "-m", "fastformer", "bench", "--op", "rms_norm", *TINY_ARGS]
    done = subprocess.run(
        argv, env=env, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S, check=False
    )
    assert done.returncode == cli.EXIT_OK, done.stdout + done.stderr
    assert "NOT GPU performance" in done.stdout
    assert "rms_norm+residual" in done.stdout


# --- peak memory and plots --------------------------------------------------------------------


def test_peak_memory_is_not_measured_on_the_cpu():
    assert devices.peak_memory_mib(lambda: torch.empty(1 << 20), torch.device("cpu")) is None


@pytest.mark.gpu
def test_peak_memory_counts_what_the_call_allocates(device):
    mib = 64
    n_bytes = mib * devices.BYTES_PER_MIB
    peak = devices.peak_memory_mib(
        lambda: torch.empty(n_bytes, dtype=torch.uint8, device=device), device
    )
    assert peak >= mib


def _plot_row(provider, x_value, ok=True, **values):
    fields = dict(median_ms=1.0, q20_ms=1.0, q80_ms=1.0, gbps=None, tflops=None)
    fields.update(peak_fraction=None, speedup=None, timing="t", detail="", **values)
    return runner.Row(
        op="attention+causal", shape="s", dtype="bfloat16", mode="fwd", provider=provider,
        ok=ok, x_axis="sequence length", x_value=x_value, variant="16 heads x 128", **fields,
    )  # fmt: skip


def test_plot_uses_tflops_when_counted_and_leaves_failed_rows_out(tmp_path):
    from fastformer.benchmarks import plot

    rows = [_plot_row(p, x, tflops=100.0 + x) for p in ("sdpa", "fastformer") for x in (512, 1024)]
    rows.append(_plot_row("eager", 512, ok=False))
    rows.append(runner.Row(**{**rows[0].as_dict(), "op": "failed-only", "ok": False}))
    assert plot._metric(rows) == ("tflops", "TFLOP/s")
    assert plot._metric([_plot_row("sdpa", 512, gbps=3.0)]) == ("gbps", "GB/s")
    assert plot._metric([_plot_row("sdpa", 512)])[1] == plot.CPU_Y_LABEL
    written = plot.plot_rows(rows, tmp_path / "plots")
    assert [path.name for path in written] == ["attention_causal_bfloat16_fwd.png"]
    assert written[0].read_bytes()[:4] == b"\x89PNG"
