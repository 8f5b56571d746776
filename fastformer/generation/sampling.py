"""Choosing the next token from logits: greedy, temperature, top-k and top-p, with a seed.

Semantics (those of Hugging Face ``generate``'s logits warpers, in the same order):

- ``temperature == 0``: greedy, ``argmax`` of the logits (the first index on a tie).
- ``temperature > 0``: the logits (in fp32) are divided by the temperature, then top-k keeps
  the tokens whose logit is at least the k-th largest (ties at the k-th value stay), then top-p
  keeps the smallest set of most likely tokens whose probability reaches ``top_p`` (a token is
  dropped when the tokens more likely than it already hold ``top_p`` of the mass; the most
  likely token always stays); one token is drawn from the softmax of what is left.

Design: the draw uses ``torch.multinomial`` with a ``torch.Generator`` of its own on the logits'
device, seeded from ``seed``, so a seed gives the same tokens on every run on the same device
and the global RNG is neither read nor advanced. Filtering runs on a (batch, vocab) tensor with
sorting, a few elementwise ops and no host sync. Limits: no repetition penalty, min-p or
typical sampling; one setting for the whole batch.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


@dataclass(frozen=True)
class SamplingConfig:
    """How the next token is chosen. ``temperature=0`` (the default) is greedy decoding.

    Args:
        temperature: 0 for greedy, or a finite value > 0 that divides the logits.
        top_k: keep the k most likely tokens (>= 1), or None; needs ``temperature > 0``.
        top_p: keep the most likely tokens up to this much probability (0 < top_p <= 1), or
            None; needs ``temperature > 0``.
        seed: seeds the sampler's own generator (an int >= 0); None draws a fresh seed.
    """

    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        t = self.temperature
        if not _is_real(t):
            raise TypeError(f"temperature={t!r} must be a real number")
        if not math.isfinite(t) or t < 0:
            raise ValueError(f"temperature={t}; expected 0 (greedy) or a finite value > 0")
        if self.top_k is not None:
            if not _is_int(self.top_k):
                raise TypeError(f"top_k={self.top_k!r} must be an int or None")
            if self.top_k < 1:
                raise ValueError(f"top_k={self.top_k}; expected at least 1")
        if self.top_p is not None:
            if not _is_real(self.top_p):
                raise TypeError(f"top_p={self.top_p!r} must be a real number or None")
            if not 0 < self.top_p <= 1:
                raise ValueError(f"top_p={self.top_p}; expected 0 < top_p <= 1")
        if self.seed is not None:
            if not _is_int(self.seed):
                raise TypeError(f"seed={self.seed!r} must be an int or None")
            if self.seed < 0:
                raise ValueError(f"seed={self.seed}; expected an int >= 0")
        if t == 0 and (self.top_k is not None or self.top_p is not None):
            raise ValueError(
                f"top_k={self.top_k}, top_p={self.top_p} have no effect with temperature=0 "
                "(greedy decoding); set a temperature > 0 to sample"
            )

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def _check_logits(logits: torch.Tensor) -> None:
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"logits must be a torch.Tensor, got {type(logits).__name__}")
    if logits.dim() != 2 or logits.shape[1] == 0:
        raise ValueError(
            f"logits.shape={tuple(logits.shape)}; expected (batch, vocab) with vocab >= 1"
        )
    if not logits.dtype.is_floating_point:
        raise TypeError(f"logits.dtype={logits.dtype}; expected a floating dtype")


def filter_top_k(logits: torch.Tensor, top_k: int) -> torch.Tensor:
    """(batch, vocab) logits with -inf where a token is below the ``top_k``-th largest logit of
    its row (a new tensor; ties at the k-th value are kept; k past the vocab keeps all)."""
    _check_logits(logits)
    if not _is_int(top_k) or top_k < 1:
        raise ValueError(f"top_k={top_k!r}; expected an int >= 1")
    k = min(int(top_k), logits.shape[-1])
    kth = torch.topk(logits, k, dim=-1).values[:, -1:]  # (B, 1)
    return logits.masked_fill(logits < kth, float("-inf"))


def filter_top_p(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """(batch, vocab) logits with -inf on the tokens outside each row's nucleus (a new tensor):
    in order of probability, a token is dropped when the tokens before it hold ``top_p`` or
    more of the row's probability; the most likely token always stays. ``top_p=1`` keeps every
    token (a copy), as rounding could otherwise drop tokens of (near) zero probability."""
    _check_logits(logits)
    if not _is_real(top_p) or not 0 < top_p <= 1:
        raise ValueError(f"top_p={top_p!r}; expected 0 < top_p <= 1")
    if top_p == 1:
        return logits.clone()
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (B, V)
    probs = torch.softmax(sorted_logits.float(), dim=-1)
    mass_before = torch.cumsum(probs, dim=-1) - probs  # (B, V): mass of the tokens before each
    drop_sorted = mass_before >= top_p
    drop_sorted[:, 0] = False
    drop = torch.zeros_like(drop_sorted).scatter_(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


class Sampler:
    """Chooses one token per row from (batch, vocab) logits, as ``config`` says.

    ``sampler(logits)`` returns (batch,) int64 token ids on the logits' device. The generator
    lives on ``device`` and is created (and seeded) once, so successive calls continue one
    random stream.
    """

    def __init__(self, config: SamplingConfig, device: torch.device | str) -> None:
        if not isinstance(config, SamplingConfig):
            raise TypeError(f"config must be a SamplingConfig, got {type(config).__name__}")
        self.config = config
        self.generator = None
        if not config.greedy:
            self.generator = torch.Generator(device=device)
            if config.seed is None:
                self.generator.seed()
            else:
                self.generator.manual_seed(config.seed)

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        """The (batch, vocab) fp32 logits a sampling draw uses: scaled by the temperature and
        filtered by top-k and top-p."""
        config = self.config
        scores = logits.float() / config.temperature
        if config.top_k is not None:
            scores = filter_top_k(scores, config.top_k)
        if config.top_p is not None:
            scores = filter_top_p(scores, config.top_p)
        return scores

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        _check_logits(logits)
        if self.config.greedy:
            return logits.argmax(dim=-1)
        probs = torch.softmax(self.scores(logits), dim=-1)  # (B, V) fp32
        return torch.multinomial(probs, 1, generator=self.generator).squeeze(1)  # (B,)
