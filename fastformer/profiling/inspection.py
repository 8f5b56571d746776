"""``fastformer inspect``: compile every kernel config for GPU architectures without a GPU, and
report registers, spills, shared memory, occupancy and the instructions used.

Each :class:`~fastformer.profiling.catalogue.Variant` is compiled once per architecture
(:func:`fastformer.compile_report.compile_kernel`) in a pool of worker processes (compiling is
CPU-bound and each compile is independent); the figures become one record per variant and
architecture, a plain dict (the JSON output's rows), with its occupancy
(:mod:`fastformer.profiling.occupancy`) and the problems :func:`problems` finds: spills in a
kernel held to none, shared memory above the architecture's per-block limit, a matrix kernel
without tensor-core instructions, a large-tile one without wgmma on sm_90.

Workers are forked from this process, where the catalogue is built (the kernels must have been
defined without ``TRITON_INTERPRET``); Triton's on-disk cache makes a second run fast.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from fastformer.compile_rules import problems
from fastformer.profiling import occupancy as occ

logger = logging.getLogger(__name__)

KIB = occ.KIB
PERCENT = 100
# Families and what else ``--op`` accepts for them (the public op names).
OP_ALIASES = {
    "layer_norm": "norm",
    "rms_norm": "norm",
    "scaled_dot_product_attention": "attention",
    "varlen_attention": "attention",
    "gated_linear": "linear",
    "apply_rotary": "rotary",
    "decode_attention": "decode",
    "kv_cache_append_": "decode",
}

_variants: list = []  # the catalogue, set before the workers fork (they read it by index)


def select(ops: Sequence[str] | None):
    """The catalogue's variants for ``ops``: family names ("norm", "attention", "linear",
    "rotary"), public op names ("layer_norm", ...) or parts of a kernel's name ("dkdv");
    ValueError naming what exists when one matches nothing."""
    from fastformer.profiling import catalogue

    every = catalogue.variants()
    if not ops:
        return every
    chosen = []
    for name in ops:
        family = OP_ALIASES.get(name, name)
        matched = [v for v in every if v.op == family or name in v.kernel]
        if not matched:
            kernels = sorted({v.kernel for v in every})
            raise ValueError(
                f"--op {name!r} matches no kernel; expected one of {', '.join(catalogue.OPS)}, "
                f"{', '.join(OP_ALIASES)}, or part of a kernel name ({', '.join(kernels)})"
            )
        chosen += [v for v in matched if v not in chosen]
    return chosen


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")


def _dump(variant, arch: occ.ArchLimits, build, folder: str) -> None:
    stem = Path(folder, arch.name, variant.op, f"{variant.kernel}__{_slug(variant.config)}__"
                f"{_slug(variant.form)}")  # fmt: skip
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".ptx").write_text(build.ptx)
    stem.with_suffix(".sass").write_text(build.sass)


def _record(variant, arch: occ.ArchLimits, dump_dir: str | None) -> dict:
    """Compile one variant for one architecture; its record (``error`` set when it failed)."""
    from fastformer import compile_report

    record = {
        "op": variant.op,
        "kernel": variant.kernel,
        "config": variant.config,
        "form": variant.form,
        "arch": arch.name,
        "default": variant.default,
        "spill_free": variant.spill_free,
        "matmul": variant.matmul,
        "wgmma_expected": variant.wgmma and arch.has_wgmma,
        "smem_limit": arch.smem_per_block,
        "error": None,
    }
    try:
        build = compile_report.compile_kernel(
            variant.fn, variant.signature, variant.constexprs, arch=arch.capability,
            num_warps=variant.num_warps, num_stages=variant.num_stages, attrs=variant.attrs,
            keep_text=dump_dir is not None,
        )  # fmt: skip
    except Exception as error:  # a compiler failure is a finding to report, not a crash
        record["error"] = f"{type(error).__name__}: {str(error).strip()[:500]}"
        return record
    if dump_dir is not None:
        _dump(variant, arch, build, dump_dir)
    figures = build.as_dict()
    figures.pop("arch")  # the record names it ("sm_90")
    record.update(figures)
    usage = occ.occupancy(
        arch,
        regs_per_thread=build.regs,
        smem_per_block=build.shared_total,
        num_warps=build.num_warps,
    )
    record.update(
        blocks_per_sm=usage.blocks_per_sm,
        warps_per_sm=usage.warps_per_sm,
        occupancy=usage.fraction,
        limiter=usage.limiter,
    )
    return record


def _work(task: tuple[int, str, str | None]) -> dict:
    index, arch_name, dump_dir = task
    return _record(_variants[index], occ.arch_limits(arch_name), dump_dir)


def run(
    variants,
    archs: Sequence[occ.ArchLimits],
    *,
    jobs: int | None = None,
    dump_dir: str | None = None,
    on_record: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Compile every variant for every architecture it is meant for (architecture-major order);
    ``on_record`` sees each record as soon as it and the ones before it are done."""
    global _variants
    _variants = list(variants)
    tasks = [
        (i, arch.name, dump_dir)
        for arch in archs
        for i, variant in enumerate(_variants)
        if variant.compiles_for(arch.capability)
    ]
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(tasks)))
    records = []
    if jobs == 1 or "fork" not in multiprocessing.get_all_start_methods():
        results = map(_work, tasks)
        pool = None
    else:
        pool = ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("fork"))
        results = pool.map(_work, tasks)
    try:
        for record in results:
            logger.info("compiled %s %s [%s]", record["arch"], record["kernel"], record["config"])
            records.append(record)
            if on_record is not None:
                on_record(record)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    return records


# --- the table ------------------------------------------------------------------------------

# (title, width): text columns left-aligned, numbers right-aligned.
COLUMNS = (
    ("op", 9),
    ("kernel", 26),
    ("config (* default)", 30),
    ("form", 34),
    ("arch", 5),
    ("warps", 5),
    ("regs", 4),
    ("spill B", 7),
    ("smem KiB", 8),
    ("occ", 4),
    ("limited by", 13),
    ("tensor cores", 12),
    ("16B ld/st", 9),
    ("check", 5),
)
TEXT_COLUMNS = 4
NUMBER_COLUMNS = range(TEXT_COLUMNS, 10)
MISSING = "-"


def _line(cells: Sequence[str]) -> str:
    parts = [
        cell.rjust(width) if i in NUMBER_COLUMNS else cell.ljust(width)
        for i, (cell, (_, width)) in enumerate(zip(cells, COLUMNS, strict=True))
    ]
    return "  ".join(parts).rstrip()


def _tensor_cores(record: dict) -> str:
    if record["wgmma"]:
        return f"wgmma x{record['wgmma']}"
    if record["mma"]:
        return f"mma x{record['mma']}"
    return MISSING


def row_lines(record: dict) -> list[str]:
    """The record's table line, then one indented line per problem."""
    config = record["config"] + (" *" if record["default"] else "")
    head = [record["op"], record["kernel"], config, record["form"], record["arch"]]
    if record["error"]:
        cells = head + [MISSING] * (len(COLUMNS) - len(head) - 1) + ["FAIL"]
    else:
        spill = record["spill_stores"] + record["spill_loads"]
        smem = (record["shared"] + record["static_shared"]) / KIB
        cells = head + [
            str(record["num_warps"]),
            str(record["regs"]),
            str(spill),
            f"{smem:.1f}",
            f"{record['occupancy'] * PERCENT:.0f}%",
            record["limiter"],
            _tensor_cores(record),
            f"{record['load16']}/{record['store16']}",
            "FAIL" if problems(record) else "ok",
        ]
    return [_line(cells)] + [f"    {text}" for text in problems(record)]


def header_lines(archs: Sequence[occ.ArchLimits]) -> list[str]:
    import triton

    lines = [
        f"Compiled for {', '.join(a.name for a in archs)} by triton {triton.__version__} "
        "(no GPU needed; figures from ptxas, cuobjdump and the compiled kernel's metadata)",
        "Occupancy limits (CUDA C++ Programming Guide, technical specifications per compute "
        f"capability; allocation units from cuda_occupancy.h): {occ.REGS_PER_SM} registers/SM "
        f"in units of {occ.REG_ALLOC_UNIT} a warp, {occ.MAX_REGS_PER_THREAD}/thread, "
        f"{occ.SMEM_RESERVED} B reserved a block",
    ]
    for arch in archs:
        lines.append(
            f"  {arch.name}: {arch.max_threads_per_sm} threads/SM, {arch.max_blocks_per_sm} "
            f"blocks/SM, {arch.smem_per_sm // KIB} KiB shared/SM, {arch.smem_per_block // KIB} "
            f"KiB/block, wgmma {'yes' if arch.has_wgmma else 'no'}"
        )
    lines += [
        "regs: per thread; spill B: bytes spilled (stores + loads, ptxas); smem: dynamic + "
        "static shared memory a block; occ: resident warps / the SM's warp slots; tensor cores "
        "and 16-byte global loads/stores: static counts in the PTX",
        "",
    ]
    titles = _line([title for title, _ in COLUMNS])
    return [*lines, titles, "-" * len(titles)]
