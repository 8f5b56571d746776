"""Benchmark results as a fixed-width text table, CSV, JSON and a Markdown report. Formatting
only: the command line prints and writes what this returns.

The JSON file (``fastformer bench --json PATH``) holds one object; every field below is always
present (a test keeps this table and the file in step):

| field | meaning |
|---|---|
| ``environment.device`` | the GPU's name, or "cpu (Triton interpreter)" |
| ``environment.timing`` | how times were taken (do_bench on a GPU; interpreter wall clock) |
| ``environment.python`` | Python's version |
| ``environment.torch`` | torch's version |
| ``environment.cuda`` | the CUDA version torch was built for (null for a CPU build) |
| ``environment.triton`` | Triton's version |
| ``environment.transformers`` | transformers' version (null when not installed) |
| ``environment.fastformer`` | fastformer's version |
| ``environment.commit`` | ``git rev-parse HEAD`` of the checkout, or "unknown" |
| ``environment.peak_gbps`` | measured copy bandwidth, GB/s (null on the CPU) |
| ``environment.peak_tflops`` | measured bf16 matmul rate, TFLOP/s (null on the CPU) |
| ``rows[].op`` | the case's op (``model:NAME``: a whole model; ``generate:NAME``: generation) |
| ``rows[].shape`` | the case's shape, sizes joined by "x" |
| ``rows[].dtype`` | float32, float16 or bfloat16 |
| ``rows[].mode`` | fwd, bwd or fwd+bwd (models: a training step); generation: decode, prefill |
| ``rows[].provider`` | eager, compile, sdpa, addmm_act, flash_attn, liger, ff_nograph, fastformer |
| ``rows[].median_ms`` | median time, ms (null on a failed row) |
| ``rows[].q20_ms`` | 20% quantile, ms |
| ``rows[].q80_ms`` | 80% quantile, ms |
| ``rows[].gbps`` | GB/s from the op's byte count (null on the CPU) |
| ``rows[].tflops`` | TFLOP/s where the op counts FLOPs (null on the CPU) |
| ``rows[].peak_fraction`` | fraction of the device's matching peak (null on the CPU) |
| ``rows[].speedup`` | fastformer's speedup over this provider (its median / fastformer's) |
| ``rows[].peak_mib`` | peak CUDA memory of one call, MiB (null on the CPU: no such counter) |
| ``rows[].ok`` | whether the provider passed its check against the float64 reference |
| ``rows[].detail`` | the check's verdict, or why the row failed |
| ``rows[].timing`` | as ``environment.timing`` |
| ``rows[].x_axis`` | what the suite sweeps (sequence length, hidden size, tokens) |
| ``rows[].x_value`` | its value in this case |
| ``rows[].variant`` | what else tells the case apart (heads, rows, batch) |
| ``rows[].tokens_per_s`` | generation: tokens a second (batch / step time; prefill: prompt's) |
| ``autotune[].kernel`` | an autotuned fastformer kernel that ran |
| ``autotune[].module`` | the module that defines it |
| ``autotune[].key_names`` | the names of its tuning key's arguments |
| ``autotune[].key`` | the key's values (then the tensors' dtypes); null: one candidate |
| ``autotune[].config`` | the config chosen: tile sizes, num_warps, num_stages, ... |
| ``autotune[].tuned`` | whether Triton chose it among several by timing them |
| ``notes`` | suites or cases left out, and why (not failures) |
| ``skipped`` | steps (case and mode) not run because the time budget was spent |
| ``complete`` | false when the run was stopped before its end (SIGTERM, Ctrl-C) |

The CSV file has one line per row, with the environment's fields repeated on each; the autotune
choices, notes and skipped steps are in the JSON and Markdown files only.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

from fastformer.benchmarks import targets
from fastformer.benchmarks.autotune import Choice
from fastformer.benchmarks.device import Environment
from fastformer.benchmarks.runner import Row

# (header, width) of each table column; numbers are right-aligned, text left-aligned.
COLUMNS = (
    ("op", 24),
    ("shape", 16),
    ("dtype", 8),
    ("mode", 7),
    ("provider", 10),
    ("median ms", 11),
    ("q20 ms", 11),
    ("q80 ms", 11),
    ("GB/s", 8),
    ("TFLOP/s", 8),
    ("% peak", 7),
    ("peak MiB", 9),
    ("tok/s", 9),
    ("ff speedup", 10),
    ("status", 6),
)
TEXT_COLUMNS = 5
MISSING = "-"
# Peak memory of a passing row on the CPU: torch has no allocator peak for CPU tensors.
NOT_MEASURED = "n/a"
PERCENT = 100


@dataclass
class Results:
    """Everything one run produced, as the JSON and Markdown files hold it."""

    env: Environment
    rows: list[Row]
    autotune: list[Choice] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    complete: bool = True

    def as_dict(self) -> dict:
        return {
            "environment": self.env.as_dict(),
            "rows": [row.as_dict() for row in self.rows],
            "autotune": [choice.as_dict() for choice in self.autotune],
            "notes": list(self.notes),
            "skipped": list(self.skipped),
            "complete": self.complete,
        }


def _ms(value: float | None) -> str:
    return MISSING if value is None else f"{value:.4g}"


def _peak_mib(row: Row) -> str:
    if row.peak_mib is not None:
        return f"{row.peak_mib:.0f}"
    return NOT_MEASURED if row.ok else MISSING


def _cells(row: Row) -> list[str]:
    return [
        row.op,
        row.shape,
        row.dtype,
        row.mode,
        row.provider,
        _ms(row.median_ms),
        _ms(row.q20_ms),
        _ms(row.q80_ms),
        MISSING if row.gbps is None else f"{row.gbps:.0f}",
        MISSING if row.tflops is None else f"{row.tflops:.0f}",
        MISSING if row.peak_fraction is None else f"{row.peak_fraction * PERCENT:.0f}%",
        _peak_mib(row),
        MISSING if row.tokens_per_s is None else f"{row.tokens_per_s:.4g}",
        MISSING if row.speedup is None else f"{row.speedup:.3g}x",
        "ok" if row.ok else "FAILED",
    ]


def _line(cells: Sequence[str]) -> str:
    parts = [
        cell.ljust(width) if i < TEXT_COLUMNS else cell.rjust(width)
        for i, (cell, (_, width)) in enumerate(zip(cells, COLUMNS, strict=True))
    ]
    return "  ".join(parts).rstrip()


def environment_lines(env: Environment) -> list[str]:
    peak = MISSING if env.peak_gbps is None else f"{env.peak_gbps:.0f} GB/s (measured copy)"
    matmul = MISSING if env.peak_tflops is None else f"{env.peak_tflops:.0f} TFLOP/s (bf16 mm)"
    cuda = f" (CUDA {env.cuda})" if env.cuda else ""
    return [
        f"device: {env.device}   timing: {env.timing}",
        f"python {env.python}   torch {env.torch}{cuda}   triton {env.triton}   "
        f"transformers {env.transformers or 'not installed'}   fastformer {env.fastformer}",
        f"commit {env.commit}",
        f"peaks: {peak}, {matmul}; % peak is against the first for GB/s rows, the second for "
        "TFLOP/s rows",
        "ff speedup: fastformer's speedup over the row's provider (its median / fastformer's); "
        f"peak MiB: CUDA memory of one call ({NOT_MEASURED} on the CPU); tok/s: generation "
        "rows' tokens a second",
    ]


def header_lines(env: Environment) -> list[str]:
    """The environment, then the table's column titles and rule."""
    titles = _line([title for title, _ in COLUMNS])
    return [*environment_lines(env), "", titles, "-" * len(titles)]


def row_lines(rows: Sequence[Row]) -> list[str]:
    """One table line per row; a failed row is followed by its reason, indented."""
    lines = []
    for row in rows:
        lines.append(_line(_cells(row)))
        if not row.ok:
            lines.append(f"    {row.provider} failed: {row.detail}")
    return lines


def write_json(path: str | Path, results: Results) -> None:
    Path(path).write_text(json.dumps(results.as_dict(), indent=2) + "\n")


def write_csv(path: str | Path, env: Environment, rows: Sequence[Row]) -> None:
    """One line per row, with the environment's fields repeated on each (one self-contained
    file per run, easy to concatenate across runs)."""
    env_fields = env.as_dict()
    names = [f"env_{name}" for name in env_fields] + [field.name for field in fields(Row)]
    with Path(path).open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=names)
        writer.writeheader()
        for row in rows:
            env_values = {f"env_{name}": value for name, value in env_fields.items()}
            writer.writerow({**env_values, **row.as_dict()})


def _md_table(titles: Sequence[str], lines: Sequence[Sequence[str]]) -> list[str]:
    def md_row(cells):
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

    return [md_row(titles), "|" + "---|" * len(titles), *(md_row(cells) for cells in lines)]


def markdown(
    results: Results, command: str, plots: Sequence[Path] = (), relative_to: Path | None = None
) -> str:
    """A Markdown report: environment, the table, failures, notes, skipped steps, the
    autotuner's choices and the plots (linked relative to ``relative_to``, the report's
    folder)."""
    rows = results.rows
    n_failed = sum(not row.ok for row in rows)
    lines = ["# fastformer bench", "", f"Command: `{command}`", ""]
    lines += [f"- {line}" for line in environment_lines(results.env)]
    state = "complete" if results.complete else "STOPPED before its end"
    lines += ["", f"{len(rows)} rows, {n_failed} failed; run {state}.", ""]
    target_lines = targets.target_lines(rows)
    if target_lines:
        lines += ["## Targets", "", *(f"- {line}" for line in target_lines), ""]
    lines += ["## Results", ""]
    lines += _md_table([title for title, _ in COLUMNS], [_cells(row) for row in rows])
    failed = [row for row in rows if not row.ok]
    if failed:
        lines += ["", "## Failed rows", ""]
        lines += [
            f"- {row.op} {row.shape} {row.mode} {row.provider}: {row.detail}" for row in failed
        ]
    if results.notes:
        lines += ["", "## Notes", "", *(f"- {note}" for note in results.notes)]
    if results.skipped:
        lines += ["", "## Not run (time budget spent)", ""]
        lines += [f"- {step}" for step in results.skipped]
    lines += ["", "## Autotuner choices", ""]
    if results.autotune:
        lines += _md_table(
            ["kernel", "key", "config", "tuned"],
            [
                [
                    c.kernel,
                    MISSING if c.key is None else ", ".join(c.key),
                    ", ".join(f"{k}={v}" for k, v in c.config.items()),
                    "yes" if c.tuned else "no (one candidate)",
                ]
                for c in results.autotune
            ],
        )
    else:
        lines.append("No autotuned kernel ran.")
    if plots:
        lines += ["", "## Plots", ""]
        for plot in plots:
            link = Path(os.path.relpath(plot, relative_to)) if relative_to else plot
            lines += [f"![{plot.stem}]({link.as_posix()})", ""]
    return "\n".join(lines).rstrip() + "\n"
