"""Adversarial cases for the module layer (fastformer.nn) and the builder (fastformer.models)
found by a reviewer: empty batches and sequences (A5), bad constructor arguments (a ValueError
naming the argument, before any parameter is allocated), inputs of the wrong shape (a
ValueError naming the input, not a crash deep inside a layer or a silent broadcast)."""

from __future__ import annotations

import math

import pytest
import torch
from module_reference import reference_attention

from fastformer.models import PRESETS, Transformer, TransformerConfig
from fastformer.nn import (
    MultiHeadAttention,
    SequenceClassificationHead,
    TokenClassificationHead,
    TransformerDecoderLayer,
    TransformerEmbeddings,
    TransformerEncoderLayer,
    pool,
)

HIDDEN, HEADS, FFN, MEMORY_WIDTH, VOCAB = 16, 2, 24, 8, 31
SMALL = dict(
    vocab_size=VOCAB, hidden_size=HIDDEN, n_heads=HEADS, ffn_size=FFN, n_layers=1,
    max_positions=16, dropout=0.0, attention_dropout=0.0,
)  # fmt: skip


def _config(preset: str) -> TransformerConfig:
    kv_heads = dict(n_kv_heads=1) if preset == "llama" else {}  # GQA 2:1 in the small llama
    return TransformerConfig.from_preset(preset, **SMALL, **kv_heads)


def _attention(device, **kwargs) -> MultiHeadAttention:
    module = MultiHeadAttention(HIDDEN, HEADS, device=device, **kwargs)
    with torch.no_grad():  # biases away from zero so that their gradients mean something
        for param in module.parameters():
            param.copy_(torch.randn_like(param) / math.sqrt(param.shape[-1]))
    return module


@pytest.mark.parametrize(
    ("batch", "seq_q", "seq_k", "cross"),
    [(0, 5, 5, False), (2, 0, 0, False), (0, 4, 3, True), (2, 4, 0, True)],
    ids=["batch0", "seq0", "cross-batch0", "cross-memory0"],
)
def test_attention_on_empty_batches_and_sequences(check, device, batch, seq_q, seq_k, cross):
    """A5: batch 0 or seq 0 gave "cannot reshape tensor of 0 elements" (a -1 in the output
    reshape). Cross-attention over an empty memory gives the output projection's bias, as
    eager does (attention over no key sums to 0)."""
    extra = dict(is_cross_attention=True, kv_hidden_size=MEMORY_WIDTH) if cross else {}
    module = _attention(device, **extra)
    x = torch.randn(batch, seq_q, HIDDEN, device=device, requires_grad=True)
    leaves, labels = [x], ["x"]
    if cross:
        leaves.append(torch.randn(batch, seq_k, MEMORY_WIDTH, device=device, requires_grad=True))
        labels.append("memory")
    names = [name for name, _ in module.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in module.parameters()]
    n_inputs = len(leaves)

    def run_ours(*args):
        weights = dict(zip(names, args[n_inputs:], strict=True))
        memory = args[1] if cross else None
        return torch.func.functional_call(module, weights, (args[0], memory))

    def run_reference(*args):
        weights = dict(zip(names, args[n_inputs:], strict=True))
        memory = args[1] if cross else None
        return reference_attention(module, weights, args[0], memory, None, None, None)

    check(run_ours, run_reference, leaves + params, names=labels + names)
    assert module(*leaves[:1], *(leaves[1:] or [None])).shape == (batch, seq_q, HIDDEN)


@pytest.mark.parametrize("preset", list(PRESETS))
@pytest.mark.parametrize("shape", [(0, 4), (2, 0)], ids=["batch0", "seq0"])
def test_models_on_empty_batches_and_sequences(preset, shape):
    """Every preset, forward and backward, on an empty batch and on empty sequences."""
    config = _config(preset)
    model = Transformer(config, task="lm")
    ids = torch.randint(2, VOCAB, shape)
    kwargs = {}
    if config.is_encoder_decoder:
        kwargs["decoder_input_ids"] = torch.randint(2, VOCAB, (shape[0], 3))
    out = model(ids, torch.ones(shape, dtype=torch.long), **kwargs)
    target_seq = 3 if config.is_encoder_decoder else shape[1]
    assert out.logits.shape == (shape[0], target_seq, VOCAB)
    out.logits.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


BAD_CONSTRUCTORS = {
    "attention_kv_hidden_0": (
        lambda: MultiHeadAttention(HIDDEN, HEADS, is_cross_attention=True, kv_hidden_size=0),
        "kv_hidden_size=0",
    ),
    "attention_kv_hidden_negative": (
        lambda: MultiHeadAttention(HIDDEN, HEADS, is_cross_attention=True, kv_hidden_size=-3),
        "kv_hidden_size=-3",
    ),
    "attention_kv_hidden_str": (
        lambda: MultiHeadAttention(HIDDEN, HEADS, is_cross_attention=True, kv_hidden_size="8"),
        "kv_hidden_size='8'",
    ),
    "attention_kv_hidden_self": (
        lambda: MultiHeadAttention(HIDDEN, HEADS, kv_hidden_size=MEMORY_WIDTH),
        "kv_hidden_size=8 is for cross-attention",
    ),
    "layer_ffn_0": (lambda: TransformerEncoderLayer(HIDDEN, HEADS, 0), "ffn_size=0"),
    "layer_ffn_negative": (lambda: TransformerEncoderLayer(HIDDEN, HEADS, -1), "ffn_size=-1"),
    "layer_ffn_str": (lambda: TransformerEncoderLayer(HIDDEN, HEADS, "24"), "ffn_size='24'"),
    "layer_eps_negative": (
        lambda: TransformerEncoderLayer(HIDDEN, HEADS, FFN, eps=-1.0),
        "eps=-1.0",
    ),
    "layer_eps_nan": (
        lambda: TransformerEncoderLayer(HIDDEN, HEADS, FFN, norm="rms", eps=float("nan")),
        "eps=nan",
    ),
    "decoder_memory_0": (
        lambda: TransformerDecoderLayer(HIDDEN, HEADS, FFN, memory_size=0),
        "memory_size=0",
    ),
    "decoder_memory_negative": (
        lambda: TransformerDecoderLayer(HIDDEN, HEADS, FFN, memory_size=-2),
        "memory_size=-2",
    ),
    "embeddings_vocab_0": (lambda: TransformerEmbeddings(0, HIDDEN), "vocab_size=0"),
    "embeddings_max_positions_0": (
        lambda: TransformerEmbeddings(VOCAB, HIDDEN, max_positions=0),
        "max_positions=0",
    ),
    "embeddings_max_positions_negative": (
        lambda: TransformerEmbeddings(VOCAB, HIDDEN, max_positions=-1),
        "max_positions=-1",
    ),
    "embeddings_type_vocab_negative": (
        lambda: TransformerEmbeddings(VOCAB, HIDDEN, type_vocab_size=-1),
        "type_vocab_size=-1",
    ),
    "embeddings_padding_idx": (
        lambda: TransformerEmbeddings(VOCAB, HIDDEN, padding_idx=VOCAB),
        f"padding_idx={VOCAB}",
    ),
    "sequence_head_labels_0": (
        lambda: SequenceClassificationHead(HIDDEN, 0),
        "num_labels=0",
    ),
    "token_head_labels_0": (lambda: TokenClassificationHead(HIDDEN, 0), "num_labels=0"),
}


@pytest.mark.parametrize("case", list(BAD_CONSTRUCTORS))
def test_bad_constructor_arguments_are_named(case):
    """Each built a module (a size 0 FFN, an empty vocabulary, a negative eps that failed only
    at the first forward) or failed in torch with "negative dimension" / an assertion."""
    make, message = BAD_CONSTRUCTORS[case]
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        make()


@pytest.mark.parametrize(
    "memory",
    [torch.randn(2, 7, HIDDEN), torch.randn(7, MEMORY_WIDTH), torch.randn(3, 7, MEMORY_WIDTH)],
    ids=["width", "2d", "batch"],
)
def test_cross_attention_names_a_bad_memory(memory):
    """The error named the projection's weight and "x", or "k.shape" with dims out of order."""
    module = MultiHeadAttention(HIDDEN, HEADS, is_cross_attention=True, kv_hidden_size=8)
    with pytest.raises(ValueError, match=r"key_value_states.shape=.*expected \(2, seq_k, 8\)"):
        module(torch.randn(2, 5, HIDDEN), memory)


def test_pool_refuses_what_it_would_misread():
    """A (seq, hidden) input was read as (batch, seq): "cls" returned a (seq,) vector of
    feature 0 of every token. Empty sequences gave IndexError for "cls" and "last"."""
    hidden = torch.randn(2, 5, HIDDEN)
    with pytest.raises(ValueError, match=r"hidden.shape=\(5, 16\)"):
        pool(hidden[0], "cls")
    for mode in ("cls", "last"):
        with pytest.raises(ValueError, match="seq is 0"):
            pool(hidden[:, :0], mode)
    assert torch.equal(pool(hidden[:, :0], "mean"), torch.zeros(2, HIDDEN))
    masked = pool(hidden[:, :0], "mean", torch.zeros(2, 0, dtype=torch.bool))
    assert torch.equal(masked, torch.zeros(2, HIDDEN))


def test_token_types_without_a_table_are_refused():
    """They were silently ignored (a model with type_vocab_size=0 gave the same output for
    every token_type_ids)."""
    embeddings = TransformerEmbeddings(VOCAB, HIDDEN, type_vocab_size=0)
    ids = torch.randint(0, VOCAB, (2, 5))
    with pytest.raises(ValueError, match="token_type_ids given but the embeddings have no"):
        embeddings(ids, token_type_ids=torch.ones_like(ids))


@pytest.mark.parametrize("preset", ["bert_base", "t5_small", "llama"])
def test_model_names_a_mask_of_the_wrong_shape(preset):
    """The error came from a layer ("attn_mask.shape=(2, 1, 1, 4)"), for T5 a RuntimeError
    from a broadcast; a (batch, 1) mask was broadcast silently over every token."""
    config = _config(preset)
    model = Transformer(config)
    ids = torch.randint(2, VOCAB, (2, 5))
    kwargs = {}
    if config.is_encoder_decoder:
        kwargs["decoder_input_ids"] = torch.randint(2, VOCAB, (2, 3))
    for mask in (torch.ones(2, 4, dtype=torch.long), torch.ones(2, 1, dtype=torch.bool)):
        with pytest.raises(ValueError, match=r"attention_mask.shape=.*expected \(batch, seq\)"):
            model(ids, mask, **kwargs)
    if config.is_encoder_decoder:
        with pytest.raises(ValueError, match=r"decoder_attention_mask.shape=\(2, 5\)"):
            model(ids, decoder_attention_mask=torch.ones(2, 5, dtype=torch.long), **kwargs)
