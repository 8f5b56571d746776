"""Pooling and task heads on top of a transformer's hidden states.

- :func:`pool`: one vector per sequence from (batch, seq, hidden): the first token ("cls"),
  the mean over the tokens a mask keeps ("mean"), or the last kept token ("last", for causal
  decoders; left or right padding).
- :class:`Pooler`: BERT's pooler, ``tanh(dense(pool(x)))``; submodule ``dense`` as in BERT.
- :class:`SequenceClassificationHead`: pool (unless given pooled vectors), dropout, ``classifier``.
- :class:`TokenClassificationHead`: dropout, ``classifier`` on every token.
- :class:`LanguageModelingHead`: an optional transform (BERT's masked-LM
  ``dense -> activation -> norm``), then ``decoder`` to the vocabulary, whose weight may be
  tied to the token embedding (:meth:`LanguageModelingHead.tie_to`).

The GEMMs run on :func:`fastformer.linear` (the activation in its epilogue); pooling, tanh and
dropout are PyTorch's. Masks are bool (batch, seq), True = a real token.
"""

from __future__ import annotations

import torch

from fastformer.functional import linear
from fastformer.nn._checks import check_size
from fastformer.nn.embeddings import make_norm
from fastformer.nn.feed_forward import _resolve_activation

POOLING = ("cls", "mean", "last")


def pool(hidden: torch.Tensor, mode: str, mask: torch.Tensor | None = None) -> torch.Tensor:
    """(batch, seq, hidden) -> (batch, hidden); see the module docstring for ``mode``.

    ``mask``: (batch, seq) bool, True = a real token; None = every token. A row of "mean"
    without any kept token gives zeros; "cls" and "last" need seq >= 1.
    """
    if mode not in POOLING:
        raise ValueError(f"pooling={mode!r}; expected one of {POOLING}")
    if hidden.dim() != 3:  # a (seq, hidden) input would be read as (batch, seq)
        raise ValueError(f"hidden.shape={tuple(hidden.shape)}; expected (batch, seq, hidden)")
    if mode != "mean" and hidden.shape[1] == 0:
        raise ValueError(f"pooling={mode!r} of hidden.shape={tuple(hidden.shape)}: seq is 0")
    if mask is not None and (mask.dtype != torch.bool or mask.shape != hidden.shape[:2]):
        raise ValueError(
            f"mask: dtype={mask.dtype}, shape={tuple(mask.shape)}; expected bool "
            f"{tuple(hidden.shape[:2])}"
        )
    if mode == "cls":
        return hidden[:, 0]
    if mode == "mean":
        if mask is None and hidden.shape[1]:
            return hidden.mean(dim=1)
        if mask is None:  # no token at all: zeros, as for a row without kept tokens
            return hidden.new_zeros(hidden.shape[0], hidden.shape[2])
        weights = mask.to(hidden.dtype)[..., None]  # (B, S, 1)
        count = weights.sum(dim=1).clamp(min=1)  # (B, 1)
        return (hidden * weights).sum(dim=1) / count
    if mask is None:
        return hidden[:, -1]
    positions = torch.arange(hidden.shape[1], device=hidden.device)
    last = (positions * mask).argmax(dim=1)  # (B,): the last kept position
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


def _linear(module: torch.nn.Linear, x: torch.Tensor, activation: str | None = None):
    return linear(x, module.weight, module.bias, activation)


class Pooler(torch.nn.Module):
    """BERT's pooler: ``tanh(dense(pool(hidden, mode)))``."""

    def __init__(self, hidden_size: int, mode: str = "cls", device=None, dtype=None):
        super().__init__()
        if mode not in POOLING:
            raise ValueError(f"pooling={mode!r}; expected one of {POOLING}")
        self.mode = mode
        self.dense = torch.nn.Linear(hidden_size, hidden_size, device=device, dtype=dtype)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return torch.tanh(_linear(self.dense, pool(hidden, self.mode, mask)))


class SequenceClassificationHead(torch.nn.Module):
    """Logits (batch, num_labels) of each sequence.

    Args:
        pooling: "cls", "mean" or "last" to pool hidden states; None when the input is already
            pooled (batch, hidden), e.g. a :class:`Pooler`'s output.
        dropout: before the classifier.
    """

    def __init__(
        self,
        hidden_size: int,
        num_labels: int,
        *,
        pooling: str | None = "cls",
        dropout: float = 0.0,
        device=None,
        dtype=None,
    ):
        super().__init__()
        check_size("num_labels", num_labels)
        if pooling is not None and pooling not in POOLING:
            raise ValueError(f"pooling={pooling!r}; expected None or one of {POOLING}")
        self.pooling = pooling
        self.dropout = torch.nn.Dropout(dropout)
        self.classifier = torch.nn.Linear(hidden_size, num_labels, device=device, dtype=dtype)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.pooling is not None:
            hidden = pool(hidden, self.pooling, mask)
        return _linear(self.classifier, self.dropout(hidden))


class TokenClassificationHead(torch.nn.Module):
    """Logits (batch, seq, num_labels) of each token."""

    def __init__(
        self, hidden_size: int, num_labels: int, *, dropout: float = 0.0, device=None, dtype=None
    ):
        super().__init__()
        check_size("num_labels", num_labels)
        self.dropout = torch.nn.Dropout(dropout)
        self.classifier = torch.nn.Linear(hidden_size, num_labels, device=device, dtype=dtype)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return _linear(self.classifier, self.dropout(hidden))


class LanguageModelingHead(torch.nn.Module):
    """Logits (batch, seq, vocab_size) of each token.

    Args:
        transform: None, or an activation name: then ``norm(act(dense(x)))`` first (BERT's
            masked-LM head, "gelu").
        norm, eps: the transform's norm ("layer" or "rms").
        bias: a bias in ``decoder``.
    """

    def __init__(
        self,
        hidden_size: int,
        vocab_size: int,
        *,
        transform: str | None = None,
        norm: str = "layer",
        eps: float = 1e-5,
        bias: bool = False,
        device=None,
        dtype=None,
    ):
        super().__init__()
        factory = dict(device=device, dtype=dtype)
        self.activation = None if transform is None else _resolve_activation(transform)
        if transform is not None:
            self.dense = torch.nn.Linear(hidden_size, hidden_size, **factory)
            self.norm = make_norm(norm, hidden_size, eps, **factory)
        self.decoder = torch.nn.Linear(hidden_size, vocab_size, bias=bias, **factory)

    def tie_to(self, embedding: torch.nn.Embedding) -> None:
        """Share ``decoder.weight`` with a token embedding of shape (vocab_size, hidden_size)."""
        if embedding.weight.shape != self.decoder.weight.shape:
            raise ValueError(
                f"embedding weight {tuple(embedding.weight.shape)} cannot tie to the decoder "
                f"weight {tuple(self.decoder.weight.shape)}"
            )
        self.decoder.weight = embedding.weight

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.activation is not None:
            hidden = self.norm(_linear(self.dense, hidden, self.activation))
        return _linear(self.decoder, hidden)
