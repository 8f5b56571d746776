"""Feed-forward pieces that take over the Parameters of a Hugging Face model's MLP.

Design: the smallest replacement that keeps each family's own forward. Where a family computes
``act(linear(x))`` (BERT's intermediate, GPT-2's ``c_fc``, GPT-NeoX, T5's ``wi``, BART's
``fc1``, DistilBERT's ``lin1``, ALBERT's ``ffn``), the Linear becomes a :class:`LinearActivation`
holding the same Parameters, whose GEMM applies the activation in its epilogue, and the
activation module becomes ``torch.nn.Identity``; the family's forward (dropout placement,
T5's cast to ``wo``'s dtype, DistilBERT's chunking, residuals) runs unchanged around it. The
second Linear becomes a :class:`LinearActivation` without activation. Gated blocks (LLaMA's
MLP, T5's gated-GELU) are replaced whole by :class:`GatedMLP`, which keeps the original
child modules under their names (state_dict keys unchanged) and computes gate and up in one
kernel.

GPT-2 stores its weights as ``Conv1D`` (in_features, out_features); :class:`Conv1DActivation`
hands the kernel the transposed view, so nothing is copied and the gradient lands in the
original Parameter.

Activations fused: erf GELU, tanh GELU (GPT-2's "gelu_new", "gelu_pytorch_tanh"), ReLU, SiLU,
recognised by their exact classes in torch and transformers (``activation_name``); any other
(FastGELU's rounded constant, QuickGELU, ...) leaves the block eager.

fp16, bf16 and fp32 with the weight in x's dtype run on the kernels; other dtypes, mixed dtypes
and calls under ``torch.autocast`` run eager's formula (what the original module computes).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from fastformer.functional import gated_linear, linear
from fastformer.integrations.norms import kernel_can_take

TRANSFORMERS_ACTIVATIONS = "transformers.activations"
# (defining module, class name) -> fastformer's activation name. Exact classes only: a
# subclass may compute something else.
_ACTIVATION_CLASSES = {
    ("torch.nn.modules.activation", "ReLU"): "relu",
    ("torch.nn.modules.activation", "SiLU"): "silu",
    (TRANSFORMERS_ACTIVATIONS, "SiLUActivation"): "silu",
    (TRANSFORMERS_ACTIVATIONS, "NewGELUActivation"): "gelu_tanh",
    (TRANSFORMERS_ACTIVATIONS, "GELUTanh"): "gelu_tanh",
    (TRANSFORMERS_ACTIVATIONS, "GELUActivation"): "gelu",
}
# Eager forms of the fused activations (the fallback path).
EAGER_ACTIVATIONS = {
    None: lambda x: x,
    "gelu": F.gelu,
    "gelu_tanh": functools.partial(F.gelu, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
}


def activation_name(module: torch.nn.Module) -> str | None:
    """fastformer's name for the function an activation module computes, or None."""
    cls = type(module)
    if (cls.__module__, cls.__name__) == ("torch.nn.modules.activation", "GELU"):
        return {"none": "gelu", "tanh": "gelu_tanh"}.get(module.approximate)
    return _ACTIVATION_CLASSES.get((cls.__module__, cls.__name__))


class FastformerModule:
    """Marker of the modules :func:`fastformer.optimize` puts in a model (idempotence)."""


class LinearActivation(torch.nn.Linear, FastformerModule):
    """``act(x @ weight.T + bias)`` in one GEMM (``fastformer.linear``); an ``nn.Linear``
    (same Parameters, same state_dict), with ``activation`` None for a plain Linear."""

    activation: str | None

    @classmethod
    def from_linear(cls, module: torch.nn.Linear, activation: str | None) -> LinearActivation:
        new = cls(module.in_features, module.out_features, bias=False, device="meta")
        new.weight = module.weight
        new.register_parameter("bias", module.bias)
        new.activation = activation
        new.train(module.training)
        return new

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not kernel_can_take(input, self, self.weight):
            return EAGER_ACTIVATIONS[self.activation](F.linear(input, self.weight, self.bias))
        return linear(input, self.weight, self.bias, self.activation)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, activation={self.activation}"


class Conv1DActivation(torch.nn.Module, FastformerModule):
    """GPT-2's ``Conv1D`` (weight (in_features, out_features)) with the activation fused; the
    kernel reads the transposed weight in place."""

    def __init__(self, module: torch.nn.Module, activation: str | None):
        super().__init__()
        self.nf, self.nx = module.nf, module.nx
        self.weight = module.weight  # (nx, nf): (in_features, out_features)
        self.register_parameter("bias", module.bias)
        self.activation = activation
        self.train(module.training)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        weight = self.weight.t()  # (nf, nx): Linear layout, a view
        if not kernel_can_take(input, self, weight):
            return EAGER_ACTIVATIONS[self.activation](F.linear(input, weight, self.bias))
        return linear(input, weight, self.bias, self.activation)

    def extra_repr(self) -> str:
        return f"nf={self.nf}, nx={self.nx}, activation={self.activation}"


class GatedMLP(torch.nn.Module, FastformerModule):
    """``out(dropout(act(gate(x)) * up(x)))``, gate and up in one kernel.

    The children keep the original names (LLaMA: ``gate_proj``, ``up_proj``, ``down_proj``;
    T5: ``wi_0``, ``wi_1``, ``wo`` and ``dropout``). ``cast_to_out`` reproduces T5's cast of the
    hidden state to ``wo``'s dtype (kept fp32 by ``_keep_in_fp32_modules``).
    """

    def __init__(self, names: tuple[str, str, str], modules, activation: str, cast_to_out: bool):
        super().__init__()
        self.gate_name, self.up_name, self.out_name = names
        for name, module in zip(names, modules[:3], strict=True):
            self.add_module(name, module)
        self.dropout = modules[3] if len(modules) > 3 else None
        self.activation = activation
        self.cast_to_out = cast_to_out

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        gate, up = getattr(self, self.gate_name), getattr(self, self.up_name)
        if kernel_can_take(input, self, gate.weight, up.weight):
            hidden = gated_linear(input, gate.weight, up.weight, self.activation)
        else:
            hidden = EAGER_ACTIVATIONS[self.activation](gate(input)) * up(input)
        if self.dropout is not None:
            hidden = self.dropout(hidden)
        out = getattr(self, self.out_name)
        if self.cast_to_out and hidden.dtype != out.weight.dtype:
            hidden = hidden.to(out.weight.dtype)
        return out(hidden)

    def extra_repr(self) -> str:
        return f"activation={self.activation}"
