"""Performance targets set on the benchmarks, read from a run's rows.

- Decode attention at 32k keys: fastformer's ``decode_attention`` rows in bf16 at batch 8 and
  32, every row 32768 keys, LLaMA-3-8B's heads, at least 85% of the measured copy bandwidth.

A target is "met" or "MISSED" only from a GPU run that measured it; otherwise the line says why
there is no verdict (not run, failed its check, or no GPU: the CPU has no bandwidth to compare
against). Each line also gives the other providers' fraction on the same row, for scale. The
command line prints these lines after the table and the Markdown report opens with them.
Formatting only: nothing here runs a benchmark.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fastformer.benchmarks.device import CPU_TIMING
from fastformer.benchmarks.runner import FASTFORMER, Row

PERCENT = 100


@dataclass(frozen=True)
class Target:
    """``provider``'s rows of ``op`` in ``dtype`` at ``x_value``, one per variant, must reach
    ``min_peak_fraction`` of the device's peak (the copy bandwidth, for a GB/s row)."""

    what: str
    op: str
    dtype: str
    x_value: int
    variants: tuple[str, ...]
    min_peak_fraction: float
    provider: str = FASTFORMER


TARGETS = (
    Target(
        what="decode attention, LLaMA-3-8B heads, 32k keys",
        op="decode_attention",
        dtype="bfloat16",
        x_value=32768,
        variants=("batch 8", "batch 32"),
        min_peak_fraction=0.85,
    ),
)


def _matches(row: Row, target: Target, variant: str) -> bool:
    return (
        row.op == target.op
        and row.dtype == target.dtype
        and row.x_value == target.x_value
        and row.variant == variant
        and row.mode == "fwd"
    )


NO_GPU = "no verdict: no GPU (the CPU has no bandwidth to compare against)"


def _verdict(row: Row | None, target: Target, on_cpu: bool) -> str:
    if row is None:
        return f"{NO_GPU}; the CPU runs tiny shapes only" if on_cpu else "not run"
    if not row.ok:
        return "no verdict: its row FAILED the check"
    if row.peak_fraction is None:
        return NO_GPU
    met = "met" if row.peak_fraction >= target.min_peak_fraction else "MISSED"
    return f"{row.peak_fraction * PERCENT:.0f}% ({row.gbps:.0f} GB/s): {met}"


def target_lines(rows: Sequence[Row], targets: Sequence[Target] = TARGETS) -> list[str]:
    """One line per target row whose op the run measured (none for ops it left out)."""
    lines = []
    for target in targets:
        measured = [row for row in rows if row.op == target.op]
        if not measured:
            continue
        on_cpu = all(row.timing == CPU_TIMING for row in measured)
        for variant in target.variants:
            matching = [row for row in rows if _matches(row, target, variant)]
            own = next((row for row in matching if row.provider == target.provider), None)
            others = [
                f"{row.provider} {row.peak_fraction * PERCENT:.0f}%"
                for row in matching
                if row.provider != target.provider and row.ok and row.peak_fraction is not None
            ]
            shape = f" {own.shape}" if own is not None else ""
            line = (
                f"{target.what}, {variant}{shape}: {target.provider} >= "
                f"{target.min_peak_fraction * PERCENT:.0f}% of the copy bandwidth: "
                f"{_verdict(own, target, on_cpu)}"
            )
            if others:
                line += f" (others: {', '.join(others)})"
            lines.append(line)
    return lines
