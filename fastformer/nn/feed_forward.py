"""The transformer's feed-forward blocks on fastformer's fused GEMMs.

- ``FeedForward``: Linear -> activation -> Linear -> dropout, the BERT / GPT-2 block. The first
  GEMM applies the activation in its epilogue. Submodules are named as in Hugging Face's
  ``GPT2MLP`` (``c_fc``, ``c_proj``, ``dropout``) but are ``torch.nn.Linear`` modules: GPT-2's
  ``Conv1D`` stores its weight transposed, (in_features, out_features), so a GPT-2 state_dict
  does not load as it is; :meth:`FeedForward.from_gpt2` copies a ``GPT2MLP`` (transposing), and
  :meth:`FeedForward.from_bert` copies a BERT layer's ``BertIntermediate.dense`` and
  ``BertOutput.dense`` (BERT's dropout, residual add and LayerNorm stay in ``BertOutput``).
- ``GatedFeedForward``: ``down_proj(act(gate_proj(x)) * up_proj(x))``, the LLaMA block, with
  ``LlamaMLP``'s parameter names, so a ``LlamaMLP`` state_dict loads unchanged. The gate and up
  GEMMs run as one kernel that reads x once. No biases (LLaMA's default, ``mlp_bias=False``).

Activations take fastformer's names ("gelu", "gelu_tanh", "relu", "silu") or the Hugging Face
config names that denote the same functions ("gelu_new", "gelu_pytorch_tanh", "swish").
"""

from __future__ import annotations

import torch

from fastformer.functional import gated_linear, linear

# Hugging Face activation names (config.hidden_act / activation_function) -> fastformer's.
HF_ACTIVATIONS = {
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_tanh": "gelu_tanh",
    "relu": "relu",
    "silu": "silu",
    "swish": "silu",
}


# Hugging Face activation modules (class names, so that transformers need not be imported) ->
# fastformer's activation names.
HF_ACTIVATION_MODULES = {
    "GELUActivation": "gelu",
    "GELU": "gelu",
    "NewGELUActivation": "gelu_tanh",
    "GELUTanh": "gelu_tanh",
    "PytorchGELUTanh": "gelu_tanh",
    "ReLU": "relu",
    "SiLU": "silu",
    "SiLUActivation": "silu",
}


def _activation_of(module: torch.nn.Module) -> str:
    """fastformer's name for a Hugging Face activation module; an unknown one is refused."""
    name = type(module).__name__
    if name == "GELU" and getattr(module, "approximate", "none") == "tanh":
        return "gelu_tanh"
    if name not in HF_ACTIVATION_MODULES:
        raise ValueError(
            f"activation module {name} has no fused form; expected one of "
            f"{tuple(HF_ACTIVATION_MODULES)} (or pass activation= explicitly)"
        )
    return HF_ACTIVATION_MODULES[name]


def _resolve_activation(activation: str) -> str:
    if activation not in HF_ACTIVATIONS:
        raise ValueError(f"activation={activation!r} is not one of {tuple(HF_ACTIVATIONS)}")
    return HF_ACTIVATIONS[activation]


class FeedForward(torch.nn.Module):
    """``dropout(c_proj(act(c_fc(x))))``: the BERT / GPT-2 feed-forward block.

    Args:
        hidden_size: the model width (in_features of c_fc, out_features of c_proj).
        intermediate_size: the inner width (typically 4 * hidden_size).
        activation: "gelu" (BERT), "gelu_tanh" (GPT-2's "gelu_new"), "relu" or "silu".
        dropout: probability of the dropout after c_proj.
        bias: whether both Linears have biases.
    """

    def __init__(
        self,
        hidden_size: int,
        intermediate_size: int,
        activation: str = "gelu",
        dropout: float = 0.0,
        bias: bool = True,
        device=None,
        dtype=None,
    ):
        super().__init__()
        factory = dict(device=device, dtype=dtype)
        self.activation = _resolve_activation(activation)
        self.c_fc = torch.nn.Linear(hidden_size, intermediate_size, bias=bias, **factory)
        self.c_proj = torch.nn.Linear(intermediate_size, hidden_size, bias=bias, **factory)
        self.dropout = torch.nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = linear(x, self.c_fc.weight, self.c_fc.bias, self.activation)
        return self.dropout(linear(h, self.c_proj.weight, self.c_proj.bias))

    @classmethod
    def from_gpt2(cls, mlp: torch.nn.Module, activation: str | None = None) -> FeedForward:
        """A copy of Hugging Face's ``GPT2MLP`` (Conv1D weights transposed into Linear layout).

        ``activation`` (a Hugging Face name) defaults to the one ``mlp.act`` computes.
        """
        hidden_size, intermediate_size = mlp.c_fc.weight.shape  # Conv1D: (in, out)
        weight = mlp.c_fc.weight
        ff = cls(
            hidden_size,
            intermediate_size,
            activation if activation is not None else _activation_of(mlp.act),
            mlp.dropout.p,
            device=weight.device,
            dtype=weight.dtype,
        )
        with torch.no_grad():
            ff.c_fc.weight.copy_(mlp.c_fc.weight.T)
            ff.c_fc.bias.copy_(mlp.c_fc.bias)
            ff.c_proj.weight.copy_(mlp.c_proj.weight.T)
            ff.c_proj.bias.copy_(mlp.c_proj.bias)
        return ff

    @classmethod
    def from_bert(
        cls,
        intermediate: torch.nn.Module,
        output: torch.nn.Module,
        activation: str | None = None,
    ) -> FeedForward:
        """A copy of a BERT layer's two dense Linears (``BertIntermediate``, ``BertOutput``).

        ``activation`` defaults to the one ``intermediate.intermediate_act_fn`` computes. The
        dropout is left at 0: ``BertOutput`` applies its own before its residual LayerNorm.
        """
        weight = intermediate.dense.weight
        intermediate_size, hidden_size = weight.shape
        if activation is None:
            activation = _activation_of(intermediate.intermediate_act_fn)
        ff = cls(
            hidden_size, intermediate_size, activation, device=weight.device, dtype=weight.dtype
        )
        ff.c_fc.load_state_dict(intermediate.dense.state_dict())
        ff.c_proj.load_state_dict(output.dense.state_dict())
        return ff


class GatedFeedForward(torch.nn.Module):
    """``down_proj(act(gate_proj(x)) * up_proj(x))``: the LLaMA (SwiGLU) / GeGLU block.

    Args:
        hidden_size: the model width.
        intermediate_size: the inner width.
        activation: "silu" (SwiGLU, LLaMA's "silu"), "gelu" or "gelu_tanh" (GeGLU), "relu".
        bias: must be False (the fused gate/up kernel has no biases).
    """

    def __init__(
        self,
        hidden_size: int,
        intermediate_size: int,
        activation: str = "silu",
        bias: bool = False,
        device=None,
        dtype=None,
    ):
        super().__init__()
        if bias:
            raise NotImplementedError(
                "GatedFeedForward(bias=True) is not supported; the fused gate/up kernel has no "
                "biases (LLaMA's mlp_bias=False)"
            )
        factory = dict(device=device, dtype=dtype, bias=False)
        self.activation = _resolve_activation(activation)
        self.gate_proj = torch.nn.Linear(hidden_size, intermediate_size, **factory)
        self.up_proj = torch.nn.Linear(hidden_size, intermediate_size, **factory)
        self.down_proj = torch.nn.Linear(intermediate_size, hidden_size, **factory)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = gated_linear(x, self.gate_proj.weight, self.up_proj.weight, self.activation)
        return linear(h, self.down_proj.weight)
