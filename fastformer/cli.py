"""fastformer's command line: ``fastformer bench`` (also ``python -m fastformer bench``).

``bench`` checks and times fastformer's norm kernels against eager PyTorch (and torch.compile)
and prints a table; it exits with 1 when any provider fails its correctness check.

Without a CUDA device the kernels have to run in Triton's interpreter, which is chosen when the
kernels are defined, so ``TRITON_INTERPRET=1`` is set before anything imports them (``import
fastformer`` defines no kernel; the benchmark modules are imported inside the command).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

from fastformer.benchmarks.counts import MODES
from fastformer.profiling import commands as profiling_commands

logger = logging.getLogger(__name__)

# The suites (fastformer.benchmarks.suites.OPS; a test keeps the two equal).
BENCH_OPS = ("layer_norm", "rms_norm", "attention", "rotary", "linear")
DTYPE_NAMES = ("float32", "float16", "bfloat16")
EXIT_OK = 0
EXIT_FAILED = 1
CPU_BANNER = (
    "NOTE: no CUDA device. fastformer's kernels run in Triton's interpreter on the CPU: every\n"
    "time below is interpreter wall-clock time, NOT GPU performance. GB/s and % peak are left\n"
    "out; run on a GPU for real numbers."
)


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value} must be a positive integer")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastformer", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    bench = commands.add_parser(
        "bench",
        help="check and time the kernels against eager PyTorch, SDPA and torch.compile",
        description="Check each provider against a float64 reference, then time it: the median "
        "and 20%/80% quantiles of triton.testing.do_bench on a GPU (each suite's model shapes, "
        "bf16); on the CPU, wall-clock times of the Triton interpreter on tiny shapes, which are "
        "not GPU performance.",
    )
    bench.add_argument("--op", nargs="+", choices=BENCH_OPS, help="ops to run (default: all)")
    bench.add_argument("--dtype", nargs="+", choices=DTYPE_NAMES, help="default: bfloat16")
    bench.add_argument("--mode", nargs="+", choices=MODES, help="default: all three")
    bench.add_argument(
        "--compile",
        action="store_true",
        help="also time torch.compile on the CPU (always on a GPU; compiling takes tens of "
        "seconds a case on the CPU)",
    )
    bench.add_argument("--rows", type=_positive_int, help="norm suites: rows of every shape")
    bench.add_argument(
        "--cols", nargs="+", type=_positive_int, help="norm suites: features of each shape"
    )
    bench.add_argument("--json", metavar="PATH", help="write the environment and rows as JSON")
    bench.add_argument("--csv", metavar="PATH", help="write the rows as CSV")
    bench.add_argument("-v", "--verbose", action="store_true", help="log progress")
    bench.set_defaults(func=_bench)
    profiling_commands.add_parsers(commands)  # profile, inspect
    return parser


def _kernels_defined_for_gpu() -> bool:
    """Whether fastformer's kernels were already defined outside Triton's interpreter."""
    from triton.runtime import JITFunction

    return any(
        isinstance(value, JITFunction)
        for name, module in list(sys.modules.items())
        if name.startswith("fastformer.kernels.") and module is not None
        for value in vars(module).values()
    )


def _shapes(args, default_shapes):
    if args.rows is None and args.cols is None:
        return None
    rows = args.rows or default_shapes[0][0]
    cols = args.cols or sorted({cols for _, cols in default_shapes})
    return [(rows, n_cols) for n_cols in cols]


def _print_lines(lines) -> None:
    for line in lines:
        print(line)
    sys.stdout.flush()


def _bench(args: argparse.Namespace, argv: list[str]) -> int:
    import torch

    if not torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"
        if _kernels_defined_for_gpu():
            print(
                "error: no CUDA device, and fastformer's kernels were already defined for a GPU "
                "in this process; run `fastformer bench` in a fresh process",
                file=sys.stderr,
            )
            return EXIT_FAILED

    from fastformer.benchmarks import device as devices
    from fastformer.benchmarks import norm, report, runner, suites

    device = devices.default_device()
    dtypes = [getattr(torch, name) for name in args.dtype] if args.dtype else [norm.DEFAULT_DTYPE]
    norm_shapes = _shapes(args, norm.default_shapes(device))
    cases = [
        case
        for op in args.op or BENCH_OPS
        for case in suites.cases(op, device, dtypes, norm_shapes)
    ]
    providers = runner.default_providers(device, include_compile=args.compile)
    if device.type != "cuda":
        _print_lines([CPU_BANNER, ""])
    started = time.perf_counter()
    env = devices.environment(device)
    _print_lines(report.header_lines(env))
    rows = runner.run_cases(
        cases,
        modes=args.mode or MODES,
        providers=providers,
        device=device,
        env=env,
        on_rows=lambda rows: _print_lines(report.row_lines(rows)),
    )
    n_failed = sum(not row.ok for row in rows)
    summary = f"{len(rows)} rows, {n_failed} failed, in {time.perf_counter() - started:.0f} s"
    if device.type != "cuda":
        summary += " (Triton interpreter on CPU: NOT GPU performance)"
    _print_lines(["", summary])
    if args.json:
        report.write_json(args.json, env, rows)
        print(f"wrote {args.json}")
    if args.csv:
        report.write_csv(args.csv, env, rows)
        print(f"wrote {args.csv}")
    return EXIT_FAILED if n_failed else EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Run the command line on ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    return args.func(args, argv)
