"""The ``profile`` and ``inspect`` commands of fastformer's command line.

:func:`add_parsers` registers both on the command line's subparsers (``fastformer/cli.py``);
each command's function takes the parsed arguments and returns the exit status. Nothing heavy
is imported before a command runs: ``inspect`` needs the kernels defined for a GPU (without
``TRITON_INTERPRET``), ``profile`` on a machine without one needs them interpreted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_UNAVAILABLE = 2  # what was asked for cannot run here (a missing part, no compiler)
DEFAULT_ARCHS = ("sm_90",)
DEFAULT_WARMUP = 2
DEFAULT_STEPS = 3


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value} must be a positive integer")
    return value


def _print_lines(lines) -> None:
    for line in lines:
        print(line)
    sys.stdout.flush()


def add_parsers(commands) -> None:
    """Add ``profile`` and ``inspect`` to ``commands`` (an argparse subparsers object)."""
    _add_inspect(commands)
    _add_profile(commands)


# --- inspect --------------------------------------------------------------------------------


def _add_inspect(commands) -> None:
    from fastformer.profiling.occupancy import ARCHS

    parser = commands.add_parser(
        "inspect",
        help="compile every kernel config for a GPU architecture (no GPU needed) and report "
        "registers, spills, shared memory, occupancy, tensor-core and 16-byte instructions",
        description="Compile each kernel with its default and autotuning configs for the "
        "architectures named, and print one row per kernel, config and architecture. Exits 1 "
        "when a kernel fails to compile, spills, needs more shared memory than a block may "
        "have, or a matrix kernel misses its tensor-core instructions.",
    )
    parser.add_argument(
        "--arch", nargs="+", choices=list(ARCHS), default=list(DEFAULT_ARCHS), metavar="ARCH",
        help=f"GPU architectures ({', '.join(ARCHS)}; default: {' '.join(DEFAULT_ARCHS)})",
    )  # fmt: skip
    parser.add_argument(
        "--op", nargs="+", metavar="NAME",
        help="kernel families (norm, attention, linear, rotary), op names (layer_norm, ...) or "
        "part of a kernel name (default: all)",
    )  # fmt: skip
    parser.add_argument("--dump", metavar="DIR", help="write each kernel's PTX and SASS here")
    parser.add_argument("--json", metavar="PATH", help="write every record as JSON")
    parser.add_argument(
        "--jobs", type=_positive_int, help="compiles at once (default: the CPU count)"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log each compile")
    parser.set_defaults(func=run_inspect)


def _interpreted_kernels_loaded() -> bool:
    from triton.runtime.interpreter import InterpretedFunction

    return any(
        isinstance(value, InterpretedFunction)
        for name, module in list(sys.modules.items())
        if name.startswith("fastformer.kernels.") and module is not None
        for value in vars(module).values()
    )


def run_inspect(args: argparse.Namespace, argv=None) -> int:
    # The kernels must be defined for a GPU: drop the interpreter before they are imported.
    os.environ.pop("TRITON_INTERPRET", None)
    from fastformer import compile_report

    try:
        import triton.backends.nvidia  # noqa: F401
    except ImportError:
        print("error: this triton has no NVIDIA backend to compile with", file=sys.stderr)
        return EXIT_UNAVAILABLE
    if _interpreted_kernels_loaded():
        print(
            "error: fastformer's kernels were already defined under Triton's interpreter in "
            "this process; run `fastformer inspect` in a fresh process",
            file=sys.stderr,
        )
        return EXIT_UNAVAILABLE
    from fastformer.profiling import inspection
    from fastformer.profiling.occupancy import arch_limits

    try:
        variants = inspection.select(args.op)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FAILED
    archs = [arch_limits(name) for name in dict.fromkeys(args.arch)]
    if compile_report.unpinned_reason():
        _print_lines([f"NOTE: {compile_report.unpinned_reason()}; figures may differ", ""])
    _print_lines(inspection.header_lines(archs))
    records = inspection.run(
        variants,
        archs,
        jobs=args.jobs,
        dump_dir=args.dump,
        on_record=lambda record: _print_lines(inspection.row_lines(record)),
    )
    failed = [record for record in records if inspection.problems(record)]
    _print_lines(["", f"{len(records)} kernel configs compiled, {len(failed)} with problems"])
    if args.dump:
        print(f"wrote PTX and SASS under {args.dump}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"archs": [a.name for a in archs], "records": records}, handle, indent=1)
        print(f"wrote {args.json}")
    return EXIT_FAILED if failed else EXIT_OK


# --- profile --------------------------------------------------------------------------------


def _add_profile(commands) -> None:
    pass
