"""fastformer's command line (also ``python -m fastformer``): ``bench``, ``profile``, ``inspect``,
``generate``.

``bench`` (:mod:`fastformer.benchmarks.command`) checks and times fastformer's kernels and whole
models against eager PyTorch, SDPA and torch.compile and prints a table; it exits with 1 when
any provider fails its correctness check.

Without a CUDA device the kernels have to run in Triton's interpreter, which is chosen when the
kernels are defined, so ``TRITON_INTERPRET=1`` is set before anything imports them (``import
fastformer`` defines no kernel; each command imports what it runs inside itself).
"""

from __future__ import annotations

import argparse
import logging
import sys

from fastformer.benchmarks import command as bench_command
from fastformer.generation import cli as generation_command
from fastformer.profiling import commands as profiling_commands

logger = logging.getLogger(__name__)

BENCH_OPS = bench_command.BENCH_OPS
EXIT_OK = bench_command.EXIT_OK
EXIT_FAILED = bench_command.EXIT_FAILED


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastformer", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    bench_command.add_parser(commands)  # bench
    profiling_commands.add_parsers(commands)  # profile, inspect
    generation_command.add_parser(commands)  # generate
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line on ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    return args.func(args, argv)
