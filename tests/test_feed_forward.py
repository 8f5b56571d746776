"""fastformer.nn.FeedForward / GatedFeedForward: Hugging Face weights load, outputs and every
gradient match the Hugging Face blocks."""

from __future__ import annotations

import pytest
import torch

import fastformer.nn

transformers = pytest.importorskip("transformers")
from transformers.models.bert.modeling_bert import BertIntermediate, BertOutput  # noqa: E402
from transformers.models.gpt2.modeling_gpt2 import GPT2MLP  # noqa: E402
from transformers.models.llama.modeling_llama import LlamaMLP  # noqa: E402

HIDDEN, INTERMEDIATE = 64, 176


def _randomize(module: torch.nn.Module) -> torch.nn.Module:
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn_like(param) / param.shape[-1] ** 0.5)
    return module


def _check_module(check, theirs, ours, x):
    """Outputs, dx and every parameter's gradient of ``ours`` against ``theirs``.

    ``theirs`` runs in float64 (the truth) and in x's dtype (eager's own error); the parameters
    are passed as leaves, so every gradient is compared.
    """
    names = [name for name, _ in ours.named_parameters()]

    def run_ours(x, *params):
        return torch.func.functional_call(ours, dict(zip(names, params, strict=True)), (x,))

    def run_theirs(x, *params):
        module = theirs.to(x.dtype)
        return torch.func.functional_call(module, dict(zip(names, params, strict=True)), (x,))

    leaves = [x] + [p.detach().clone().requires_grad_() for p in ours.parameters()]
    check(run_ours, run_theirs, leaves, names=["x", *names])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("act", ["silu", "gelu_pytorch_tanh"])
def test_gated_loads_llama_mlp_state_dict(check, device, dtype, act):
    config = transformers.LlamaConfig(
        hidden_size=HIDDEN, intermediate_size=INTERMEDIATE, hidden_act=act
    )
    theirs = _randomize(LlamaMLP(config)).to(device)
    ours = fastformer.nn.GatedFeedForward(HIDDEN, INTERMEDIATE, act).to(device)
    ours.load_state_dict(theirs.state_dict())
    assert list(ours.state_dict()) == list(theirs.state_dict())
    ours = ours.to(dtype)
    x = torch.randn(2, 7, HIDDEN, device=device).to(dtype).requires_grad_()
    _check_module(check, theirs, ours, x)


def test_bert_block(check, device):
    config = transformers.BertConfig(hidden_size=HIDDEN, intermediate_size=INTERMEDIATE)
    intermediate = _randomize(BertIntermediate(config)).to(device)
    output = _randomize(BertOutput(config)).to(device)
    ours = fastformer.nn.FeedForward.from_bert(intermediate, output)
    assert ours.c_fc.weight.shape == (INTERMEDIATE, HIDDEN)

    class Theirs(torch.nn.Module):  # BERT's dense -> GELU -> dense, without its residual norm
        def __init__(self):
            super().__init__()
            self.c_fc, self.c_proj = intermediate.dense, output.dense

        def forward(self, x):
            return self.c_proj(intermediate.intermediate_act_fn(self.c_fc(x)))

    x = torch.randn(3, 5, HIDDEN, device=device).requires_grad_()
    _check_module(check, Theirs().eval(), ours, x)


def test_gpt2_mlp(device):
    """GPT-2's Conv1D weights are (in, out): from_gpt2 transposes them; outputs match."""
    config = transformers.GPT2Config(n_embd=HIDDEN, resid_pdrop=0.0)
    theirs = _randomize(GPT2MLP(INTERMEDIATE, config)).to(device).eval()
    ours = fastformer.nn.FeedForward.from_gpt2(theirs, config.activation_function)
    assert ours.activation == "gelu_tanh"
    x = torch.randn(2, 9, HIDDEN, device=device, requires_grad=True)
    y = ours(x)
    x_ref = x.detach().clone().requires_grad_()
    y_ref = theirs(x_ref)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    dy = torch.randn_like(y)
    y.backward(dy)
    y_ref.backward(dy)
    torch.testing.assert_close(x.grad, x_ref.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.c_fc.weight.grad, theirs.c_fc.weight.grad.T)
    torch.testing.assert_close(ours.c_proj.bias.grad, theirs.c_proj.bias.grad)


def test_dropout_in_training_only(device):
    ff = fastformer.nn.FeedForward(32, 64, dropout=0.5).to(device)
    x = torch.randn(8, 32, device=device)
    ff.eval()
    assert torch.equal(ff(x), ff(x))
    ff.train()
    y = ff(x)
    assert (y == 0).any() and y.shape == x.shape


def test_module_errors():
    with pytest.raises(NotImplementedError, match="bias=True"):
        fastformer.nn.GatedFeedForward(8, 16, bias=True)
    with pytest.raises(ValueError, match="activation='tanh'"):
        fastformer.nn.FeedForward(8, 16, activation="tanh")


@pytest.mark.parametrize("hidden_act", ["relu", "silu", "gelu_new", "gelu"])
def test_from_hf_modules_take_the_modules_activation(hidden_act):
    """from_gpt2 / from_bert compute what the source module computes, without being told."""
    from transformers import BertConfig, GPT2Config
    from transformers.models.bert.modeling_bert import BertIntermediate, BertOutput
    from transformers.models.gpt2.modeling_gpt2 import GPT2MLP

    config = BertConfig(hidden_size=16, intermediate_size=32, hidden_act=hidden_act)
    intermediate, output = BertIntermediate(config).eval(), BertOutput(config).eval()
    ff = fastformer.nn.FeedForward.from_bert(intermediate, output)
    x = torch.randn(2, 3, 16)
    torch.testing.assert_close(ff(x), output.dense(intermediate(x)), atol=1e-5, rtol=1e-5)

    gpt2 = GPT2MLP(32, GPT2Config(n_embd=16, activation_function=hidden_act)).eval()
    ff = fastformer.nn.FeedForward.from_gpt2(gpt2).eval()
    torch.testing.assert_close(ff(x), gpt2(x), atol=1e-5, rtol=1e-5)
