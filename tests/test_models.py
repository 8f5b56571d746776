"""fastformer.models: every architecture and preset builds, runs, and behaves as its kind must.

Small versions of each preset (the preset's structure, tiny sizes) are checked for what can
be checked without a reference model: padding does not leak into real tokens, causal models
do not see the future, every parameter gets a gradient, tied weights are one tensor, the
relative position tables learn. Hugging Face comparisons live in test_models_hf.py (decoders)
and test_models_bert.py; config validation is tested at the end.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from fastformer.models import PRESETS, Transformer, TransformerConfig

VOCAB, SEQ, BATCH = 97, 6, 2
SMALL = dict(vocab_size=VOCAB, hidden_size=32, n_heads=4, ffn_size=48, n_layers=2, max_positions=16)
SMALL_KV_HEADS = {"llama": 2}  # keep GQA in the small llama


def _config(preset: str, **overrides) -> TransformerConfig:
    fields = dict(SMALL, dropout=0.0, attention_dropout=0.0)
    if preset in SMALL_KV_HEADS:
        fields["n_kv_heads"] = SMALL_KV_HEADS[preset]
    return TransformerConfig.from_preset(preset, **{**fields, **overrides})


def _ids(batch=BATCH, seq=SEQ):
    return torch.randint(2, VOCAB, (batch, seq))


def _padding():
    mask = torch.ones(BATCH, SEQ, dtype=torch.long)
    mask[1, SEQ - 2 :] = 0
    return mask


def _run(model: Transformer, ids, mask=None, **kwargs):
    if model.config.is_encoder_decoder and "decoder_input_ids" not in kwargs:
        kwargs["decoder_input_ids"] = _ids(BATCH, SEQ - 1)
    return model(ids, mask, **kwargs)


@pytest.mark.parametrize("preset", list(PRESETS))
def test_preset_builds_and_trains(preset):
    """Forward with a padding mask, an LM loss, and a finite gradient for every parameter
    (nonzero except the padding row of the token table, which never receives one)."""
    config = _config(preset)
    model = Transformer(config, task="lm")
    ids = _ids()
    labels = _ids(BATCH, SEQ - 1) if config.is_encoder_decoder else ids
    out = model(ids, _padding(), labels=labels)
    expected_seq = SEQ - 1 if config.is_encoder_decoder else SEQ
    assert out.logits.shape == (BATCH, expected_seq, VOCAB)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name


@pytest.mark.parametrize("preset", ["bert_base", "t5_small", "bart_base"])
def test_padding_does_not_leak(preset):
    """Changing padded tokens leaves the outputs at real tokens unchanged (encoder side)."""
    model = Transformer(_config(preset)).eval()
    ids, mask = _ids(), _padding()
    other = ids.clone()
    other[1, SEQ - 2 :] = _ids(1, 2)
    decoder_ids = _ids(BATCH, SEQ - 1)
    first = _run(model, ids, mask, decoder_input_ids=decoder_ids)
    second = _run(model, other, mask, decoder_input_ids=decoder_ids)
    if model.config.is_encoder_decoder:
        torch.testing.assert_close(first.last_hidden_state, second.last_hidden_state)
        first, second = first.encoder_last_hidden_state, second.encoder_last_hidden_state
    else:
        first, second = first.last_hidden_state, second.last_hidden_state
    real = mask.bool()
    torch.testing.assert_close(first[real], second[real])
    assert not torch.allclose(first[~real], second[~real])  # the change did reach the model


@pytest.mark.parametrize("preset", ["gpt2_small", "llama", "t5_small", "bart_base"])
def test_causal_models_do_not_see_the_future(preset):
    model = Transformer(_config(preset), task="lm").eval()
    ids, source = _ids(), _ids()
    later = ids.clone()
    later[:, 3:] = _ids(BATCH, SEQ - 3)
    if model.config.is_encoder_decoder:
        first = model(source, decoder_input_ids=ids).logits
        second = model(source, decoder_input_ids=later).logits
    else:
        first, second = model(ids).logits, model(later).logits
    torch.testing.assert_close(first[:, :3], second[:, :3])
    assert not torch.allclose(first[:, 3:], second[:, 3:])


@pytest.mark.parametrize("preset", ["llama", "t5_small", "bert_base"])
def test_every_layer_runs_through_its_module_call(preset):
    """Forward hooks see every layer of every stack, pre-LN stacks (which pass (delta,
    residual) pairs between layers) included: FSDP2 gathers parameters through these hooks."""
    model = Transformer(_config(preset), task="lm")
    stacks = [getattr(model, name, None) for name in ("encoder", "decoder")]
    layers = [layer for stack in stacks if stack is not None for layer in stack.layers]
    seen = []
    for layer in layers:
        layer.register_forward_hook(lambda module, args, out: seen.append(module))
    _run(model, _ids(), _padding())
    assert seen == layers


def test_encoder_sees_both_ways():
    model = Transformer(_config("bert_base")).eval()
    ids = _ids()
    later = ids.clone()
    later[:, -1] = (later[:, -1] + 1) % VOCAB
    first, second = model(ids).last_hidden_state, model(later).last_hidden_state
    assert not torch.allclose(first[:, 0], second[:, 0])


def test_tied_head_is_the_embedding():
    model = Transformer(_config("gpt2_small"), task="lm")
    assert model.head.decoder.weight is model.embeddings.word_embeddings.weight
    state = model.state_dict()
    fresh = Transformer(_config("gpt2_small"), task="lm")
    assert not fresh.load_state_dict(state).missing_keys
    assert fresh.head.decoder.weight is fresh.embeddings.word_embeddings.weight
    torch.testing.assert_close(fresh.head.decoder.weight, state["head.decoder.weight"])
    untied = Transformer(_config("gpt2_small", tie_embeddings=False), task="lm")
    assert untied.head.decoder.weight is not untied.embeddings.word_embeddings.weight


def test_t5_relative_table_per_stack():
    """One table per stack (both learn: test_preset_builds_and_trains checks every gradient)."""
    model = Transformer(_config("t5_small"), task="lm")
    assert model.encoder.relative_bias.bidirectional
    assert not model.decoder.relative_bias.bidirectional
    assert all(layer.self_attn.rotary is None for layer in model.decoder.layers)


def test_rotary_is_shared_and_relative():
    """One RotaryEmbedding per stack; shifting every position leaves outputs unchanged (rotary
    sees only differences), while the model does depend on token order."""
    model = Transformer(_config("llama")).eval()
    rotaries = {id(layer.self_attn.rotary) for layer in model.decoder.layers}
    assert rotaries == {id(model.decoder.rotary)}
    ids = _ids()
    positions = torch.arange(SEQ)[None] + 5
    plain = model(ids).last_hidden_state
    shifted = model(ids, position_ids=positions).last_hidden_state
    torch.testing.assert_close(plain, shifted, rtol=1e-4, atol=1e-4)
    swapped = ids.clone()
    swapped[:, [0, 1]] = ids[:, [1, 0]]
    assert not torch.allclose(model(swapped).last_hidden_state[:, 2:], plain[:, 2:])


@pytest.mark.parametrize("position", ["sinusoidal", "none"])
def test_other_position_kinds(position):
    model = Transformer(_config("bert_base", position=position)).eval()
    assert model(_ids()).last_hidden_state.shape == (BATCH, SEQ, 32)


@pytest.mark.parametrize(
    "task, labels_shape, logits_shape",
    [
        ("sequence_classification", (BATCH,), (BATCH, 3)),
        ("token_classification", (BATCH, SEQ), (BATCH, SEQ, 3)),
    ],
    ids=["sequence", "token"],
)
@pytest.mark.parametrize("preset", ["bert_base", "gpt2_small"])
def test_classification_heads(preset, task, labels_shape, logits_shape):
    model = Transformer(_config(preset), task=task, num_labels=3)
    labels = torch.randint(0, 3, labels_shape)
    out = model(_ids(), _padding(), labels=labels)
    assert out.logits.shape == logits_shape
    assert torch.isfinite(out.loss)


def test_decoder_sequence_classification_pools_the_last_real_token():
    model = Transformer(_config("gpt2_small"), task="sequence_classification").eval()
    ids, mask = _ids(), _padding()
    out = model(ids, mask)
    last = out.last_hidden_state[1, SEQ - 3]  # row 1 keeps SEQ - 2 tokens
    expected = torch.nn.functional.linear(
        last, model.head.classifier.weight, model.head.classifier.bias
    )
    torch.testing.assert_close(out.logits[1], expected, rtol=1e-5, atol=1e-5)


def test_encoder_decoder_labels_shift_right():
    model = Transformer(_config("bart_base"), task="lm").eval()
    labels = _ids(BATCH, SEQ - 1)
    labels[0, -1] = -100
    shifted = model.shift_right(labels)
    assert torch.equal(shifted[:, 1:], labels[:, :-1].masked_fill(labels[:, :-1] == -100, 1))
    assert torch.all(shifted[:, 0] == 1)  # BART's pad_token_id starts the decoder
    source = _ids()
    torch.testing.assert_close(
        model(source, labels=labels).logits, model(source, decoder_input_ids=shifted).logits
    )


def test_learned_positions_limit():
    model = Transformer(_config("bert_base"))
    with pytest.raises(ValueError, match="sequence length 17 exceeds max_positions=16"):
        model(_ids(1, 17))


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(hidden_size=30), "hidden_size=30 is not divisible by n_heads=4"),
        (dict(n_kv_heads=3), "n_heads=4 is not divisible by n_kv_heads=3"),
        (dict(hidden_size=1040, n_heads=2), "head_dim=hidden_size/n_heads=1040/2=520"),
        (dict(n_layers=0), "n_layers=0; expected a positive int"),
        (dict(vocab_size=-1), "vocab_size=-1"),
        (dict(architecture="decoder-only"), "architecture='decoder-only'"),
        (dict(activation="tanh"), "activation='tanh'"),
        (dict(norm="batch"), "norm='batch'"),
        (dict(position="alibi"), "position='alibi'"),
        (dict(gated_ffn=True), "gated_ffn=True needs bias=False"),
        (dict(dropout=1.5), "dropout=1.5"),
        (dict(attention_dropout=-0.1), "attention_dropout=-0.1"),
        (dict(norm_eps=0.0), "norm_eps=0.0"),
        (dict(pad_token_id=VOCAB), f"pad_token_id={VOCAB}"),
        (dict(type_vocab_size=-2), "type_vocab_size=-2"),
        (dict(n_decoder_layers=2), "n_decoder_layers=2 is for architecture='encoder-decoder'"),
        (dict(position="rotary", hidden_size=36, n_heads=4, ffn_size=48),
         "position='rotary' needs an even head_dim"),
        (dict(position="relative", relative_buckets=2), "relative_buckets=2"),
        (dict(position="relative", relative_max_distance=4), "relative_max_distance=4"),
    ],
    ids=lambda value: value if isinstance(value, str) and len(value) < 30 else None,
)  # fmt: skip
def test_bad_config(fields, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        TransformerConfig(**{**SMALL, "n_heads": 4, **fields})


def test_bad_model_arguments():
    config = _config("bert_base")
    with pytest.raises(ValueError, match="preset='bert_tiny'"):
        TransformerConfig.from_preset("bert_tiny")
    with pytest.raises(ValueError, match="task='qa'"):
        Transformer(config, task="qa")
    with pytest.raises(ValueError, match="num_labels=0"):
        Transformer(config, task="sequence_classification", num_labels=0)
    with pytest.raises(NotImplementedError, match="encoder-decoder"):
        Transformer(_config("t5_small"), task="token_classification")
    with pytest.raises(TypeError, match="config must be a TransformerConfig"):
        Transformer(dataclasses.asdict(config))
    model = Transformer(config)
    with pytest.raises(ValueError, match=r"input_ids.shape=\(6,\)"):
        model(_ids()[0])
    with pytest.raises(ValueError, match="attention_mask.dtype=torch.float32"):
        model(_ids(), torch.ones(BATCH, SEQ))
    with pytest.raises(ValueError, match="needs decoder_input_ids or labels"):
        Transformer(_config("t5_small"))(_ids())


def test_replace_revalidates():
    config = _config("bert_base")
    with pytest.raises(ValueError, match="n_heads=4 is not divisible by n_kv_heads=3"):
        dataclasses.replace(config, n_kv_heads=3)


@pytest.mark.parametrize("preset", list(PRESETS))
def test_preset_runs_in_bf16(preset):
    """Built in bf16: the kernels take every activation in bf16 (rotary frequencies stay fp32),
    the loss is finite and every parameter gets a finite gradient. One layer per stack."""
    config = _config(preset, n_layers=1)
    model = Transformer(config, task="lm", dtype=torch.bfloat16)
    ids = _ids()
    labels = _ids(BATCH, SEQ - 1) if config.is_encoder_decoder else ids
    out = model(ids, _padding(), labels=labels)
    assert out.logits.dtype == torch.bfloat16
    out.loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
