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

from fastformer._interpreter import kernels_defined

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


def run_inspect(args: argparse.Namespace, argv=None) -> int:
    # The kernels must be defined for a GPU: drop the interpreter before they are imported.
    os.environ.pop("TRITON_INTERPRET", None)
    from fastformer import compile_report

    try:
        import triton.backends.nvidia  # noqa: F401
    except ImportError:
        print("error: this triton has no NVIDIA backend to compile with", file=sys.stderr)
        return EXIT_UNAVAILABLE
    if kernels_defined(interpreted=True):
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


DEFAULT_TRACE = "fastformer_trace.json"
DTYPE_NAMES = ("float32", "float16", "bfloat16")
# (batch, seq) of model inputs on a GPU and on the CPU (the interpreter: tiny).
MODEL_INPUTS = {"cuda": (8, 512), "cpu": (2, 16)}


def _add_profile(commands) -> None:
    from fastformer.profiling.targets import HF_TINY_NAMES, OPS

    parser = commands.add_parser(
        "profile",
        help="torch.profiler over a model or one op: per-op and per-kernel times, GB/s and "
        "TFLOP/s, and a Chrome/Perfetto trace with the model's structure",
        description="Warm up, then profile a few steps with torch.profiler. Prints a table per "
        "fastformer op (named ranges) and per kernel (fastformer's Triton kernels told apart "
        "from the others), and writes a Chrome/Perfetto trace. On a machine without a GPU the "
        "kernels run in Triton's interpreter, and the times are interpreter times.",
    )
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--op", choices=OPS, help="one op, on random inputs of --shape")
    what.add_argument(
        "--hf", metavar="PATH_OR_NAME",
        help=f"a transformers model: a local folder, or one of {', '.join(HF_TINY_NAMES)} "
        "(tiny random configs; minilm: the packaged all-MiniLM-L6-v2), run through "
        "fastformer.optimize",
    )  # fmt: skip
    what.add_argument("--model", metavar="PRESET", help="a fastformer.models preset")
    parser.add_argument(
        "--shape", nargs="+", type=_positive_int, metavar="N",
        help="--op's shape: rows cols (norms), batch heads seq head_dim (attention), M N K "
        "(linear), batch seq heads head_dim (rotary); default: a model-sized one on a GPU, a "
        "tiny one on the CPU",
    )  # fmt: skip
    parser.add_argument("--tiny", action="store_true", help="--model: shrink the preset")
    parser.add_argument(
        "--set", nargs="+", metavar="FIELD=VALUE", default=(), help="--model: config fields"
    )
    parser.add_argument("--no-optimize", action="store_true", help="--hf: leave the model eager")
    parser.add_argument("--batch", type=_positive_int, help="model inputs: sequences a step")
    parser.add_argument("--seq", type=_positive_int, help="model inputs: tokens a sequence")
    parser.add_argument(
        "--dtype", choices=DTYPE_NAMES, help="default: bfloat16 on a GPU, float32 on the CPU"
    )
    parser.add_argument(
        "--warmup", type=int, default=DEFAULT_WARMUP, help=f"default {DEFAULT_WARMUP}"
    )
    parser.add_argument("--steps", type=_positive_int, default=DEFAULT_STEPS,
                        help=f"recorded steps (default {DEFAULT_STEPS})")  # fmt: skip
    parser.add_argument("--backward", action="store_true", help="each step: forward + backward")
    parser.add_argument("--trace", metavar="PATH", default=DEFAULT_TRACE,
                        help=f"Chrome/Perfetto trace file (default {DEFAULT_TRACE})")  # fmt: skip
    parser.add_argument("--json", metavar="PATH", help="write the tables as JSON")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress")
    parser.set_defaults(func=run_profile)


def _target(args, device, dtype):
    from fastformer.profiling import targets

    if args.op is not None:
        return targets.op_target(args.op, args.shape, device=device, dtype=dtype,
                                 backward=args.backward)  # fmt: skip
    batch, seq = MODEL_INPUTS["cuda" if device.type == "cuda" else "cpu"]
    sizes = dict(batch=args.batch or batch, seq=args.seq or seq)
    if args.hf is not None:
        return targets.hf_target(args.hf, device=device, dtype=dtype, backward=args.backward,
                                 optimize=not args.no_optimize, **sizes)  # fmt: skip
    return targets.model_target(args.model, device=device, dtype=dtype, tiny=args.tiny,
                                overrides=args.set, backward=args.backward, **sizes)  # fmt: skip


def run_profile(args: argparse.Namespace, argv=None) -> int:
    import torch

    if not torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"
        if kernels_defined(interpreted=False):
            print("error: no CUDA device, and fastformer's kernels were already defined for a "
                  "GPU in this process; run `fastformer profile` in a fresh process",
                  file=sys.stderr)  # fmt: skip
            return EXIT_UNAVAILABLE
    from fastformer.profiling import profile, table

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    default_dtype = "bfloat16" if device.type == "cuda" else "float32"
    dtype = getattr(torch, args.dtype or default_dtype)
    if args.warmup < 0:
        print(f"error: --warmup {args.warmup} must not be negative", file=sys.stderr)
        return EXIT_FAILED
    try:
        target = _target(args, device, dtype)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FAILED
    except (ImportError, NotImplementedError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    if device.type != "cuda":
        _print_lines([f"profiling {target.name} in Triton's interpreter (no CUDA device)..."])
        if args.model is not None and not args.tiny:
            _print_lines(["NOTE: a full-size preset takes minutes a step in the interpreter; "
                          "--tiny shrinks it"])  # fmt: skip
    result = profile.run(
        target, device=device, warmup=args.warmup, steps=args.steps, trace_path=args.trace
    )
    _print_lines(table.report_lines(result))
    if args.json:
        table.write_json(args.json, result)
        print(f"wrote {args.json}")
    return EXIT_OK
