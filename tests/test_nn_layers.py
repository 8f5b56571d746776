"""Encoder and decoder layers, embeddings and heads against eager compositions.

The layers (pre-LN and post-LN, LayerNorm and RMSNorm, plain and gated feed-forward, GQA,
rotary, a T5 relative position bias) are compared with ``module_reference.reference_layer``,
the textbook composition in torch ops, in float64 and in the tested dtype: the output, the
inputs' gradients and every parameter's gradient (the relative bias table's included, which
reaches it through the attention kernel's float-mask gradient).
"""

from __future__ import annotations

import math

import pytest
import torch
from module_reference import reference_layer, subset

import fastformer.nn as ffnn
from fastformer.nn.embeddings import relative_position_bucket

HIDDEN, HEADS, FFN, MEMORY_WIDTH = 32, 4, 48, 24
BATCH, SEQ, SEQ_MEMORY = 2, 6, 5
BUCKETS, MAX_DISTANCE = 8, 16

ENCODER_CASES = {
    "bert_post_ln": dict(layer=dict(activation="gelu"), padding=True),
    "gpt2_pre_ln_causal": dict(
        layer=dict(norm_first=True, activation="gelu_tanh", is_causal=True), padding=True
    ),
    "llama_pre_rms_swiglu_gqa_rotary": dict(
        layer=dict(
            norm="rms",
            norm_first=True,
            gated=True,
            activation="silu",
            n_kv_heads=2,
            is_causal=True,
            bias=False,
            fused_qkv=False,
        ),
        rotary=True,
    ),  # fmt: skip
    "t5_pre_rms_relu_relative": dict(
        layer=dict(norm="rms", norm_first=True, activation="relu", bias=False),
        relative=True,
        padding=True,
    ),
    "post_rms_geglu": dict(layer=dict(norm="rms", gated=True, activation="gelu_tanh", bias=False)),
}
DECODER_CASES = {
    "bart_post_ln": dict(layer=dict(activation="gelu"), padding=True),
    "t5_pre_rms_relative": dict(
        layer=dict(norm="rms", norm_first=True, activation="relu", bias=False, fused_qkv=False),
        relative=True,
        padding=True,
    ),
    "pre_ln_gqa_rotary": dict(
        layer=dict(norm_first=True, n_kv_heads=2, activation="silu", gated=True, bias=False),
        rotary=True,
    ),
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


class LayerWithBias(torch.nn.Module):
    """A layer, fed a relative position bias computed by its own table when it has one."""

    def __init__(self, layer, relative: ffnn.RelativePositionBias | None):
        super().__init__()
        self.layer, self.relative = layer, relative

    def forward(self, x, memory=None, padding=None, memory_padding=None):
        bias = None if self.relative is None else self.relative(x.shape[1], x.shape[1])
        if memory is None:
            return self.layer(x, padding, bias)
        return self.layer(x, memory, padding, memory_padding, bias)


def _randomize(module: torch.nn.Module) -> None:
    """Weights of unit-variance outputs; norm weights near 1 and biases near 0, not exactly."""
    with torch.no_grad():
        for name, param in module.named_parameters():
            if "norm" in name and name.endswith("weight"):
                param.copy_(1 + 0.1 * torch.randn_like(param))
            elif name.endswith("bias") and param.dim() == 1:
                param.copy_(0.1 * torch.randn_like(param))
            else:
                param.copy_(torch.randn_like(param) / math.sqrt(param.shape[-1]))


def _build(case: dict, decoder: bool, device, dtype) -> LayerWithBias:
    kwargs = dict(case["layer"])
    if dtype == torch.bfloat16 and kwargs.get("activation") == "relu":
        # relu's kink: a pre-activation within a bf16 rounding of 0 (seen: |z| = 0.002 with
        # rounding steps near 0.01) takes the other branch in one run, and that element's
        # row of c_fc's gradient differs by O(1); the kernel and eager round in different
        # places, so they flip different elements. relu is checked in fp32; bf16 takes gelu.
        kwargs["activation"] = "gelu"
    if case.get("rotary"):
        kwargs["rotary"] = ffnn.RotaryEmbedding(HIDDEN // HEADS, device=device)
    if decoder:
        layer = ffnn.TransformerDecoderLayer(
            HIDDEN, HEADS, FFN, memory_size=MEMORY_WIDTH, device=device, **kwargs
        )
    else:
        layer = ffnn.TransformerEncoderLayer(HIDDEN, HEADS, FFN, device=device, **kwargs)
    relative = None
    if case.get("relative"):
        relative = ffnn.RelativePositionBias(
            HEADS, BUCKETS, MAX_DISTANCE, bidirectional=not decoder, device=device
        )
    module = LayerWithBias(layer, relative)
    _randomize(module)
    return module.to(dtype)


def _hf_buckets(seqlen: int, bidirectional: bool, device) -> torch.Tensor:
    """Hugging Face T5's bucketing, an independent implementation of the same scheme."""
    t5 = pytest.importorskip("transformers.models.t5.modeling_t5")
    positions = torch.arange(seqlen, device=device)
    relative = positions[None, :] - positions[:, None]  # key - query
    return t5.T5Attention._relative_position_bucket(relative, bidirectional, BUCKETS, MAX_DISTANCE)


def _check_layer(check, module: LayerWithBias, case: dict, decoder: bool, device, dtype):
    x = torch.randn(BATCH, SEQ, HIDDEN, device=device, dtype=dtype, requires_grad=True)
    leaves, labels = [x], ["x"]
    memory = padding = memory_padding = None
    if decoder:
        memory = torch.randn(BATCH, SEQ_MEMORY, MEMORY_WIDTH, device=device, dtype=dtype)
        leaves.append(memory.requires_grad_())
        labels.append("memory")
    if case.get("padding"):
        padding = torch.ones(BATCH, SEQ, dtype=torch.bool, device=device)
        padding[1, -2:] = False
        memory_padding = torch.ones(BATCH, SEQ_MEMORY, dtype=torch.bool, device=device)
        memory_padding[0, -1:] = False
    names = [name for name, _ in module.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in module.parameters()]
    assert names, "a layer without parameters would test nothing"
    n_inputs = len(leaves)

    def run_ours(*args):
        weights = dict(zip(names, args[n_inputs:], strict=True))
        memory = args[1] if decoder else None
        return torch.func.functional_call(
            module, weights, (args[0], memory, padding, memory_padding if decoder else None)
        )

    def run_reference(*args):
        weights = dict(zip(names, args[n_inputs:], strict=True))
        bias = None
        if module.relative is not None:
            table = weights["relative.relative_attention_bias.weight"]  # (buckets, heads)
            buckets = _hf_buckets(SEQ, not decoder, device)
            bias = table[buckets].permute(2, 0, 1)[None]  # (1, H, S, S)
        return reference_layer(
            module.layer, subset(weights, "layer"), args[0], args[1] if decoder else None,
            padding, memory_padding, bias,
        )  # fmt: skip

    check(run_ours, run_reference, leaves + params, names=labels + names)


@pytest.mark.parametrize("dtype", list(DTYPES.values()), ids=list(DTYPES))
@pytest.mark.parametrize("name", list(ENCODER_CASES))
def test_encoder_layer(check, device, name, dtype):
    case = ENCODER_CASES[name]
    _check_layer(check, _build(case, False, device, dtype), case, False, device, dtype)


@pytest.mark.parametrize("dtype", list(DTYPES.values()), ids=list(DTYPES))
@pytest.mark.parametrize("name", list(DECODER_CASES))
def test_decoder_layer(check, device, name, dtype):
    case = DECODER_CASES[name]
    _check_layer(check, _build(case, True, device, dtype), case, True, device, dtype)


def test_relative_bias_table_learns(device):
    """The table's gradient is not zero and matches the eager one (fp32, loose check)."""
    case = ENCODER_CASES["t5_pre_rms_relu_relative"]
    module = _build(case, False, device, torch.float32)
    x = torch.randn(BATCH, SEQ, HIDDEN, device=device)
    module(x).square().sum().backward()
    grad = module.relative.relative_attention_bias.weight.grad
    assert grad is not None and grad.abs().sum() > 0
    used = _hf_buckets(SEQ, True, device).unique()
    assert torch.all(grad[used].abs().sum(-1) > 0)  # every bucket in use gets a gradient


@pytest.mark.parametrize("bidirectional", [True, False], ids=["bidirectional", "causal"])
def test_relative_buckets_match_t5(device, bidirectional):
    t5 = pytest.importorskip("transformers.models.t5.modeling_t5")
    distance = torch.arange(-300, 300, device=device)
    for n_buckets, max_distance in ((32, 128), (BUCKETS, MAX_DISTANCE), (10, 40)):
        ours = relative_position_bucket(distance, bidirectional, n_buckets, max_distance)
        theirs = t5.T5Attention._relative_position_bucket(
            distance, bidirectional, n_buckets, max_distance
        )
        assert torch.equal(ours, theirs), (n_buckets, max_distance)


def test_pre_ln_stream_equals_layer_by_layer(device):
    """Chaining forward_stream (adds fused into the next norm) equals forward after forward."""
    layers = [
        ffnn.TransformerEncoderLayer(HIDDEN, HEADS, FFN, norm_first=True, device=device)
        for _ in range(3)
    ]
    for layer in layers:
        _randomize(layer)
    x = torch.randn(BATCH, SEQ, HIDDEN, device=device)
    expected = x
    for layer in layers:
        expected = layer(expected)
    delta, residual = x, None
    for layer in layers:
        delta, residual = layer.forward_stream(delta, residual)
    torch.testing.assert_close(delta + residual, expected, rtol=1e-5, atol=1e-5)


def test_stream_through_the_module_call_equals_forward_stream(device):
    """``layer(x, residual=r, stream=True)`` is forward_stream through ``__call__`` (so hooks
    run), for the encoder and the decoder layer."""
    encoder = ffnn.TransformerEncoderLayer(HIDDEN, HEADS, FFN, norm_first=True, device=device)
    decoder = ffnn.TransformerDecoderLayer(HIDDEN, HEADS, FFN, norm_first=True, device=device)
    _randomize(encoder)
    _randomize(decoder)
    x, r = (torch.randn(BATCH, SEQ, HIDDEN, device=device) for _ in range(2))
    memory = torch.randn(BATCH, SEQ_MEMORY, HIDDEN, device=device)
    calls = []
    for layer, extra in ((encoder, ()), (decoder, (memory,))):
        calls.clear()
        layer.register_forward_pre_hook(lambda module, args: calls.append(module))
        got = layer(x, *extra, residual=r, stream=True)
        want = layer.forward_stream(x, r, *extra)
        assert len(calls) == 1
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
        with pytest.raises(ValueError, match="residual is taken only with stream=True"):
            layer(x, *extra, residual=r)


def test_stream_refused_for_post_ln(device):
    layer = ffnn.TransformerEncoderLayer(HIDDEN, HEADS, FFN, device=device)
    with pytest.raises(ValueError, match="forward_stream is for pre-LN layers"):
        layer.forward_stream(torch.randn(1, 2, HIDDEN, device=device), None)
    with pytest.raises(ValueError, match="forward_stream is for pre-LN layers"):
        layer(torch.randn(1, 2, HIDDEN, device=device), stream=True)


def test_layer_dropout_only_in_training(device):
    layer = ffnn.TransformerEncoderLayer(HIDDEN, HEADS, FFN, dropout=0.5, device=device)
    x = torch.randn(BATCH, SEQ, HIDDEN, device=device)
    layer.eval()
    assert torch.equal(layer(x), layer(x))
    layer.train()
    assert not torch.allclose(layer(x), layer(x))


def test_bad_layer_config():
    with pytest.raises(ValueError, match="norm='batch'"):
        ffnn.TransformerEncoderLayer(HIDDEN, HEADS, FFN, norm="batch")
    with pytest.raises(ValueError, match="activation='tanh'"):
        ffnn.TransformerEncoderLayer(HIDDEN, HEADS, FFN, activation="tanh")
    with pytest.raises(NotImplementedError, match="bias=True"):
        ffnn.TransformerEncoderLayer(HIDDEN, HEADS, FFN, gated=True, bias=True)
    with pytest.raises(ValueError, match="n_heads=4 is not divisible by n_kv_heads=3"):
        ffnn.TransformerDecoderLayer(HIDDEN, HEADS, FFN, n_kv_heads=3)
