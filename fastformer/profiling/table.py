"""``fastformer profile``'s report as fixed-width text and JSON. Formatting only: the command
prints what this returns."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from fastformer.profiling.profile import ProfileResult, Row

MISSING = "-"
PERCENT = 100
MB = 10**6
GFLOP = 10**9
CPU_BANNER = (
    "NOTE: no CUDA device. fastformer's kernels ran in Triton's interpreter on the CPU: the\n"
    "times below are interpreter wall-clock times, NOT GPU performance, and there are no device\n"
    "kernels; GB/s and TFLOP/s are left out. Run on a GPU for kernel times."
)
# (title, width, left-aligned) per column.
OP_COLUMNS = (
    ("fastformer op", 34, True),
    ("calls", 6, False),
    ("total ms", 10, False),
    ("mean ms", 10, False),
    ("% step", 7, False),
    ("MB/step", 9, False),
    ("GFLOP/step", 10, False),
    ("GB/s", 7, False),
    ("TFLOP/s", 7, False),
)
KERNEL_COLUMNS = (
    ("kernel", 44, True),
    ("source", 10, True),
    ("under op", 30, True),
    ("calls", 6, False),
    ("total ms", 10, False),
    ("mean ms", 10, False),
    ("% step", 7, False),
    ("GB/s", 7, False),
    ("TFLOP/s", 7, False),
)


def _line(columns, cells: Sequence[str]) -> str:
    parts = [
        cell.ljust(width) if left else cell.rjust(width)
        for cell, (_, width, left) in zip(cells, columns, strict=True)
    ]
    return "  ".join(parts).rstrip()


def _titles(columns) -> list[str]:
    titles = _line(columns, [title for title, _, _ in columns])
    return [titles, "-" * len(titles)]


def _number(value: float | None, digits: int = 4) -> str:
    return MISSING if value is None else f"{value:.{digits}g}"


def _rate(value: float | None) -> str:
    return MISSING if value is None else f"{value:.0f}" if value >= 10 else f"{value:.2f}"


def _times(row: Row) -> list[str]:
    return [str(row.calls), _number(row.total_ms), _number(row.mean_ms),
            f"{row.share * PERCENT:.1f}%"]  # fmt: skip


def op_lines(rows: Sequence[Row]) -> list[str]:
    lines = _titles(OP_COLUMNS)
    for row in rows:
        cells = [row.name, *_times(row),
                 _number(row.step_bytes / MB) if row.step_bytes else MISSING,
                 _number(row.step_flops / GFLOP) if row.step_flops else MISSING,
                 _rate(row.gbps), _rate(row.tflops)]  # fmt: skip
        lines.append(_line(OP_COLUMNS, cells))
    return lines


def kernel_lines(rows: Sequence[Row]) -> list[str]:
    lines = _titles(KERNEL_COLUMNS)
    for row in rows:
        cells = [row.name, row.source, row.op or MISSING, *_times(row), _rate(row.gbps),
                 _rate(row.tflops)]  # fmt: skip
        lines.append(_line(KERNEL_COLUMNS, cells))
    return lines


def report_lines(result: ProfileResult) -> list[str]:
    """The whole report: banner (CPU), what ran, the op table, the kernel table, the trace."""
    lines = [CPU_BANNER, ""] if result.interpreted else []
    lines += [
        f"profiled: {result.target} on {result.device}, {result.steps} "
        f"step{'s' if result.steps != 1 else ''}, "
        f"{result.step_ms:.4g} ms a step (wall)",
        *(f"  {note}" for note in result.notes),
        "",
        "fastformer ops (named ranges fastformer::<op>; time on the "
        + ("CPU, interpreter" if result.interpreted else "device, kernels under the range")
        + "; bytes and FLOPs of the forward calls)",
        *op_lines(result.ops),
        "",
    ]
    if result.interpreted:
        lines.append("time by op: fastformer's (interpreted kernels) and PyTorch's outside them")
    else:
        lines.append("device kernels: fastformer's Triton kernels and the others, by the op "
                     "they ran under (a kernel alone in its op gets the op's rates)")  # fmt: skip
    lines += kernel_lines(result.kernels)
    if not result.ops:
        lines += ["", "no fastformer op ran: nothing in this target runs on fastformer's kernels"]
    if result.trace_path:
        lines += ["", f"wrote the Chrome/Perfetto trace {result.trace_path} "
                  "(open in ui.perfetto.dev or chrome://tracing)"]  # fmt: skip
    return lines


def write_json(path: str | Path, result: ProfileResult) -> None:
    Path(path).write_text(json.dumps(asdict(result), indent=1) + "\n")
