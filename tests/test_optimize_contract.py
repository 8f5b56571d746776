"""``fastformer.optimize``'s contract: in place, Parameters shared, state_dict unchanged,
idempotent, refusals that leave the model untouched, unknown families (generic parts only),
the report, and the cases the attention function hands to eager (weights requested, float64)
or refuses. The numerical comparison of every family is in ``test_optimize_families.py``.
"""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from test_optimize_families import FAMILIES, HIDDEN, VOCAB, build, inputs, redraw

import fastformer
from fastformer import testing
from fastformer.integrations import attention as ff_attention
from fastformer.integrations import norms as ff_norms
from fastformer.integrations.mlp import LinearActivation

transformers = pytest.importorskip("transformers")
T = transformers
NEW_TOKENS = 4  # generation tests


def _structure(model: torch.nn.Module) -> list[tuple[str, type]]:
    return [(path, type(module)) for path, module in model.named_modules()]


def _tiny(config_cls, model_cls, **sizes):
    return redraw(model_cls(config_cls(**sizes)))


def _opt():
    return _tiny(
        T.OPTConfig, T.OPTForCausalLM, vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=2,
        num_attention_heads=2, ffn_dim=2 * HIDDEN, word_embed_proj_dim=HIDDEN,
        max_position_embeddings=64, dropout=0.0, bos_token_id=0, eos_token_id=0, pad_token_id=1,
    )  # fmt: skip


def _mistral():
    return _tiny(
        T.MistralConfig, T.MistralForCausalLM, vocab_size=VOCAB, hidden_size=HIDDEN,
        num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
        intermediate_size=2 * HIDDEN, bos_token_id=0, eos_token_id=0,
    )  # fmt: skip


@pytest.mark.parametrize("name", FAMILIES)
def test_in_place_parameters_shared_state_dict_unchanged(name):
    model = build(name)
    before = {n: (p, p.data_ptr()) for n, p in model.named_parameters()}
    keys = list(model.state_dict())
    assert fastformer.optimize(model) is model
    after = dict(model.named_parameters())
    assert list(after) == list(before)
    for n, (param, ptr) in before.items():
        assert after[n] is param and param.data_ptr() == ptr, n
    assert list(model.state_dict()) == keys
    model.load_state_dict(build(name).state_dict())  # a fresh model's weights load unchanged
    assert isinstance(model.fastformer_report, fastformer.integrations.OptimizeReport)


@pytest.mark.parametrize("name", ["llama", "bert", "t5"])
def test_optimize_twice_is_idempotent(name):
    model = fastformer.optimize(build(name))
    structure, first = _structure(model), model.fastformer_report
    kwargs, real = inputs(name)
    with torch.no_grad():
        logits = model.eval()(**kwargs).logits
        fastformer.optimize(model)
        again = model(**kwargs).logits
    assert _structure(model) == structure
    second = model.fastformer_report
    assert second.eager == [] and len(second.replaced) == len(first.replaced)
    assert {r.replacement for r in second.replaced} == {"already fastformer"}
    assert second.attention.startswith("fastformer (already")
    torch.testing.assert_close(again[real], logits[real], rtol=0, atol=0)


def test_rejects_what_is_not_a_module_or_a_bool_switch():
    with pytest.raises(TypeError, match="torch.nn.Module"):
        fastformer.optimize("bert-base-uncased")
    model = build("bert")
    structure = _structure(model)
    with pytest.raises(TypeError, match="norms=1"):
        fastformer.optimize(model, norms=1)
    assert _structure(model) == structure


@pytest.mark.parametrize(
    "make, switches",
    [
        (lambda: torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()), {}),
        (lambda: build("bert"), dict(attention=False, norms=False, mlp=False, rotary=False)),
        (_mistral, {}),
    ],
    ids=["conv-net", "bert-all-switches-off", "mistral-unknown-family"],
)
def test_nothing_to_do_raises_and_leaves_the_model_untouched(make, switches):
    model = make()
    structure = _structure(model)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    attn = getattr(getattr(model, "config", None), "_attn_implementation", None)
    with pytest.raises(ValueError, match="found nothing to run on fastformer"):
        fastformer.optimize(model, **switches)
    assert _structure(model) == structure
    assert not hasattr(model, "fastformer_report")
    assert getattr(getattr(model, "config", None), "_attn_implementation", None) == attn
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key])


def test_unknown_family_gets_generic_parts_only_and_still_matches_eager():
    model = _opt()
    eager = copy.deepcopy(model)
    eager.set_attn_implementation("eager")
    reference = copy.deepcopy(eager).double()
    fastformer.optimize(model)
    report = model.fastformer_report
    assert "'opt' is not one of the families" in report.attention
    assert model.config._attn_implementation == "sdpa"
    assert set(report.counts()) == {"fastformer LayerNorm"}
    ids = torch.randint(3, VOCAB, (2, 8))
    with torch.no_grad():
        got, want, base = (m.eval()(input_ids=ids).logits for m in (model, reference, eager))
    result = testing.compare("logits", got, want, base)
    assert result.ok, str(result)


def test_unknown_norm_and_mlp_classes_are_named_in_the_refusal():
    with pytest.raises(ValueError) as error:
        fastformer.optimize(_mistral())
    message = str(error.value)
    assert "'mistral' is not one of the families" in message
    for name in ("MistralRMSNorm", "MistralMLP", "not in fastformer's table"):
        assert name in message


def test_generic_sequential_linear_activation_and_layer_norm():
    net = torch.nn.Sequential(
        torch.nn.Linear(16, 32), torch.nn.GELU(approximate="tanh"), torch.nn.Linear(32, 16),
        torch.nn.LayerNorm(16),
    )  # fmt: skip
    eager, reference = copy.deepcopy(net), copy.deepcopy(net).double()
    fastformer.optimize(net)
    assert [type(m) for m in net] == [
        LinearActivation, torch.nn.Identity, torch.nn.Linear, ff_norms.LayerNorm,
    ]  # fmt: skip
    assert net.fastformer_report.attention.startswith("eager: not a transformers PreTrainedModel")
    x = torch.randn(5, 16)
    grad = torch.randn(5, 16)
    outs = []
    for model, dtype in ((net, torch.float32), (reference, torch.float64), (eager, torch.float32)):
        out = model(x.to(dtype))
        out.backward(grad.to(dtype))
        outs.append([out.detach(), *(p.grad for p in model.parameters())])
    for i, (got, want, base) in enumerate(zip(*outs, strict=True)):
        result = testing.compare(f"tensor {i}", got, want, base)
        assert result.ok, str(result)


def test_hooked_module_is_left_eager_with_the_reason():
    model = build("bert")
    norm = model.bert.encoder.layer[0].output.LayerNorm
    norm.register_forward_hook(lambda *args: None)
    fastformer.optimize(model)
    assert model.bert.encoder.layer[0].output.LayerNorm is norm
    (entry,) = model.fastformer_report.eager
    assert entry.path == "bert.encoder.layer.0.output.LayerNorm" and "hooks" in entry.reason


def test_unfusable_activation_and_biased_gated_mlp_stay_eager():
    bert = _tiny(T.BertConfig, T.BertForMaskedLM, vocab_size=VOCAB, hidden_size=HIDDEN,
                 num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                 hidden_act="gelu_fast")  # fmt: skip
    eager = copy.deepcopy(bert)
    fastformer.optimize(bert)
    reasons = {e.path: e.reason for e in bert.fastformer_report.eager}
    assert "FastGELUActivation has no fused form" in reasons["bert.encoder.layer.0.intermediate"]
    ids = torch.randint(3, VOCAB, (2, 6))
    with torch.no_grad():
        torch.testing.assert_close(
            bert.eval()(input_ids=ids).logits, eager.eval()(input_ids=ids).logits
        )

    llama = _tiny(T.LlamaConfig, T.LlamaForCausalLM, vocab_size=VOCAB, hidden_size=HIDDEN,
                  num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                  mlp_bias=True)  # fmt: skip
    fastformer.optimize(llama)
    (entry,) = llama.fastformer_report.eager
    assert entry.path == "model.layers.0.mlp" and "biases" in entry.reason


@pytest.mark.parametrize("name", ["bert", "gpt2", "t5"])
def test_output_attentions_falls_back_to_eager_weights(name, monkeypatch):
    monkeypatch.setattr(ff_attention, "_warned", set())
    model = build(name).eval()
    eager = copy.deepcopy(model)
    eager.set_attn_implementation("eager")
    fastformer.optimize(model)
    kwargs, _ = inputs(name)
    with torch.no_grad(), pytest.warns(UserWarning, match="attention weights are requested"):
        got = model(**kwargs, output_attentions=True)
    with torch.no_grad():
        want = eager(**kwargs, output_attentions=True)
    key = "encoder_attentions" if FAMILIES[name].encoder_decoder else "attentions"
    assert len(got[key]) == len(want[key]) > 0
    for a, b in zip(got[key], want[key], strict=True):
        torch.testing.assert_close(a, b)


def test_float64_after_optimize_runs_eager_and_matches():
    model = fastformer.optimize(build("llama"))
    eager = copy.deepcopy(build("llama"))
    eager.load_state_dict(model.state_dict())
    eager.set_attn_implementation("eager")
    ids = torch.randint(3, VOCAB, (2, 8))
    with torch.no_grad(), pytest.warns(UserWarning, match="not fp16, bf16 or fp32"):
        ff_attention._warned.discard(ff_attention.ATTENTION_LIMITS[3])
        got = model.double().eval()(input_ids=ids).logits
    with torch.no_grad():
        want = eager.double().eval()(input_ids=ids).logits
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_attention_function_refuses_a_non_tensor_mask():
    q = torch.randn(1, 2, 4, 8)
    with pytest.raises(TypeError, match="attention_mask of type list"):
        ff_attention.fastformer_attention_forward(torch.nn.Module(), q, q, q, [[1, 1, 1, 1]])


@pytest.mark.parametrize("name", ["llama", "gpt2", "gpt_neox"])
def test_greedy_generation_with_kv_cache_matches_eager(name):
    model = build(name).eval()
    eager = copy.deepcopy(model)
    eager.set_attn_implementation("eager")
    fastformer.optimize(model)
    ids = torch.randint(3, VOCAB, (1, 5))
    options = dict(max_new_tokens=NEW_TOKENS, do_sample=False, use_cache=True, pad_token_id=0)
    got = model.generate(ids, **options)
    want = eager.generate(ids, **options)
    assert got.tolist() == want.tolist()


def test_rotary_attention_without_position_ids_runs_the_family_forward():
    model = fastformer.optimize(build("llama")).eval()
    attention = model.model.layers[0].self_attn
    eager = copy.deepcopy(attention)
    eager.__class__ = T.models.llama.modeling_llama.LlamaAttention
    hidden = torch.randn(2, 6, HIDDEN)
    positions = torch.arange(6)[None]
    cos_sin = model.model.rotary_emb(hidden, positions)
    with torch.no_grad():
        got, _ = attention(hidden, position_embeddings=cos_sin, attention_mask=None)
        want, _ = eager(hidden, position_embeddings=cos_sin, attention_mask=None)
        rotated, _ = attention(hidden, cos_sin, None, position_ids=positions)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(rotated, want)


def test_attention_dropout_in_training_is_random_and_differentiable():
    model = _tiny(T.BertConfig, T.BertModel, vocab_size=VOCAB, hidden_size=HIDDEN,
                  num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                  attention_probs_dropout_prob=0.5, hidden_dropout_prob=0.0)  # fmt: skip
    fastformer.optimize(model).train()
    ids = torch.randint(3, VOCAB, (2, 6))
    first = model(input_ids=ids).last_hidden_state
    second = model(input_ids=ids).last_hidden_state
    assert not torch.equal(first, second)
    first.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize(
    "x_dtype, w_dtype",
    [
        (torch.bfloat16, torch.bfloat16),
        (torch.float32, torch.float32),
        (torch.bfloat16, torch.float32),
        (torch.float16, torch.float32),
        (torch.float32, torch.bfloat16),
        (torch.float16, torch.bfloat16),
    ],
    ids=["bf16-bf16", "fp32-fp32", "bf16-w32", "fp16-w32", "fp32-wbf16", "fp16-wbf16"],
)
@pytest.mark.parametrize("family", ["t5", "llama"])
def test_rms_norm_dtype_rules_follow_the_family(family, x_dtype, w_dtype):
    if family == "t5":
        original = T.models.t5.modeling_t5.T5LayerNorm(HIDDEN, eps=1e-6)
        fast = ff_norms.T5RMSNorm.from_module(original)
    else:
        original = T.models.llama.modeling_llama.LlamaRMSNorm(HIDDEN, eps=1e-6)
        fast = ff_norms.LlamaRMSNorm.from_module(original)
    with torch.no_grad():
        original.weight.normal_(1.0, 0.3)
        original.weight.data = original.weight.data.to(w_dtype)
    assert fast.weight is original.weight
    x = (torch.randn(3, 5, HIDDEN) * 4 + 1).to(x_dtype)
    got, eager = fast(x), original(x)
    assert got.dtype == eager.dtype
    x64 = x.double()
    expected = (
        x64 * torch.rsqrt(x64.pow(2).mean(-1, keepdim=True) + 1e-6) * original.weight.double()
    )
    result = testing.compare("rms_norm", got, expected, eager)
    assert result.ok, str(result)


def test_report_is_logged_at_info(caplog):
    caplog.set_level(logging.INFO, logger="fastformer.integrations.optimize")
    fastformer.optimize(build("gpt2"))
    assert "attention: fastformer" in caplog.text and "Conv1DActivation(gelu_tanh)" in caplog.text


@pytest.mark.parametrize("name", ["t5", "t5-gated-gelu"])
def test_t5_bf16_with_fp32_wo_as_transformers_loads_it(name):
    """from_pretrained(dtype=bf16) keeps T5's ``wo`` in fp32 (_keep_in_fp32_modules); the
    family casts the hidden state to wo's dtype, and so must the optimized block."""
    base = build(name).to(torch.bfloat16)
    for module in base.modules():
        if hasattr(module, "wo"):
            module.wo.float()
    eager = copy.deepcopy(base)
    eager.set_attn_implementation("eager")
    reference = copy.deepcopy(eager).double()
    fast = fastformer.optimize(base).eval()
    kwargs, real = inputs(name)
    with torch.no_grad():
        got, want, ref = (m.eval()(**kwargs).logits for m in (fast, eager, reference))
    assert got.dtype == want.dtype
    result = testing.compare("logits", got[real], ref[real], want[real])
    assert result.ok, str(result)


def test_report_counts_no_module_a_fastformer_module_runs():
    """A gated MLP's gate and up projections run inside its kernel: the report must not list
    them among the eager Linears (only LLaMA's attention projections and head are eager)."""
    model = build("llama")
    fastformer.optimize(model)
    layers = model.config.num_hidden_layers
    attention_linears = 4 * layers  # q, k, v, o per layer
    assert model.fastformer_report.untouched.get("Linear") == attention_linears + 1  # + lm_head
