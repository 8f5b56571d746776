"""The ``bench`` command of fastformer's command line (``fastformer bench``).

:func:`add_parser` registers it on the command line's subparsers (``fastformer/cli.py``);
:func:`run` takes the parsed arguments and returns the exit status: 0 when every row passed its
check, 1 when one failed or the run was stopped before its end. This module is the command
line's: it prints (the table to stdout, the progress bar to stderr).

Suites: "kernels" (one per op: ``--op``), "models" (whole models, then the generation cases:
decode steps and prefill, :mod:`fastformer.benchmarks.generation`, which run when "fwd" is among
the modes; until ``fastformer.optimize`` exists the suite prints a "not available yet" note and
counts as no failure) or "all", the default; naming ops with ``--op`` alone runs the kernel
suites only. After the table come the performance targets the run measured
(:mod:`fastformer.benchmarks.targets`).

Without a CUDA device the kernels have to run in Triton's interpreter, which is chosen when the
kernels are defined, so ``TRITON_INTERPRET=1`` is set before anything imports them: this module
imports nothing heavy at import time, and the suites are imported inside :func:`run`.

``--budget SECONDS`` bounds the run: each suite (each kernel op, the models suite and the
generation cases) gets a share of the time left when it starts (equal shares, but
``SUITE_WEIGHTS`` gives decode attention two and generation five), so time one suite leaves
unused passes on to the next; once a suite's share is spent no further case starts there (a
case already running finishes), and the steps left out are listed ("skipped" in the JSON). A
SIGTERM (``timeout``'s signal) or Ctrl-C stops the run where it is and still writes every output
file, with ``complete`` false.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import shlex
import signal
import sys
import time
from pathlib import Path

from fastformer._interpreter import kernels_defined
from fastformer.benchmarks.counts import MODES

logger = logging.getLogger(__name__)

# The kernel suites (fastformer.benchmarks.suites.OPS; a test keeps the two equal).
BENCH_OPS = (
    "layer_norm",
    "rms_norm",
    "attention",
    "rotary",
    "linear",
    "decode_attention",
    "kv_cache_append",
)
SUITE_CHOICES = ("kernels", "models", "all")  # suites.SUITES and "all"; a test keeps them equal
DEFAULT_SUITE = "all"
GENERATION = "generation"  # the generation cases' share of the budget (in the models suite)
# Budget weights (others weigh 1): decode attention has 25 cases on a GPU and the target
# row; generation builds models, captures CUDA graphs and compiles transformers' decode step.
SUITE_WEIGHTS = {"decode_attention": 2.0, GENERATION: 5.0}
DTYPE_NAMES = ("float32", "float16", "bfloat16")
EXIT_OK = 0
EXIT_FAILED = 1
CPU_BANNER = (
    "NOTE: no CUDA device. fastformer's kernels run in Triton's interpreter on the CPU: every\n"
    "time below is interpreter wall-clock time, NOT GPU performance. GB/s, % peak and peak\n"
    "memory are left out; run on a GPU for real numbers."
)


class _Stopped(Exception):
    """Raised by the SIGTERM handler to end the run early, keeping what it measured."""


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value} must be a positive integer")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{value} must be a positive number of seconds")
    return value


def add_parser(commands) -> None:
    """Add ``bench`` to ``commands`` (an argparse subparsers object)."""
    bench = commands.add_parser(
        "bench",
        help="check and time the kernels and whole models against eager PyTorch, SDPA and "
        "torch.compile",
        description="Check each provider against a float64 reference, then time it: the median "
        "and 20%/80% quantiles of triton.testing.do_bench on a GPU (each suite's model shapes, "
        "bf16); on the CPU, wall-clock times of the Triton interpreter on tiny shapes, which are "
        "not GPU performance.",
    )
    bench.add_argument(
        "--suite",
        choices=SUITE_CHOICES,
        help="kernels, models or all (default: all; with --op alone, kernels)",
    )
    bench.add_argument("--op", nargs="+", choices=BENCH_OPS, help="kernel ops (default: all)")
    bench.add_argument("--dtype", nargs="+", choices=DTYPE_NAMES, help="default: bfloat16")
    bench.add_argument(
        "--mode",
        nargs="+",
        choices=MODES,
        help="default: all three (models: fwd, fwd+bwd; generation and decode: with fwd)",
    )
    bench.add_argument(
        "--compile",
        action="store_true",
        help="also time torch.compile on the CPU (always on a GPU for kernels; for whole "
        "models only with this flag: compiling a model takes minutes)",
    )
    bench.add_argument("--rows", type=_positive_int, help="norm suites: rows of every shape")
    bench.add_argument(
        "--cols", nargs="+", type=_positive_int, help="norm suites: features of each shape"
    )
    bench.add_argument(
        "--budget",
        type=_positive_float,
        metavar="SECONDS",
        help="time budget of the run, shared among the suites (each kernel op, and models); "
        "cases that would start past a suite's share are skipped and listed",
    )
    bench.add_argument("--json", metavar="PATH", help="write the environment and rows as JSON")
    bench.add_argument("--csv", metavar="PATH", help="write the rows as CSV")
    bench.add_argument("--markdown", metavar="PATH", help="write a Markdown report")
    bench.add_argument("--plot", metavar="DIR", help="write one PNG per (op, dtype, mode) into DIR")
    bench.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    bench.add_argument("-v", "--verbose", action="store_true", help="log progress")
    bench.set_defaults(func=run)


def _shapes(args, default_shapes):
    if args.rows is None and args.cols is None:
        return None
    rows = args.rows or default_shapes[0][0]
    cols = args.cols or sorted({cols for _, cols in default_shapes})
    return [(rows, n_cols) for n_cols in cols]


def selected_suites(args: argparse.Namespace) -> tuple[str, ...]:
    """The suites to run: ``--suite``, else kernels when ``--op`` is given, else all."""
    from fastformer.benchmarks import suites

    suite = args.suite or ("kernels" if args.op else DEFAULT_SUITE)
    return suites.expand(suite)


class _Output:
    """Table lines to stdout and a progress bar (tqdm) to stderr, the bar only on a terminal
    and without --quiet; lines go through the bar's writer so they do not cut through it."""

    def __init__(self, total: int, enabled: bool):
        self.bar = None
        if enabled and total:
            try:
                from tqdm import tqdm
            except ImportError:  # the bar is a convenience: without tqdm there is none
                logger.info("tqdm is not installed: no progress bar")
            else:
                self.bar = tqdm(total=total, file=sys.stderr, unit="step", leave=False)

    def lines(self, lines) -> None:
        for line in lines:
            if self.bar is not None:
                self.bar.write(line, file=sys.stdout)
            else:
                print(line)
        sys.stdout.flush()

    def start(self, label: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(label, refresh=True)

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _share(run_deadline: float | None, suites_left: float, weight: float = 1.0) -> float | None:
    """The deadline of the next suite: its share of the time left until ``run_deadline``, its
    ``weight`` over ``suites_left``, the weights of the suites left (itself included) summed:
    an equal share when every suite weighs 1 (None: no budget)."""
    if run_deadline is None:
        return None
    now = time.monotonic()
    return now + max(run_deadline - now, 0.0) * weight / suites_left


def _deadlines(run_deadline: float | None, names: list[str]):
    """Each suite's deadline in turn (a generator: each share is cut when its suite starts, so
    time an earlier suite left unused passes on), weighted by ``SUITE_WEIGHTS``."""
    weights = [SUITE_WEIGHTS.get(name, 1.0) for name in names]
    for i, weight in enumerate(weights):
        yield _share(run_deadline, sum(weights[i:]), weight)


def _raise_stopped(signum, frame):
    raise _Stopped(f"signal {signum}")


def _on_sigterm(handler):
    """Install ``handler`` for SIGTERM; the previous one (None outside the main thread, where
    Python allows no handler: the run then simply ends on SIGTERM)."""
    if handler is None:
        return None
    try:
        return signal.signal(signal.SIGTERM, handler)
    except ValueError:
        return None


def run(args: argparse.Namespace, argv: list[str]) -> int:
    import torch

    if args.plot and importlib.util.find_spec("matplotlib") is None:
        print("error: --plot needs matplotlib (pip install matplotlib)", file=sys.stderr)
        return EXIT_FAILED

    if not torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"
        if kernels_defined(interpreted=False):
            print(
                "error: no CUDA device, and fastformer's kernels were already defined for a GPU "
                "in this process; run `fastformer bench` in a fresh process",
                file=sys.stderr,
            )
            return EXIT_FAILED

    from fastformer.benchmarks import (
        autotune,
        generation,
        model_runner,
        models,
        norm,
        report,
        runner,
        suites,
        targets,
    )
    from fastformer.benchmarks import device as devices

    device = devices.default_device()
    dtypes = [getattr(torch, name) for name in args.dtype] if args.dtype else [norm.DEFAULT_DTYPE]
    modes = args.mode or MODES
    chosen = selected_suites(args)
    notes: list[str] = []
    kernel_cases = {}
    if suites.KERNELS in chosen:
        norm_shapes = _shapes(args, norm.default_shapes(device))
        for op in args.op or BENCH_OPS:
            kernel_cases[op] = suites.cases(op, device, dtypes, norm_shapes)
    model_cases, generation_cases = [], []
    if suites.MODELS in chosen:
        try:
            model_cases, model_notes = models.model_suite(device, dtypes)
            notes += model_notes
            if "fwd" in modes:
                generation_cases, generation_notes = generation.generation_suite(device, dtypes)
                notes += generation_notes
        except models.SuiteUnavailable as error:
            notes.append(f"models suite not available yet: {error}")
    kernel_modes = [mode for mode in MODES if mode in modes]
    model_modes = [mode for mode in model_runner.MODEL_MODES if mode in modes]
    total = sum(
        len(runner.case_modes(case, kernel_modes))
        for cases in kernel_cases.values()
        for case in cases
    )
    total += len(model_cases) if model_modes else 0
    total += len(generation_cases)

    if device.type != "cuda":
        print(CPU_BANNER + "\n")
    started = time.perf_counter()
    env = devices.environment(device)
    out = _Output(total, enabled=not args.quiet and sys.stderr.isatty())
    out.lines(report.header_lines(env))
    rows, skipped = [], []

    def on_rows(new_rows):  # rows are kept as they come, so that a stopped run keeps them
        rows.extend(new_rows)
        out.lines(report.row_lines(new_rows))
        out.advance()

    def on_skip(label):
        skipped.append(label)
        out.advance()

    callbacks = dict(on_rows=on_rows, on_start=out.start, on_skip=on_skip)
    providers = runner.default_providers(device, include_compile=args.compile)
    complete = True
    run_deadline = time.monotonic() + args.budget if args.budget else None
    names = list(kernel_cases)
    names += [suites.MODELS] if model_cases and model_modes else []
    names += [GENERATION] if generation_cases else []
    suite_deadlines = _deadlines(run_deadline, names)
    previous_handler = _on_sigterm(_raise_stopped)
    try:
        for cases in kernel_cases.values():
            deadline = next(suite_deadlines)
            runner.run_cases(
                cases, kernel_modes, providers, device, env, deadline=deadline, **callbacks
            )
        if model_cases and model_modes:
            # Whole-model torch.compile only when asked: it takes minutes a model.
            model_providers = [
                p
                for p in model_runner.MODEL_PROVIDERS
                if p in providers and (p != runner.COMPILE or args.compile)
            ]
            deadline = next(suite_deadlines)
            model_runner.run_model_cases(
                model_cases,
                model_modes,
                model_providers,
                device,
                env,
                deadline=deadline,
                **callbacks,
            )
        if generation_cases:
            deadline = next(suite_deadlines)
            generation.run_generation_cases(
                generation_cases, device=device, deadline=deadline, **callbacks
            )
    except (_Stopped, KeyboardInterrupt) as error:
        complete = False
        reason = f"{type(error).__name__} {error}".strip()
        notes.append(f"run stopped before its end ({reason}); the rows measured so far are kept")
    finally:
        _on_sigterm(previous_handler)
        out.close()

    choices = autotune.choices()
    autotune.log_choices(choices)
    results = report.Results(env, rows, choices, notes, skipped, complete)
    n_failed = sum(not row.ok for row in rows)
    summary = f"{len(rows)} rows, {n_failed} failed, in {time.perf_counter() - started:.0f} s"
    if device.type != "cuda":
        summary += " (Triton interpreter on CPU: NOT GPU performance)"
    lines = ["", summary]
    lines += [f"note: {note}" for note in notes]
    if skipped:
        lines.append(f"not run, time budget spent ({len(skipped)}): " + "; ".join(skipped))
    lines += [f"target: {line}" for line in targets.target_lines(rows)]
    out.lines(lines)
    _write_outputs(args, argv, results)
    return EXIT_FAILED if n_failed or not complete else EXIT_OK


def _write_outputs(args: argparse.Namespace, argv: list[str], results) -> None:
    from fastformer.benchmarks import plot, report

    written = []
    if args.json:
        report.write_json(args.json, results)
        written.append(args.json)
    if args.csv:
        report.write_csv(args.csv, results.env, results.rows)
        written.append(args.csv)
    plots = plot.plot_rows(results.rows, args.plot) if args.plot else []
    if args.plot:
        written.append(f"{len(plots)} plots in {args.plot}")
    if args.markdown:
        path = Path(args.markdown)
        command = shlex.join(["fastformer", *argv])
        path.write_text(report.markdown(results, command, plots, relative_to=path.parent))
        written.append(args.markdown)
    for item in written:
        print(f"wrote {item}")
