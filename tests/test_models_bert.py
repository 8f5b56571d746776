"""A fastformer BERT loads Hugging Face BERT state_dicts and computes what BERT computes.

The reference is transformers' own BERT: in float64 (the truth) and in fp32 (eager's error),
with the tolerance rule of fastformer.testing applied to the outputs and, for the small model,
to every parameter's gradient (BERT's gradients mapped to fastformer's names by the same key
conversion as the weights). The full-size BERT-base check builds transformers.BertModel from
the default BertConfig (random weights: nothing can be downloaded), saves it with
save_pretrained, and loads the saved safetensors into ``Transformer(bert_base preset)``.
"""

from __future__ import annotations

import copy

import pytest
import torch

from fastformer import testing
from fastformer.models import Transformer, TransformerConfig, hf_bert

transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")

SMALL = dict(
    vocab_size=101, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
    intermediate_size=96, max_position_embeddings=32,
)  # fmt: skip
BATCH, SEQ = 2, 7


def _randomize(model: torch.nn.Module) -> torch.nn.Module:
    """Weights beyond BERT's init (std 0.02 makes every layer nearly the identity)."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "LayerNorm" in name and name.endswith("weight"):
                param.copy_(1 + 0.1 * torch.randn_like(param))
            elif name.endswith("bias"):
                param.copy_(0.1 * torch.randn_like(param))
            else:
                param.copy_(torch.randn_like(param) / param.shape[-1] ** 0.5)
    return model


def _inputs(vocab: int, batch: int = BATCH, seq: int = SEQ):
    ids = torch.randint(1, vocab, (batch, seq))
    mask = torch.ones(batch, seq, dtype=torch.long)
    if batch > 1:
        mask[1, seq - 3 :] = 0
    types = torch.randint(0, 2, (batch, seq))
    return ids, mask, types


def _assert_all(results):
    failed = [str(r) for r in results if not r.ok]
    assert not failed, "; ".join(failed)


def _compare_group(pairs):
    """The rule over named (actual, float64, eager) triples, with one magnitude for all."""
    scale = max(float(ref.abs().max()) for _, _, ref, _ in pairs)
    return [testing.compare(name, a, ref, eager, scale) for name, a, ref, eager in pairs]


def test_small_bert_matches_hf_outputs_and_gradients():
    config = transformers.BertConfig(**SMALL)
    theirs = _randomize(transformers.BertModel(config)).eval()
    ours = Transformer(hf_bert.config_from_hf_bert(config)).eval()
    result = ours.load_state_dict(theirs.state_dict())
    assert not result.missing_keys and not result.unexpected_keys
    theirs64 = copy.deepcopy(theirs).double()
    ids, mask, types = _inputs(config.vocab_size)
    grad_hidden = torch.randn(BATCH, SEQ, config.hidden_size, dtype=torch.float64)
    grad_pooled = torch.randn(BATCH, config.hidden_size, dtype=torch.float64)

    def run(model, is_ours):
        model.zero_grad()
        if is_ours:
            out = model(ids, mask, types)
            hidden, pooled = out.last_hidden_state, out.pooled
        else:
            out = model(input_ids=ids, attention_mask=mask, token_type_ids=types)
            hidden, pooled = out.last_hidden_state, out.pooler_output
        dtype = hidden.dtype
        loss = (hidden * grad_hidden.to(dtype)).sum() + (pooled * grad_pooled.to(dtype)).sum()
        loss.backward()
        grads = {name: p.grad for name, p in model.named_parameters()}
        if not is_ours:
            grads = hf_bert.bert_state_dict_from_hf(grads)
        return hidden.detach(), pooled.detach(), grads

    hidden, pooled, grads = run(ours, True)
    hidden64, pooled64, grads64 = run(theirs64, False)
    hidden32, pooled32, grads32 = run(theirs, False)
    _assert_all(
        _compare_group(
            [
                ("last_hidden_state", hidden, hidden64, hidden32),
                ("pooled", pooled, pooled64, pooled32),
            ]
        )
    )
    assert sorted(grads) == sorted(grads64)
    _assert_all(
        _compare_group([(f"grad {n}", grads[n], grads64[n], grads32[n]) for n in sorted(grads)])
    )


@pytest.mark.parametrize(
    "hf_class, task",
    [
        ("BertForSequenceClassification", "sequence_classification"),
        ("BertForTokenClassification", "token_classification"),
        ("BertForMaskedLM", "lm"),
    ],
    ids=["sequence", "token", "masked_lm"],
)
def test_task_variants_load_and_match(hf_class, task):
    config = transformers.BertConfig(**SMALL, num_labels=3)
    theirs = _randomize(getattr(transformers, hf_class)(config)).eval()
    ours = Transformer.from_hf_bert(theirs).eval()
    assert ours.task == task
    ids, mask, types = _inputs(config.vocab_size)
    logits = ours(ids, mask, types).logits
    theirs64 = copy.deepcopy(theirs).double()
    kwargs = dict(input_ids=ids, attention_mask=mask, token_type_ids=types)
    with torch.no_grad():
        expected, eager = theirs64(**kwargs).logits, theirs(**kwargs).logits
    _assert_all(_compare_group([("logits", logits.detach(), expected, eager)]))
    if task == "lm":
        assert ours.head.decoder.weight is ours.embeddings.word_embeddings.weight


def test_bert_base_preset_loads_saved_hf_bert(tmp_path):
    """Full size: BertModel(BertConfig()) saved, loaded into the bert_base preset with no
    missing or unexpected keys, same outputs on a 6-token input (the interpreter's cost: about
    25 s for this forward on the 2-core CPU machine)."""
    torch.manual_seed(0)
    theirs = transformers.BertModel(transformers.BertConfig()).eval()
    theirs.save_pretrained(tmp_path)
    state_dict = safetensors_torch.load_file(tmp_path / "model.safetensors")
    del theirs
    preset = TransformerConfig.from_preset("bert_base")
    assert hf_bert.config_from_hf_bert(transformers.BertConfig()) == preset
    ours = Transformer(preset).eval()
    result = ours.load_state_dict(state_dict)
    assert not result.missing_keys and not result.unexpected_keys
    reference = transformers.BertModel.from_pretrained(tmp_path).eval()
    ids, mask, types = _inputs(preset.vocab_size, batch=1, seq=6)
    with torch.no_grad():
        out = ours(ids, mask, types)
        eager = reference(input_ids=ids, attention_mask=mask, token_type_ids=types)
        expected = reference.double()(input_ids=ids, attention_mask=mask, token_type_ids=types)
    _assert_all(
        _compare_group(
            [
                ("last_hidden_state", out.last_hidden_state, expected.last_hidden_state,
                 eager.last_hidden_state),
                ("pooled", out.pooled, expected.pooler_output, eager.pooler_output),
            ]
        )
    )  # fmt: skip


def test_separate_qkv_loads_too():
    config = transformers.BertConfig(**SMALL)
    theirs = _randomize(transformers.BertModel(config)).eval()
    ours = Transformer(hf_bert.config_from_hf_bert(config, fused_qkv=False)).eval()
    result = ours.load_state_dict(theirs.state_dict())
    assert not result.missing_keys and not result.unexpected_keys
    ids, mask, types = _inputs(config.vocab_size)
    with torch.no_grad():
        expected = theirs(input_ids=ids, attention_mask=mask, token_type_ids=types)
        got = ours(ids, mask, types)
    torch.testing.assert_close(got.last_hidden_state, expected.last_hidden_state)


def test_conversion_reports_what_it_does_not_know():
    config = transformers.BertConfig(**SMALL)
    state = transformers.BertModel(config).state_dict()
    state["encoder.layer.0.attention.self.rotary.weight"] = torch.zeros(1)
    ours = Transformer(hf_bert.config_from_hf_bert(config))
    result = ours.load_state_dict(state, strict=False)
    assert result.unexpected_keys == ["encoder.layer.0.attention.self.rotary.weight"]
    assert not result.missing_keys
    del state["encoder.layer.1.attention.self.key.weight"]
    with pytest.raises(ValueError, match=r"encoder.layers.1 weight: .*\['key'\]"):
        ours.load_state_dict(state)


def test_unsupported_bert_configs():
    config = transformers.BertConfig(**SMALL)
    config.position_embedding_type = "relative_key"
    with pytest.raises(NotImplementedError, match="position_embedding_type='relative_key'"):
        hf_bert.config_from_hf_bert(config)
    with pytest.raises(NotImplementedError, match="BERT as a decoder"):
        hf_bert.config_from_hf_bert(transformers.BertConfig(**SMALL, is_decoder=True))
    with pytest.raises(ValueError, match="activation='quick_gelu'"):
        hf_bert.config_from_hf_bert(transformers.BertConfig(**SMALL, hidden_act="quick_gelu"))
