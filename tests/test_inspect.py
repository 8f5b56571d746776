"""``fastformer inspect``: every kernel is in the catalogue, the command prints one row per kernel,
config and architecture without a GPU, and its figures are the compiled kernel's own.

The norm family is checked fully from the run the norm compile test makes (cached for the
session: ``compile_report.inspect_run``); the figures are checked against the compiler on a
sample (the attention forward's causal bf16 tiles, with wgmma), compiled again here through
``triton.compile`` directly, where Triton's cache makes it cheap. Occupancy and the problem
rules are checked on hand-computed cases.
"""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
import subprocess
import sys

import pytest

from fastformer import compile_report
from fastformer.profiling import catalogue, occupancy
from fastformer.profiling.inspection import problems


def _skip_unless_pinned():
    if compile_report.unpinned_reason():
        pytest.skip(compile_report.unpinned_reason())


def test_every_kernel_is_in_the_catalogue():
    """Every ``*_kernel`` entry point in fastformer.kernels has configs to compile."""
    import fastformer.kernels

    defined = set()
    for module_info in pkgutil.iter_modules(fastformer.kernels.__path__):
        module = importlib.import_module(f"fastformer.kernels.{module_info.name}")
        defined |= {
            name
            for name, value in vars(module).items()
            if name.endswith("_kernel") and hasattr(value, "arg_names")
        }
    listed = {variant.kernel for variant in catalogue.variants()}
    assert defined and listed == defined


def test_prints_a_row_per_kernel_config_and_arch():
    _skip_unless_pinned()
    run = compile_report.inspect_run(("norm",))
    rows = [line for line in run.stdout.splitlines() if line.startswith("norm ")]
    assert len(rows) == len(run.records) == 2 * len(catalogue.variants(["norm"]))
    for row, record in zip(rows, run.records, strict=True):
        for field in ("kernel", "config", "arch"):
            assert record[field] in row, (field, row)
        assert row.split()[-1] in ("ok", "FAIL")
    # The header names each architecture's limits.
    assert "228 KiB shared/SM, 227 KiB/block" in run.stdout
    assert "164 KiB shared/SM, 163 KiB/block" in run.stdout


MATCH_SCRIPT = r"""
import json, re, subprocess, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from fastformer import compile_report
from fastformer.profiling import catalogue

folder, records_path = sys.argv[1], sys.argv[2]
records = json.load(open(records_path))["records"]
by_key = {v.key: v for v in catalogue.variants(["attention"]) if v.compiles_for(90)}
out = []
for record in records:
    variant = by_key[f"{record['kernel']} [{record['config']}] {record['form']}"]
    src = ASTSource(fn=variant.fn, signature=variant.signature, constexprs=variant.constexprs,
                    attrs=variant.attrs)
    options = {"num_warps": variant.num_warps, "num_stages": variant.num_stages}
    compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options)
    texts = (record["config"], record["form"])
    slugs = [re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_") for text in texts]
    stem = f"{folder}/sm_90/attention/{record['kernel']}__" + "__".join(slugs)
    ptx = open(stem + ".ptx").read()
    sass = open(stem + ".sass").read()
    ptxas = compile_report.ptxas_report(ptx, 90)
    out.append(dict(
        record=record,
        shared=compiled.metadata.shared,
        num_warps=compiled.metadata.num_warps,
        num_stages=compiled.metadata.num_stages,
        same_ptx=ptx == compiled.asm["ptx"],
        ptxas=ptxas,
        hgmma=sass.count("HGMMA."),
        ldg128=len(re.findall(r"\b(?:LDG|LDGSTS)(?:\.[A-Z0-9_]+)*\.128\b", sass)),
        stg128=len(re.findall(r"\bSTG(?:\.[A-Z0-9_]+)*\.128\b", sass)),
    ))
print(json.dumps(out))
"""


_SAMPLE_FORM = "causal bf16"


def test_figures_match_the_compiled_kernel(tmp_path):
    """Registers agree with ``ptxas -v``, shared memory, warps and stages with the compiled
    kernel's metadata, wgmma and 16-byte access counts with the dumped SASS, and the dumped PTX
    is the kernel's."""
    _skip_unless_pinned()
    dump, records = tmp_path / "dump", tmp_path / "records.json"
    env = compile_report._gpu_env()
    done = subprocess.run(
        [sys.executable, "-m", "fastformer", "inspect", "--arch", "sm_90", "--op",
         "_attn_fwd_kernel", "--dump", str(dump), "--json", str(records)],
        capture_output=True, text=True, env=env, timeout=compile_report.SCRIPT_TIMEOUT_S,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"wrote PTX and SASS under {dump}" in done.stdout
    # The sample: the plain causal bf16 form (the other forms' tiles need not use wgmma).
    sample = [r for r in json.loads(records.read_text())["records"] if r["form"] == _SAMPLE_FORM]
    records.write_text(json.dumps({"records": sample}))
    results = compile_report.run_report_script(MATCH_SCRIPT, tmp_path, (str(dump), str(records)))
    variants = catalogue.variants(["attention"])
    forward = [
        v
        for v in variants
        if v.kernel == "_attn_fwd_kernel" and v.compiles_for(90) and v.form == _SAMPLE_FORM
    ]
    assert len(results) == len(forward) > 1
    for result in results:
        record = result["record"]
        assert result["same_ptx"], record["config"]
        assert record["regs"] == result["ptxas"]["regs"], record
        assert record["spill_stores"] == result["ptxas"]["spill_stores"] == 0, record
        assert record["shared"] == result["shared"] > 0, record
        assert (record["num_warps"], record["num_stages"]) == (
            result["num_warps"],
            result["num_stages"],
        )
        # PTX counts (the record's) against the SASS ptxas made of them.
        assert record["wgmma"] == result["hgmma"] > 0, record
        assert (record["load16"], record["store16"]) == (result["ldg128"], result["stg128"])


@pytest.mark.parametrize(
    ("arch", "regs", "smem", "warps", "want"),
    [
        # 128 regs x 32 lanes = 4096 a warp: 16384 / 4096 = 4 warps per scheduler, 16 per SM:
        # two 8-warp blocks, 16 of 64 warp slots.
        ("sm_90", 128, 0, 8, (2, 16, 0.25, "registers")),
        # 100 KiB + 1 KiB reserved: one block in 164 KiB; 4 of 64 warps.
        ("sm_80", 32, 100 * 1024, 4, (1, 4, 4 / 64, "shared memory")),
        # 32 regs, 1 KiB: 16 warps a block, 64 warp slots: 4 blocks, all slots.
        ("sm_90", 32, 1024, 16, (4, 64, 1.0, "warps")),
        # 1 warp a block, tiny: the 32-block limit (sm_90), the 24-block one (sm_89).
        ("sm_90", 16, 0, 1, (32, 32, 0.5, "blocks")),
        ("sm_89", 16, 0, 1, (24, 24, 0.5, "blocks")),
        # 168 regs: 5376 a warp, 3 per scheduler (not 65536 // 5376 = 12 spread freely).
        ("sm_80", 168, 0, 4, (3, 12, 12 / 64, "registers")),
    ],
    ids=["regs-sm90", "smem-sm80", "warps-sm90", "blocks-sm90", "blocks-sm89", "regs-168"],
)
def test_occupancy_by_hand(arch, regs, smem, warps, want):
    got = occupancy.occupancy(
        occupancy.arch_limits(arch), regs_per_thread=regs, smem_per_block=smem, num_warps=warps
    )
    assert (got.blocks_per_sm, got.warps_per_sm, got.fraction, got.limiter) == want


def test_occupancy_of_a_block_that_cannot_launch():
    sm80 = occupancy.arch_limits("sm_80")
    over = occupancy.occupancy(sm80, regs_per_thread=32, smem_per_block=164 * 1024, num_warps=4)
    assert over.fraction == 0 and "163 KiB" in over.limiter
    # sm_90 takes what sm_80 refuses.
    sm90 = occupancy.arch_limits("sm_90a")
    assert occupancy.occupancy(sm90, regs_per_thread=32, smem_per_block=164 * 1024,
                               num_warps=4).blocks_per_sm == 1  # fmt: skip
    with pytest.raises(ValueError, match="num_warps=0"):
        occupancy.occupancy(sm90, regs_per_thread=32, smem_per_block=0, num_warps=0)


@pytest.mark.parametrize("name", ["sm_75", "gfx90a", "sm_100"])
def test_unknown_arch_is_refused(name):
    with pytest.raises(ValueError, match=f"arch={name!r} is not one of sm_80"):
        occupancy.arch_limits(name)


def _record(**changes):
    record = dict(
        kernel="k", config="c", form="f", arch="sm_90", error=None, spill_free=True,
        spill_stores=0, spill_loads=0, local=0, shared=1024, static_shared=0,
        smem_limit=227 * 1024, matmul=True, mma=0, wgmma=4, wgmma_expected=True,
    )  # fmt: skip
    record.update(changes)
    return record


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (dict(spill_stores=8, spill_loads=4), "spills 8 B stored, 4 B loaded"),
        (dict(local=16), "16 B local"),
        (dict(shared=227 * 1024, static_shared=1024), "shared memory 233472 B > 232448 B"),
        (dict(wgmma=0, wgmma_expected=False), "no tensor-core instruction"),
        (dict(wgmma=0, mma=8), "no wgmma"),
        (dict(error="PTXASError: boom"), "does not compile: PTXASError: boom"),
    ],
    ids=["spill", "local", "smem", "no-tensor-cores", "no-wgmma", "error"],
)
def test_each_problem_is_found(changes, message):
    assert problems(_record()) == []
    found = problems(_record(**changes))
    assert len(found) == 1 and message in found[0]


def test_spills_allowed_where_listed():
    assert problems(_record(spill_free=False, spill_stores=64)) == []


def test_failures_name_every_problem_record():
    bad = _record(spill_stores=8)
    found = compile_report.failures([_record(), bad])
    assert len(found) == 1 and "spills" in found[0]
    assert str(compile_report.record_key(bad)) in found[0]


def test_cli_refuses_interpreted_kernels(capsys):
    """In a process whose kernels run on the interpreter, inspect cannot compile them."""
    from fastformer import cli
    from fastformer.kernels import norm  # noqa: F401  (defined under the interpreter here)

    previous = os.environ.get("TRITON_INTERPRET")
    try:
        assert cli.main(["inspect", "--op", "norm"]) == 2
    finally:
        if previous is not None:
            os.environ["TRITON_INTERPRET"] = previous
    assert "fresh process" in capsys.readouterr().err


def test_cli_refuses_unknown_names(tmp_path):
    with pytest.raises(SystemExit):
        from fastformer import cli

        cli.main(["inspect", "--arch", "sm_75"])
    done = subprocess.run(
        [sys.executable, "-m", "fastformer", "inspect", "--op", "softmax"],
        capture_output=True, text=True, env=compile_report._gpu_env(), timeout=120,
    )  # fmt: skip
    assert done.returncode == 1
    assert "--op 'softmax' matches no kernel" in done.stderr
    assert json.dumps("norm")[1:-1] in done.stderr
