"""Plots of benchmark rows: throughput against the size each suite sweeps, one line per provider
(and variant), one PNG per (op, dtype, mode).

The x axis is what the case says it sweeps (``Row.x_axis``): sequence length for attention,
rotary and models, hidden size for the norms, tokens (M) for the feed-forward GEMMs, whose
suite keeps each layer's K and N and varies the tokens, context length for decode attention,
batch for the KV-cache append and generation. The y axis is TFLOP/s where the op counts FLOPs,
else GB/s, else (generation) tokens per second, on a GPU; on the CPU there is no throughput to
speak of (the Triton interpreter's wall clock), so the plot shows the median time in ms on a
log scale, and its title says so. Failed rows are left out.

matplotlib draws through its Agg canvas (``matplotlib.figure.Figure``, no pyplot and no
display); it is imported only when plots are asked for.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from fastformer.benchmarks.device import CPU_TIMING
from fastformer.benchmarks.runner import Row

CPU_Y_LABEL = "median ms (log scale)"
CPU_TITLE_NOTE = "Triton interpreter on CPU: NOT GPU performance"
FIGURE_SIZE = (7.0, 4.5)  # inches
DPI = 100
# Characters kept in file names; anything else becomes "_".
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def file_name(op: str, dtype: str, mode: str) -> str:
    """``<op>_<dtype>_<mode>.png`` with only safe characters (op names hold "+" and "[...]")."""
    stem = _UNSAFE.sub("_", f"{op}_{dtype}_{mode}").strip("_")
    return f"{stem}.png"


def _metric(rows: Sequence[Row]) -> tuple[str, str]:
    """(Row attribute, axis label) of the group's y values."""
    if any(row.tflops is not None for row in rows):
        return "tflops", "TFLOP/s"
    if any(row.gbps is not None for row in rows):
        return "gbps", "GB/s"
    on_gpu = all(row.timing != CPU_TIMING for row in rows)
    if on_gpu and any(row.tokens_per_s is not None for row in rows):
        return "tokens_per_s", "tokens/s"
    return "median_ms", CPU_Y_LABEL


def _draw(path: Path, title: str, rows: Sequence[Row]) -> None:
    from matplotlib.figure import Figure

    attribute, y_label = _metric(rows)
    lines: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for row in rows:
        value = getattr(row, attribute)
        if value is not None:
            label = f"{row.provider} ({row.variant})" if row.variant else row.provider
            lines[label].append((row.x_value, value))
    figure = Figure(figsize=FIGURE_SIZE, dpi=DPI)
    axes = figure.add_subplot()
    for label, points in sorted(lines.items()):
        xs, ys = zip(*sorted(points), strict=True)
        axes.plot(xs, ys, marker="o", label=label)
    axes.set_xscale("log", base=2)
    x_values = sorted({row.x_value for row in rows})
    axes.set_xticks(x_values, [str(x) for x in x_values])
    axes.set_xlabel(rows[0].x_axis)
    axes.set_ylabel(y_label)
    if attribute == "median_ms":
        axes.set_yscale("log")
        title = f"{title}\n{CPU_TITLE_NOTE}"
    axes.set_title(title)
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, format="png")


def plot_rows(rows: Sequence[Row], folder: str | Path) -> list[Path]:
    """One PNG per (op, dtype, mode) in ``folder`` (created); the paths written, in order.
    Rows without a swept size, and failed rows, are left out."""
    groups: dict[tuple[str, str, str], list[Row]] = defaultdict(list)
    for row in rows:
        if row.ok and row.x_value is not None and row.x_axis:
            groups[(row.op, row.dtype, row.mode)].append(row)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for (op, dtype, mode), group in groups.items():
        path = folder / file_name(op, dtype, mode)
        _draw(path, f"{op} {dtype} {mode}", group)
        written.append(path)
    return written
