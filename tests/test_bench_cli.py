"""``fastformer bench`` end to end on tiny CPU shapes: suites, progress bar, plots, the JSON
file's documented fields, the autotune section, the time budget and a stop by SIGTERM."""

from __future__ import annotations

import io
import json
import os
import re
import signal

import pytest
import torch

from fastformer import cli
from fastformer.benchmarks import command, models, report, runner, suites

TINY_NORM = ["--rows", "8", "--cols", "64", "128"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# A documented JSON field: a table line of report's docstring that opens with ``name``.
DOC_FIELD = re.compile(r"^\| ``([\w.\[\]]+)`` \|", re.MULTILINE)


def _unavailable(*args, **kwargs):
    raise models.SuiteUnavailable("fastformer.optimize: ImportError: not there (test)")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One run of every kernel op that has an autotuned kernel (attention, linear) and a norm,
    with the models suite made unavailable: (exit status, stdout, JSON, output folder)."""
    folder = tmp_path_factory.mktemp("bench")
    argv = ["bench", "--suite", "all", "--op", "rms_norm", "attention", "linear", *TINY_NORM]
    argv += ["--mode", "fwd", "--json", str(folder / "results.json")]
    argv += ["--markdown", str(folder / "report.md"), "--plot", str(folder / "plots")]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(models, "default_providers", _unavailable)
        capture = io.StringIO()
        patch.setattr("sys.stdout", capture)
        status = cli.main(argv)
    payload = json.loads((folder / "results.json").read_text())
    return status, capture.getvalue(), payload, folder


def test_suite_names_match():
    assert command.SUITE_CHOICES == (*suites.SUITES, suites.ALL)
    assert command.BENCH_OPS == suites.OPS == cli.BENCH_OPS


@pytest.mark.parametrize(
    "argv, expected",
    [
        ([], ("kernels", "models")),
        (["--op", "rotary"], ("kernels",)),
        (["--suite", "models"], ("models",)),
        (["--suite", "all", "--op", "rotary"], ("kernels", "models")),
        (["--suite", "kernels"], ("kernels",)),
    ],
    ids=["default-all", "op-means-kernels", "models", "all-with-op", "kernels"],
)
def test_suite_selection(argv, expected):
    args = cli.build_parser().parse_args(["bench", *argv])
    assert command.selected_suites(args) == expected


def test_unknown_suite_is_rejected():
    with pytest.raises(ValueError, match="suite='everything'"):
        suites.expand("everything")
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["bench", "--suite", "everything"])


def test_models_suite_unavailable_is_a_note_not_a_failure(tiny_run):
    status, out, payload, _ = tiny_run
    assert status == cli.EXIT_OK
    assert "models suite not available yet: fastformer.optimize" in out
    assert any("not available yet" in note for note in payload["notes"])
    assert not any(row["op"].startswith("model:") for row in payload["rows"])
    assert payload["complete"] is True


def test_models_suite_needs_optimize():
    with pytest.raises(models.SuiteUnavailable, match="fastformer.no_such_part"):
        models._require("fastformer", "no_such_part")


def test_every_documented_json_field_is_there_and_every_field_documented(tiny_run):
    _, _, payload, _ = tiny_run
    documented = set(DOC_FIELD.findall(report.__doc__))
    assert len(documented) > 30, documented
    present = set()
    for key, value in payload.items():
        if isinstance(value, dict):
            present |= {f"{key}.{name}" for name in value}
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            names = set(value[0])
            assert all(set(item) == names for item in value)
            present |= {f"{key}[].{name}" for name in names}
        else:
            present.add(key)
    # Lists of objects that are empty here ("skipped" is a list of strings) are documented as
    # plain names; every list of objects here is non-empty.
    assert payload["rows"] and payload["autotune"]
    assert documented == present, (documented - present, present - documented)


def test_environment_records_device_versions_and_commit(tiny_run):
    env = tiny_run[2]["environment"]
    assert env["torch"] == torch.__version__
    assert env["python"].count(".") == 2
    assert env["transformers"]  # installed on this project's machines
    assert env["commit"] == "unknown" or re.fullmatch(r"[0-9a-f]{40}", env["commit"])
    if not torch.cuda.is_available():
        assert env["device"] == "cpu (Triton interpreter)"


def test_autotune_section_lists_the_kernels_that_ran(tiny_run):
    _, _, payload, folder = tiny_run
    kernels = {choice["kernel"] for choice in payload["autotune"]}
    assert {"_attn_fwd_kernel", "_linear_fwd_kernel"} <= kernels
    for choice in payload["autotune"]:
        assert choice["module"].startswith("fastformer.kernels.")
        assert choice["config"]["num_warps"] >= 1
        assert choice["tuned"] == (choice["key"] is not None)
    assert "_attn_fwd_kernel" in (folder / "report.md").read_text()


def test_peak_memory_column(tiny_run):
    _, out, payload, _ = tiny_run
    assert "peak MiB" in out
    passing = [row for row in payload["rows"] if row["ok"]]
    if torch.cuda.is_available():
        assert all(row["peak_mib"] > 0 for row in passing)
    else:
        assert all(row["peak_mib"] is None for row in passing)
        table = [line for line in out.splitlines() if line.startswith("rms_norm ")]
        assert table and all(f" {report.NOT_MEASURED} " in line for line in table)


def test_plots_are_valid_pngs_one_per_op_dtype_mode(tiny_run):
    _, _, payload, folder = tiny_run
    groups = {(row["op"], row["dtype"], row["mode"]) for row in payload["rows"] if row["ok"]}
    pngs = sorted((folder / "plots").glob("*.png"))
    assert len(pngs) == len(groups)
    from matplotlib.image import imread

    for png in pngs:
        assert png.read_bytes()[:8] == PNG_MAGIC
        assert imread(png).shape[0] > 100
        assert re.fullmatch(r"[A-Za-z0-9_.-]+", png.name)
    markdown = (folder / "report.md").read_text()
    assert all(f"plots/{png.name}" in markdown for png in pngs)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("quiet", [False, True], ids=["terminal", "quiet"])
def test_progress_bar_on_a_terminal_only_without_quiet(monkeypatch, capsys, quiet):
    terminal = _Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    argv = ["bench", "--op", "rms_norm", "--rows", "8", "--cols", "64", "--mode", "fwd"]
    assert cli.main(argv + (["--quiet"] if quiet else [])) == cli.EXIT_OK
    assert ("step" in terminal.getvalue()) != quiet
    assert "rms_norm+residual" in capsys.readouterr().out


def test_no_progress_bar_when_stderr_is_not_a_terminal(capsys):
    argv = ["bench", "--op", "rms_norm", "--rows", "8", "--cols", "64", "--mode", "fwd"]
    assert cli.main(argv) == cli.EXIT_OK
    assert "step" not in capsys.readouterr().err


def test_budget_skips_the_cases_left_and_lists_them(tmp_path, capsys, monkeypatch):
    calls = []
    real = runner.run_case

    def slow_case(*args, **kwargs):
        calls.append(args[0].op)
        rows = real(*args, **kwargs)
        monkeypatch.setattr(runner.time, "monotonic", lambda: float("inf"))  # budget spent
        return rows

    monkeypatch.setattr(runner, "run_case", slow_case)
    path = tmp_path / "results.json"
    argv = ["bench", "--op", "rms_norm", *TINY_NORM, "--mode", "fwd", "--budget", "60"]
    assert cli.main([*argv, "--json", str(path)]) == cli.EXIT_OK
    payload = json.loads(path.read_text())
    assert len(calls) == 1
    assert len(payload["skipped"]) == 3  # 4 cases (2 widths, with and without residual)
    assert all(step.endswith(" fwd") for step in payload["skipped"])
    assert "not run, time budget spent (3)" in capsys.readouterr().out


def test_sigterm_stops_the_run_and_keeps_the_rows(tmp_path, monkeypatch):
    real = runner.run_case
    calls = []

    def terminated_after_one(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "run_case", terminated_after_one)
    path, md = tmp_path / "results.json", tmp_path / "report.md"
    argv = ["bench", "--op", "rms_norm", *TINY_NORM, "--mode", "fwd", "--json", str(path)]
    assert cli.main([*argv, "--markdown", str(md)]) == cli.EXIT_FAILED
    payload = json.loads(path.read_text())
    assert payload["complete"] is False
    assert len(payload["rows"]) == 2  # the first case's eager and fastformer rows
    assert "STOPPED" in md.read_text()
    assert signal.getsignal(signal.SIGTERM) is not command._raise_stopped  # handler restored


def test_budget_is_shared_among_the_suites_left(monkeypatch):
    monkeypatch.setattr(command.time, "monotonic", lambda: 1000.0)
    assert command._share(None, 3) is None
    assert command._share(1100.0, 4) == pytest.approx(1025.0)  # a quarter of what is left
    assert command._share(900.0, 2) == pytest.approx(1000.0)  # spent: no time at all


def test_plot_without_matplotlib_is_refused_before_running(monkeypatch, capsys, tmp_path):
    real = command.importlib.util.find_spec
    monkeypatch.setattr(
        command.importlib.util,
        "find_spec",
        lambda name, *args: None if name == "matplotlib" else real(name, *args),
    )
    argv = ["bench", "--op", "rms_norm", "--plot", str(tmp_path / "plots")]
    assert cli.main(argv) == cli.EXIT_FAILED
    captured = capsys.readouterr()
    assert "--plot needs matplotlib" in captured.err and "rms_norm" not in captured.out
