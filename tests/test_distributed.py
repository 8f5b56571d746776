"""fastformer models train under DistributedDataParallel and FSDP2 exactly as in one process.

Two processes (gloo, initialised through a ``file://`` rendezvous) and a third, single-process
reference run ``tests/distributed_worker.py``, all on CPU tensors with Triton's interpreter.
Each builds the same tiny models from one seed: a BERT-style post-LN encoder classifier and a
LLaMA-style pre-RMSNorm decoder LM (rotary, GQA, SwiGLU, tied LM head). Each rank trains on its
half of a fixed batch, wrapped in ``DistributedDataParallel`` and then in FSDP2
(``fully_shard`` per layer and on the model, over ``init_device_mesh("cpu", (2,))``); the
reference trains on the whole batch. The losses are means over equal halves, so the ranks'
averaged gradients are the full batch's.

Every rank's initial weights must equal the reference's exactly; every parameter's gradient
after each backward (FSDP2's sharded gradients all-gathered) and every parameter after each
SGD step (momentum, so the second step uses the first's state) must match it within
``RTOL``/``ATOL``. The runs differ only in the order of summation (the batch split, the
all-reduce or reduce-scatter), compounded over two layers, a backward and up to two steps: the
largest difference seen is about 1.2e-7 (a parameter near 1.0 one float32 ulp apart after two
steps), while a gradient off by the world size misses by 4e-4 (encoder) to 0.3 (decoder).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

WORKER = Path(__file__).with_name("distributed_worker.py")
ROOT = WORKER.parent.parent
ROLES = ("0", "1", "reference")
# A whole run takes about 20 s on an idle 2-core machine; the margin is for a loaded one.
TIMEOUT_S = 600
# fp32 tolerance: about 8 float32 ulps at 1.0. The tolerance rule's single-op floor (2 ulps times
# the magnitude) is too tight for parameters after two steps, each of which may round one ulp
# apart.
RTOL, ATOL = 1e-5, 1e-6
# Lines of a failed worker's output shown in the test's failure.
TAIL_LINES = 60


def _tail(path: Path) -> str:
    lines = path.read_text(errors="replace").splitlines() if path.exists() else []
    return "\n".join(lines[-TAIL_LINES:])


def _run_workers(tmp: Path) -> dict[str, dict]:
    """Runs the two ranks and the reference at once; their saved records by role."""
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
    procs = {}
    for role in ROLES:
        log = open(tmp / f"{role}.log", "w")  # closed below, once the worker ended
        command = [sys.executable, str(WORKER), role, str(tmp / "rendezvous"), str(tmp / role)]
        procs[role] = (subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=log), log)
    failures = []
    try:
        for role, (proc, _) in procs.items():
            try:
                code = proc.wait(timeout=TIMEOUT_S)
            except subprocess.TimeoutExpired:
                code = f"timed out after {TIMEOUT_S} s"
            if code != 0:
                failures.append(f"--- worker {role}: exit {code}\n{_tail(tmp / f'{role}.log')}")
    finally:
        for proc, log in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()
    if failures:
        pytest.fail("distributed workers failed:\n" + "\n".join(failures), pytrace=False)
    return {role: torch.load(tmp / role) for role in ROLES}


def _compare(record: dict, reference: dict, what: str) -> None:
    """``record`` (one rank's run) against ``reference`` at every stage it has."""
    assert {"init", "grad0", "param0"} <= record.keys() <= reference.keys(), what
    assert record["init"].keys() == reference["init"].keys(), what
    for name, tensor in reference["init"].items():
        assert torch.equal(record["init"][name], tensor), f"{what}: initial {name} differs"
    for stage in sorted(record.keys() - {"init"}):
        expected, actual = reference[stage], record[stage]
        assert actual.keys() == expected.keys(), f"{what} {stage}"
        for name, tensor in expected.items():
            torch.testing.assert_close(
                actual[name], tensor, rtol=RTOL, atol=ATOL,
                msg=lambda m, n=name, s=stage: f"{what} {s} {n}: {m}",
            )  # fmt: skip
        if stage.startswith("grad"):  # the bound has teeth: a gradient half off fails it
            assert max(t.abs().max().item() for t in expected.values()) > 100 * ATOL, stage


# One test, not one per case: the workers run once even when pytest-xdist spreads tests.
def test_ddp_and_fsdp2_match_single_process(tmp_path):
    runs = _run_workers(tmp_path)
    failures = []
    for wrapper in ("ddp", "fsdp2"):
        for model in ("encoder", "decoder"):
            reference = runs["reference"][f"single/{model}"]
            for rank in ("0", "1"):
                what = f"{wrapper} {model} rank {rank}"
                try:
                    _compare(runs[rank][f"{wrapper}/{model}"], reference, what)
                except AssertionError as error:
                    failures.append(str(error) or what)
    assert not failures, "\n".join(failures)


def test_dtensor_inputs_are_refused_naming_the_argument(tmp_path):
    """Tensor parallel is not supported: a sharded weight reaching an op is refused before any
    launch, naming the argument (not a sharding-strategy error from inside PyTorch)."""
    code = f"""
import os
os.environ["TRITON_INTERPRET"] = "1"
import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import Shard, distribute_tensor
import fastformer

dist.init_process_group("gloo", init_method="file://{tmp_path / "rendezvous"}", rank=0,
                        world_size=1)
mesh = init_device_mesh("cpu", (1,))
weight = distribute_tensor(torch.randn(8, 16), mesh, [Shard(0)])
try:
    fastformer.linear(torch.randn(2, 16), weight)
except TypeError as error:
    print(error)
dist.destroy_process_group()
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "weight is a DTensor" in out.stdout and "tensor and sequence parallel" in out.stdout
