"""torch.compile(fullgraph=True) of fastformer layers and of optimized Hugging Face models: one
graph, zero graph breaks (``torch._dynamo.explain``), fastformer's kernel ops inside it, and the
compiled forward and backward equal to the same module run eagerly (CASES A13, I1).

The layers: a BERT-style post-LN encoder layer with key padding, a LLaMA-style pre-RMSNorm
causal layer (GQA, rotary, SwiGLU), a decoder layer with cross-attention over a padded memory;
the models: every family ``fastformer.optimize`` supports, from tiny random configs. Compiling
with ``backend="aot_eager"`` (Dynamo and AOTAutograd, the kernels run as they do eagerly) must
give the eager numbers; Inductor (which fuses the torch ops around the kernels and computes bf16
elementwise work in fp32) must match eager within the tolerance rule, in bf16.
"""

from __future__ import annotations

import copy

import pytest
import torch
from test_optimize_families import FAMILIES, VOCAB, build, inputs

import fastformer
from fastformer import nn as fnn
from fastformer import testing
from fastformer.functional import _library

HIDDEN, HEADS, FFN, BATCH, SEQ = 32, 4, 64, 2, 8


def _encoder():
    return fnn.TransformerEncoderLayer(HIDDEN, HEADS, FFN)


def _llama_layer():
    return fnn.TransformerEncoderLayer(
        HIDDEN, HEADS, FFN, n_kv_heads=2, activation="silu", gated=True, norm="rms",
        norm_first=True, bias=False, is_causal=True, rotary=fnn.RotaryEmbedding(HIDDEN // HEADS),
    )  # fmt: skip


def _decoder():
    return fnn.TransformerDecoderLayer(HIDDEN, HEADS, FFN)


def _padding(batch: int, seq: int) -> torch.Tensor:
    mask = torch.ones(batch, seq, dtype=torch.bool)
    mask[-1, seq - 3 :] = False  # True = a real token
    return mask


def _layer_args(name: str, dtype: torch.dtype) -> tuple:
    x = torch.randn(BATCH, SEQ, HIDDEN, dtype=dtype, requires_grad=True)
    if name == "encoder":
        return (x, _padding(BATCH, SEQ))
    if name == "llama":
        return (x,)
    memory = torch.randn(BATCH, SEQ - 2, HIDDEN, dtype=dtype, requires_grad=True)
    return (x, memory, None, _padding(BATCH, SEQ - 2))


LAYERS = {"encoder": _encoder, "llama": _llama_layer, "decoder": _decoder}


class _Logits(torch.nn.Module):
    """A Hugging Face model called with keyword inputs, returning its logits."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, *args):
        return self.model(**dict(zip(self.names, args, strict=True))).logits


def _hf_target(family: str):
    kwargs, _ = inputs(family)
    module = _Logits(fastformer.optimize(build(family)))
    module.names = tuple(kwargs)
    return module, tuple(kwargs.values())


def _assert_one_graph_with_kernels(module, args) -> None:
    torch._dynamo.reset()
    explained = torch._dynamo.explain(module)(*args)
    reasons = [str(reason.reason) for reason in explained.break_reasons]
    assert explained.graph_break_count == 0, reasons
    assert explained.graph_count == 1
    code = explained.graphs[0].code
    assert f"{_library.NAMESPACE}." in code, "the graph holds no fastformer kernel op"


def _run(module, args, seed: int):
    """Outputs, then the gradients of a random projection of them w.r.t. every parameter and
    every input that requires grad."""
    out = module(*args)
    torch.manual_seed(seed)
    loss = (out.float() * torch.randn(out.shape)).sum()
    leaves = [p for p in module.parameters() if p.requires_grad]
    leaves += [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
    return [out, *torch.autograd.grad(loss, leaves, allow_unused=True)]


def _assert_same(compiled_results, eager_results) -> None:
    assert len(compiled_results) == len(eager_results)
    for index, (got, want) in enumerate(zip(compiled_results, eager_results, strict=True)):
        assert (got is None) == (want is None), index
        if want is not None:
            torch.testing.assert_close(got, want, rtol=0, atol=0, msg=f"result {index}")


@pytest.mark.parametrize("name", list(LAYERS))
def test_layer_compiles_to_one_graph_and_matches_eager(name, seed):
    module = LAYERS[name]()
    args = _layer_args(name, torch.float32)
    _assert_one_graph_with_kernels(module, args)
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    _assert_same(_run(compiled, args, seed), _run(module, args, seed))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_optimized_hf_model_compiles_to_one_graph_and_matches_eager(family, seed):
    module, args = _hf_target(family)
    module.train()  # dropout is 0 in the tiny configs: training mode is deterministic
    _assert_one_graph_with_kernels(module, args)
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    _assert_same(_run(compiled, args, seed), _run(module, args, seed))


def _logits_and_grads(module, args, grad_out) -> dict:
    logits = module(*args)
    names, params = zip(*module.named_parameters(), strict=True)
    grads = torch.autograd.grad(logits, params, grad_out.to(logits.dtype), allow_unused=True)
    names = (name.removeprefix("_orig_mod.") for name in names)  # torch.compile's wrapper
    return {"logits": logits.detach(), **dict(zip(names, grads, strict=True))}


def test_inductor_bf16_model_matches_eager_within_the_rule():
    """Inductor fuses the torch ops between the kernels and computes bf16 elementwise work in
    fp32 before rounding (CASES I1): an optimized BERT compiled with it, in bf16, stays within
    the tolerance rule of the float64 eager model, as transformers' own bf16 eager run does."""
    kwargs, real_rows = inputs("bert")
    args = tuple(kwargs.values())
    base = build("bert").to(torch.bfloat16)
    eager, exact = copy.deepcopy(base), copy.deepcopy(base).double()
    optimized = fastformer.optimize(copy.deepcopy(base))
    grad_out = torch.randn(*real_rows.shape, VOCAB) * real_rows[..., None]
    results = {}
    for label, model in (("eager", eager), ("exact", exact), ("compiled", optimized)):
        if label != "compiled":
            model.set_attn_implementation("eager")
        module = _Logits(model)
        module.names = tuple(kwargs)
        if label == "compiled":
            module = torch.compile(module, fullgraph=True)
        results[label] = _logits_and_grads(module, args, grad_out)
    magnitude = max(testing._max_abs(value) for value in results["exact"].values())
    assert results["compiled"].keys() == results["exact"].keys()
    for name, expected in results["exact"].items():
        actual, eager_value = results["compiled"][name], results["eager"][name]
        assert (actual is None) == (expected is None), name
        if expected is None:
            continue
        if name == "logits":
            actual, expected, eager_value = (t[real_rows] for t in (actual, expected, eager_value))
        verdict = testing.compare(name, actual, expected, eager_value, scale=magnitude)
        assert verdict.ok, str(verdict)


@pytest.mark.gpu
def test_cuda_graph_capture_of_a_forward_replays_eager_results():
    """A forward captured in a CUDA graph: the replay with new inputs copied in gives what the
    eager forward gives for those inputs (no host sync, no allocation inside the ops)."""
    device = torch.device("cuda")
    module = _llama_layer().to(device, torch.bfloat16).eval()
    static_x = torch.randn(BATCH, SEQ, HIDDEN, device=device, dtype=torch.bfloat16)
    with torch.no_grad():
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):  # warm-up: autotuning and compilation happen outside the capture
                module(static_x)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = module(static_x)
        for _ in range(2):
            fresh = torch.randn_like(static_x)
            static_x.copy_(fresh)
            graph.replay()
            torch.cuda.synchronize()
            torch.testing.assert_close(static_out, module(fresh), rtol=0, atol=0)


def test_decode_step_compiles_whole_and_writes_the_caches_as_eager(seed):
    """rotate_queries + kv_cache_append_ (validate=True: its host checks run inside the op) +
    decode_attention under fullgraph=True: same output and same caches as eager."""
    inv_freq = 1.0 / 10000 ** (torch.arange(0, 8, 2).float() / 8)

    def step(q, k_cache, v_cache, k_new, v_new, lengths):
        new_lengths = fastformer.kv_cache_append_(k_cache, v_cache, k_new, v_new, lengths,
                                                  inv_freq=inv_freq)  # fmt: skip
        q = fastformer.rotate_queries(q, inv_freq, lengths)
        return fastformer.decode_attention(q, k_cache, v_cache, new_lengths), new_lengths

    lengths = torch.tensor([3, 7], dtype=torch.int32)
    args = (torch.randn(2, 4, 1, 8), torch.randn(2, 2, 16, 8), torch.randn(2, 2, 16, 8),
            torch.randn(2, 2, 1, 8), torch.randn(2, 2, 1, 8), lengths)  # fmt: skip
    eager_args = tuple(a.clone() for a in args)
    got = torch.compile(step, fullgraph=True, backend="aot_eager")(*args)
    want = step(*eager_args)
    _assert_same([*got, args[1], args[2]], [*want, eager_args[1], eager_args[2]])


def test_in_place_rotary_compiles_whole_with_gradients(seed):
    inv_freq = 1.0 / 10000 ** (torch.arange(0, 8, 2).float() / 8)

    class Block(torch.nn.Module):
        def forward(self, x):
            q, k = x * 2, x * 3  # non-leaf tensors: in place is allowed
            q, k = fastformer.apply_rotary(q, k, inv_freq, inplace=True)
            return q * k

    block = Block()
    x = torch.randn(1, 3, 2, 8, requires_grad=True)
    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    _assert_same(_run(compiled, (x,), seed), _run(block, (x,), seed))
