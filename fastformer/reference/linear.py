"""Eager references of the feed-forward GEMMs (see ``fastformer.reference``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

_ACTIVATIONS = {
    None: lambda z: z,
    "gelu": F.gelu,
    "gelu_tanh": lambda z: F.gelu(z, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
}


def activation(z: torch.Tensor, name: str | None) -> torch.Tensor:
    """The activation called ``name`` ("gelu", "gelu_tanh", "relu", "silu" or None) of ``z``."""
    return _ACTIVATIONS[name](z)


def linear(x, weight, bias=None, activation=None):
    """``activation(F.linear(x, weight, bias))``, rounding where an eager model rounds."""
    return _ACTIVATIONS[activation](F.linear(x, weight, bias))


def gated_linear(x, weight_gate, weight_up, activation="silu"):
    """``activation(x @ weight_gate.T) * (x @ weight_up.T)``, as LLaMA's MLP computes it."""
    return _ACTIVATIONS[activation](F.linear(x, weight_gate)) * F.linear(x, weight_up)
