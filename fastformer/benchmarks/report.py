"""Benchmark rows as a fixed-width text table, CSV and JSON. Formatting only: the command line
prints what this returns."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path

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
    ("ff speedup", 10),
    ("status", 6),
)
TEXT_COLUMNS = 5
MISSING = "-"
PERCENT = 100


def _ms(value: float | None) -> str:
    return MISSING if value is None else f"{value:.4g}"


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
        MISSING if row.speedup is None else f"{row.speedup:.3g}x",
        "ok" if row.ok else "FAILED",
    ]


def _line(cells: Sequence[str]) -> str:
    parts = [
        cell.ljust(width) if i < TEXT_COLUMNS else cell.rjust(width)
        for i, (cell, (_, width)) in enumerate(zip(cells, COLUMNS, strict=True))
    ]
    return "  ".join(parts).rstrip()


def header_lines(env: Environment) -> list[str]:
    """The environment, then the table's column titles and rule."""
    peak = MISSING if env.peak_gbps is None else f"{env.peak_gbps:.0f} GB/s (measured copy)"
    matmul = MISSING if env.peak_tflops is None else f"{env.peak_tflops:.0f} TFLOP/s (bf16 mm)"
    lines = [
        f"device: {env.device}   timing: {env.timing}",
        f"torch {env.torch}   triton {env.triton}   commit {env.commit}",
        f"peaks: {peak}, {matmul}; % peak is against the first for GB/s rows, the second for "
        "TFLOP/s rows",
        "ff speedup: fastformer's speedup over the row's provider (its median / fastformer's)",
        "",
    ]
    titles = _line([title for title, _ in COLUMNS])
    return [*lines, titles, "-" * len(titles)]


def row_lines(rows: Sequence[Row]) -> list[str]:
    """One table line per row; a failed row is followed by its reason, indented."""
    lines = []
    for row in rows:
        lines.append(_line(_cells(row)))
        if not row.ok:
            lines.append(f"    {row.provider} failed: {row.detail}")
    return lines


def write_json(path: str | Path, env: Environment, rows: Sequence[Row]) -> None:
    payload = {"environment": env.as_dict(), "rows": [row.as_dict() for row in rows]}
    Path(path).write_text(json.dumps(payload, indent=2) + "\n")


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
