"""``fastformer profile``: on the CPU it profiles the interpreter run of a small model, writes a
Chrome trace that is valid JSON with the named ranges, and tabulates a row per fastformer op;
op counts follow the benchmark formulas; the GPU tables are built from synthetic device events
(no GPU here); every rejection path gives a clear message."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from torch.autograd import DeviceType
from torch.autograd.profiler_util import FunctionEvent

from fastformer import cli
from fastformer.benchmarks import counts
from fastformer.functional._ranges import PREFIX
from fastformer.profiling import op_counts, profile, table, targets

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script_method`:DeprecationWarning")

FAST = ["--warmup", "0", "--steps", "1"]


@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path, monkeypatch):
    """The default trace file lands in the working directory: keep it out of the repository."""
    monkeypatch.chdir(tmp_path)


def _run(capsys, *argv) -> tuple[int, str, str]:
    status = cli.main(["profile", *argv])
    out, err = capsys.readouterr()
    return status, out, err


def _op_table_rows(out: str) -> list[str]:
    lines = out.splitlines()
    titles = next(
        i for i, line in enumerate(lines) if line.split()[:3] == ["fastformer", "op", "calls"]
    )
    start = titles + 2  # after the titles and the rule
    end = lines.index("", start)
    return [line.split()[0] for line in lines[start:end]]


def test_small_model_on_cpu_writes_a_trace_with_named_ranges(tmp_path, capsys):
    trace, report = tmp_path / "trace.json", tmp_path / "report.json"
    status, out, _ = _run(capsys, "--model", "llama", "--tiny", *FAST, "--trace", str(trace),
                          "--json", str(report))  # fmt: skip
    assert status == 0
    assert "Triton's interpreter" in out and "NOT GPU performance" in out
    events = json.loads(trace.read_text())["traceEvents"]  # valid JSON
    names = {event.get("name", "") for event in events}
    ranges = {name.removeprefix(PREFIX) for name in names if name.startswith(PREFIX)}
    assert {"rms_norm", "scaled_dot_product_attention", "apply_rotary"} <= ranges
    # The model's structure: one range per module, by path.
    assert any(name.startswith("module::<model> (Transformer)") for name in names)
    assert sum(name.startswith("module::") for name in names) > 5
    # The table: a row per fastformer op, and the same rows in the JSON.
    assert sorted(_op_table_rows(out)) == sorted(ranges)
    rows = json.loads(report.read_text())["ops"]
    assert sorted(row["name"] for row in rows) == sorted(ranges)
    assert all(row["total_ms"] > 0 and row["calls"] > 0 for row in rows)
    assert all(row["gbps"] is None and row["tflops"] is None for row in rows)  # interpreter


def test_hf_model_runs_through_optimize(tmp_path, capsys):
    status, out, _ = _run(capsys, "--hf", "bert-tiny", *FAST, "--trace", str(tmp_path / "t.json"))
    assert status == 0
    assert "fastformer.optimize(BertModel" in out
    assert {"layer_norm", "linear", "scaled_dot_product_attention"} <= set(_op_table_rows(out))


def test_hf_model_without_optimize_is_said_so(monkeypatch):
    monkeypatch.setitem(sys.modules, "fastformer.integrations", None)
    target = targets.hf_target("gpt2-tiny", device=torch.device("cpu"), dtype=torch.float32,
                               batch=1, seq=4)  # fmt: skip
    assert any("fastformer.optimize is not available" in note for note in target.notes)
    target.step()


def test_op_counts_follow_the_benchmark_formulas(tmp_path, capsys):
    report = tmp_path / "report.json"
    status, out, _ = _run(capsys, "--op", "linear", "--shape", "32", "48", "64", "--warmup",
                          "0", "--steps", "2", "--trace", str(tmp_path / "t.json"), "--json",
                          str(report))  # fmt: skip
    assert status == 0
    (row,) = json.loads(report.read_text())["ops"]
    assert (row["name"], row["calls"]) == ("linear", 2)
    assert row["step_bytes"] == counts.linear_fwd_bytes(32, 48, 64, elem_bytes=4, has_bias=True)
    assert row["step_flops"] == counts.gemm_flops(32, 48, 64)


def test_op_count_of_each_op():
    x = torch.randn(6, 32, dtype=torch.bfloat16)
    w32 = torch.randn(32)
    assert op_counts.op_count(
        "layer_norm", dict(x=x, normalized_shape=(32,), weight=w32, bias=w32, residual=x)
    ) == (
        counts.norm_fwd_bytes(
            6, 32, elem_bytes=2, param_bytes=4, has_residual=True, has_bias=True
        ),  # fmt: skip
        0,
    )
    q = torch.randn(2, 4, 16, 8, dtype=torch.float16)
    k = torch.randn(2, 2, 24, 8, dtype=torch.float16)
    n_bytes, flops = op_counts.op_count(
        "scaled_dot_product_attention", dict(q=q, k=k, v=k, is_causal=True)
    )
    assert n_bytes == 2 * (q.numel() + 2 * k.numel() + q.numel())
    assert flops == counts.attention_flops(2, 4, 16, 24, 8, is_causal=True)
    rq, rk = torch.randn(1, 5, 4, 16), torch.randn(1, 5, 2, 16)
    assert op_counts.op_count("apply_rotary", dict(q=rq, k=rk, inv_freq=torch.ones(8))) == (
        counts.rotary_bytes(5, 4, 2, 16, 16, elem_bytes=4),
        0,
    )
    # Unknown ops and calls the op will refuse count nothing (the op raises its own error).
    assert op_counts.op_count("softmax", {}) == (0, 0)
    assert op_counts.op_count("linear", dict(x="not a tensor", weight=None)) == (0, 0)


def _event(id, name, start, end, *, device=DeviceType.CPU, linked=0):
    return FunctionEvent(id=id, name=name, thread=0, start_us=start, end_us=end,
                         device_type=device, linked_correlation_id=linked, use_device="cuda",
                         input_shapes=[], stack=[])  # fmt: skip


def test_gpu_kernel_table_from_device_events():
    """A step with a fastformer linear (one Triton kernel under its range) and a cuBLAS GEMM
    outside: kernels told apart, attributed to their op, the op's rates on its one kernel."""
    from fastformer.kernels import linear  # noqa: F401  (its kernel names are fastformer's)

    step = _event(1, "ProfilerStep*", 0, 1000)
    op = _event(2, PREFIX + "linear", 100, 400)
    other = _event(3, "aten::mm", 500, 700)
    backward = _event(
        4,
        "autograd::engine::evaluate_function: "
        "GeneratedBackwardFor_fastformer_kernels_linear_fwd_defaultBackward",
        800,
        990,
    )
    for child in (op, other, backward):
        child.cpu_parent = step
        step.append_cpu_child(child)
    kernel = _event(10, "_linear_fwd_kernel", 150, 350, device=DeviceType.CUDA, linked=2)
    gemm = _event(11, "sm90_xmma_gemm_bf16", 550, 650, device=DeviceType.CUDA, linked=3)
    dx = _event(12, "_linear_bwd_dx_kernel", 810, 860, device=DeviceType.CUDA, linked=4)
    op.append_kernel(kernel.name, 0, 200)
    other.append_kernel(gemm.name, 0, 100)
    backward.append_kernel(dx.name, 0, 50)
    events = [step, op, other, backward, kernel, gemm, dx]
    step_counts = {"linear": op_counts.OpCount(calls=1, bytes=2_000_000, flops=4_000_000_000)}
    target = targets.Target("synthetic", lambda: None)
    result = profile.analyse(events, step_counts, target, torch.device("cuda"), steps=1)
    assert not result.interpreted and result.step_ms == 1.0
    op_row, backward_row = result.ops
    assert (op_row.name, op_row.total_ms, op_row.share) == ("linear", 0.2, 0.2)
    assert (backward_row.name, backward_row.total_ms) == ("linear backward", 0.05)
    assert backward_row.gbps is None  # the ranges see forward calls only
    assert op_row.gbps == pytest.approx(10.0)  # 2 MB in 200 us
    assert op_row.tflops == pytest.approx(20.0)  # 4 GFLOP in 200 us
    by_name = {row.name: row for row in result.kernels}
    ours, theirs = by_name["_linear_fwd_kernel"], by_name["sm90_xmma_gemm_bf16"]
    assert (ours.source, ours.op, ours.calls) == ("fastformer", "linear", 1)
    assert ours.tflops == pytest.approx(20.0)
    assert (theirs.source, theirs.op, theirs.tflops) == ("other", "", None)
    assert by_name["_linear_bwd_dx_kernel"].op == "linear backward"
    text = "\n".join(table.report_lines(result))
    assert "NOT GPU performance" not in text and "_linear_fwd_kernel" in text


def test_module_ranges_close_when_a_module_raises():
    class Broken(torch.nn.Module):
        def forward(self, x):
            raise RuntimeError("broken forward")

    model = torch.nn.Sequential(torch.nn.Linear(4, 4), Broken())
    with torch.profiler.profile() as prof, profile.module_ranges(model):
        with pytest.raises(RuntimeError, match="broken forward"):
            model(torch.randn(2, 4))
    names = [event.name for event in prof.events()]
    assert "module::<model> (Sequential)" in names and "module::1 (Broken)" in names
    assert not model._forward_pre_hooks and not model._forward_hooks


@pytest.mark.parametrize(
    ("argv", "status", "message"),
    [
        (["--op", "linear", "--shape", "4", "4"], 1, "expected positive M N K"),
        (["--hf", "no-such-model"], 1, "is neither a folder nor one of bert-tiny"),
        (["--model", "gpt5"], 1, "--model 'gpt5' is not one of bert_base"),
        (["--model", "llama", "--set", "width=3"], 1, "--set width: not a TransformerConfig"),
        (["--model", "llama", "--set", "n_layers"], 1, "expected FIELD=VALUE"),
        (["--op", "rms_norm", "--warmup", "-1"], 1, "--warmup -1 must not be negative"),
    ],
    ids=["shape", "hf-name", "preset", "set-field", "set-syntax", "warmup"],
)
def test_rejections(capsys, argv, status, message):
    got, _, err = _run(capsys, *argv)
    assert got == status and message in err


def test_missing_models_package_is_said_so(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "fastformer.models", None)
    status, _, err = _run(capsys, "--model", "llama")
    assert status == 2 and "fastformer.models is not available" in err


def test_one_target_kind_is_required(capsys):
    with pytest.raises(SystemExit):
        cli.main(["profile"])
    with pytest.raises(SystemExit):
        cli.main(["profile", "--op", "linear", "--hf", "bert-tiny"])
