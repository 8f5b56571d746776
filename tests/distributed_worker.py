"""One process of the distributed training test (``tests/test_distributed.py``).

Run as ``python tests/distributed_worker.py ROLE INIT_FILE OUT_FILE`` where ROLE is a rank
(``0``, ``1``) of a two-process gloo group initialised through ``file://INIT_FILE``, or
``reference`` for the single-process run over the full batch. Every role builds the same tiny
models from the same seed, trains each for a few SGD steps on a fixed batch (a rank on its
half of it) and saves, per model and per wrapper ("ddp", "fsdp2"; "single" for the
reference), the initial weights, every parameter's gradient after each backward and every
parameter after each step, as full (unsharded) tensors, with ``torch.save`` to OUT_FILE.

The process always runs on CPU tensors with Triton's interpreter, switched on here before
fastformer defines its kernels: a CPU machine needs it, and a one-GPU machine cannot host two
NCCL ranks, so the test runs the same everywhere. Dropout is 0, so a run is deterministic.
"""

from __future__ import annotations

import datetime
import os
import sys

os.environ["TRITON_INTERPRET"] = "1"  # before fastformer's kernels are defined

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from fastformer._interpreter import kernels_defined  # noqa: E402
from fastformer.kernels import _runtime  # noqa: E402
from fastformer.models import Transformer, TransformerConfig  # noqa: E402

WORLD_SIZE = 2
SEED, DATA_SEED = 1234, 4321
BATCH, SEQ, VOCAB = 2, 8, 64  # one sequence per rank: the interpreter's time grows with it
LEARNING_RATE, MOMENTUM = 0.5, 0.9
# FSDP2 takes two steps: the second forward gathers the shards the first step updated (and
# momentum carries state over). DDP keeps whole parameters on every rank: one step shows it.
FSDP2_STEPS, DDP_STEPS = 2, 1
# Seconds a collective may wait for the other rank: a crashed peer ends the run instead of
# hanging it until the test's own timeout.
COLLECTIVE_TIMEOUT_S = 120
TINY = dict(vocab_size=VOCAB, hidden_size=32, n_layers=2, n_heads=4, ffn_size=64, max_positions=16)


def model_configs() -> dict[str, tuple[TransformerConfig, str]]:
    """name -> (config, task): a BERT-style post-LN encoder classifier and a LLaMA-style pre-RMSNorm
    decoder LM (rotary, GQA, SwiGLU, tied LM head), both tiny and without dropout."""
    encoder = TransformerConfig(architecture="encoder", dropout=0.0, attention_dropout=0.0, **TINY)
    decoder = TransformerConfig.from_preset("llama", n_kv_heads=2, **TINY)
    return {"encoder": (encoder, "sequence_classification"), "decoder": (decoder, "lm")}


def make_batch(name: str, rows: slice) -> dict[str, torch.Tensor]:
    """The fixed full batch of model ``name`` (the same in every process), cut to ``rows``.
    Every loss is a mean over equal-sized halves, so the mean of the ranks' losses (what DDP's
    and FSDP2's gradient averaging computes) is the full batch's loss."""
    generator = torch.Generator().manual_seed(DATA_SEED)
    ids = torch.randint(1, VOCAB, (BATCH, SEQ), generator=generator)  # (B, S)
    if name == "encoder":
        mask = torch.ones(BATCH, SEQ, dtype=torch.long)
        mask[1, -3:] = 0  # rank 1's sequence is padded
        labels = torch.randint(0, 2, (BATCH,), generator=generator)
        batch = dict(input_ids=ids, attention_mask=mask, labels=labels)
    else:
        batch = dict(input_ids=ids, labels=ids)
    return {key: value[rows] for key, value in batch.items()}


def full(tensor: torch.Tensor) -> torch.Tensor:
    """A plain CPU copy; FSDP2's sharded DTensors are all-gathered (a collective: every rank
    must call it in the same order)."""
    if hasattr(tensor, "full_tensor"):
        tensor = tensor.full_tensor()
    return tensor.detach().clone()


def train(model, module, batch, steps: int) -> dict[str, dict[str, torch.Tensor]]:
    """``steps`` SGD steps of ``model`` (maybe wrapped) on ``batch``; ``module`` names the
    parameters. Returns the initial weights, the gradients and the parameters after each step."""
    optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE, momentum=MOMENTUM)
    record = {"init": {name: full(p) for name, p in module.named_parameters()}}
    for step in range(steps):
        optimizer.zero_grad()
        model(**batch).loss.backward()
        record[f"grad{step}"] = {name: full(p.grad) for name, p in module.named_parameters()}
        optimizer.step()
        record[f"param{step}"] = {name: full(p) for name, p in module.named_parameters()}
    return record


def build(config: TransformerConfig, task: str) -> Transformer:
    torch.manual_seed(SEED)  # the same initial weights in every process
    return Transformer(config, task=task).train()


def run_reference() -> dict:
    results = {}
    for name, (config, task) in model_configs().items():
        model = build(config, task)
        batch = make_batch(name, slice(None))
        results[f"single/{name}"] = train(model, model, batch, max(FSDP2_STEPS, DDP_STEPS))
    return results


def run_rank(rank: int, init_file: str) -> dict:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD_SIZE,
        timeout=datetime.timedelta(seconds=COLLECTIVE_TIMEOUT_S),
    )  # fmt: skip
    half = BATCH // WORLD_SIZE
    rows = slice(rank * half, (rank + 1) * half)
    results = {}
    try:
        for name, (config, task) in model_configs().items():
            model = build(config, task)
            ddp = DistributedDataParallel(model)
            results[f"ddp/{name}"] = train(ddp, model, make_batch(name, rows), DDP_STEPS)

        mesh = init_device_mesh("cpu", (WORLD_SIZE,))
        for name, (config, task) in model_configs().items():
            model = build(config, task)
            stack = model.encoder if name == "encoder" else model.decoder
            for layer in stack.layers:
                fully_shard(layer, mesh=mesh)  # pre-LN stacks too: no method to register
            fully_shard(model, mesh=mesh)
            batch = make_batch(name, rows)
            results[f"fsdp2/{name}"] = train(model, model, batch, FSDP2_STEPS)
    finally:
        dist.destroy_process_group()
    return results


def main(argv: list[str]) -> None:
    role, init_file, out_file = argv
    torch.set_num_threads(1)  # three processes share the CPU cores
    _runtime.set_poison_outputs(True)  # as the test suite: unwritten outputs are NaN
    results = run_reference() if role == "reference" else run_rank(int(role), init_file)
    assert kernels_defined(interpreted=True), "fastformer's kernels were not interpreted"
    torch.save(results, out_file)


if __name__ == "__main__":
    main(sys.argv[1:])
