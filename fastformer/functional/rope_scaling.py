"""Rotary frequencies (``inv_freq``) and attention factor from a model's RoPE parameters.

One function per scaling type, written from the formulas (RoPE, position interpolation, NTK,
Llama 3.1, YaRN), computed in fp32 with torch in the order eager Hugging Face models use, so
that a model's angles are the ones it was trained with (the tests check equality with
``transformers.modeling_rope_utils.ROPE_INIT_FUNCTIONS``). ``rotary_dim = int(head_dim *
partial_rotary_factor)`` (from a config: ``partial_rotary_factor``, ``rotary_pct`` or
GPT-J's ``rotary_dim``; per-layer parameters by ``layer_type``); base frequencies
``inv_freq[j] = 1 / theta ** (2j / rotary_dim)``.

- ``default``: the base frequencies.
- ``linear`` (position interpolation): divided by ``factor``.
- ``dynamic`` (NTK-aware): theta grows with the sequence length past
  ``max_position_embeddings``: ``theta * (factor * L / max_pos - (factor - 1)) ** (d / (d - 2))``
  with ``L = max(seq_len, max_pos)``. The caller passes the length (the module does).
- ``llama3``: wavelengths ``2 pi / inv_freq`` above ``original_max / low_freq_factor`` are divided
  by ``factor``, those below ``original_max / high_freq_factor`` kept, and those between blended
  linearly in ``original_max / wavelength``.
- ``yarn``: a ramp over the frequency index between the dims that turn ``beta_fast`` and
  ``beta_slow`` times over ``original_max`` positions blends the base frequencies (fast dims)
  with the interpolated ones (slow dims); attention factor ``0.1 ln(factor) + 1`` (or the ratio
  of two such terms with ``mscale`` and ``mscale_all_dim``).

``longrope`` and ``proportional`` are not implemented (NotImplementedError names them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch

ROPE_TYPES = ("default", "linear", "dynamic", "llama3", "yarn")
DEFAULT_THETA = 10000.0
# YaRN's defaults (Peng et al. 2023): full extrapolation for dims turning 32+ times over the
# original context, full interpolation for those turning once or less.
YARN_BETA_FAST = 32.0
YARN_BETA_SLOW = 1.0
YARN_MSCALE_SLOPE = 0.1  # attention factor = 0.1 * mscale * ln(factor) + 1 (YaRN, eq. 21)
# Widens a zero-width YaRN ramp so that it does not divide by zero (as transformers does).
YARN_RAMP_EPS = 0.001


@dataclass
class RopeParameters:
    """A model's RoPE parameters, with the names Hugging Face configs use."""

    head_dim: int
    rope_type: str = "default"
    rope_theta: float = DEFAULT_THETA
    partial_rotary_factor: float = 1.0
    factor: float | None = None
    max_position_embeddings: int | None = None
    original_max_position_embeddings: int | None = None
    low_freq_factor: float | None = None
    high_freq_factor: float | None = None
    beta_fast: float | None = None
    beta_slow: float | None = None
    mscale: float | None = None
    mscale_all_dim: float | None = None
    attention_factor: float | None = None
    truncate: bool = True

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.partial_rotary_factor)

    @classmethod
    def from_config(cls, config, layer_type: str | None = None) -> RopeParameters:
        """From a transformers config (``rope_parameters`` and the head size).

        Per-layer ``rope_parameters`` (Gemma 3: ``{"sliding_attention": {...},
        "full_attention": {...}}``) need ``layer_type``, one of their keys; a config with one
        set of parameters ignores it (they apply to every layer). Partial rotary comes from
        ``partial_rotary_factor``, ``rotary_pct`` (GPT-NeoX) or ``rotary_dim`` (GPT-J, CodeGen:
        features per head).
        """
        params = dict(_layer_entry(getattr(config, "rope_parameters", None), layer_type) or {})
        legacy = _layer_entry(getattr(config, "rope_scaling", None), layer_type)
        if isinstance(legacy, dict):
            params = {**legacy, **params}
        params.setdefault("rope_type", params.pop("type", "default"))
        params.setdefault("rope_theta", getattr(config, "rope_theta", None) or DEFAULT_THETA)
        head_dim = getattr(config, "head_dim", None)
        head_dim = head_dim or config.hidden_size // config.num_attention_heads
        partial = getattr(config, "partial_rotary_factor", None)
        if partial is None:
            partial = getattr(config, "rotary_pct", None)
        rotary_dim = getattr(config, "rotary_dim", None)
        if partial is None and rotary_dim is not None:
            if not 0 < rotary_dim <= head_dim:
                raise ValueError(
                    f"config.rotary_dim={rotary_dim} must be in (0, head_dim={head_dim}]"
                )
            partial = rotary_dim / head_dim
        if partial is not None:
            params.setdefault("partial_rotary_factor", partial)
        max_pos = getattr(config, "max_position_embeddings", None)
        params.setdefault("max_position_embeddings", max_pos)
        if params["rope_type"] in ("llama3", "yarn"):
            original = getattr(config, "original_max_position_embeddings", None)
            params.setdefault("original_max_position_embeddings", original or max_pos)
        known = {field.name for field in fields(cls)}
        return cls(head_dim=head_dim, **{k: v for k, v in params.items() if k in known})


def _is_per_layer(params) -> bool:
    if not isinstance(params, dict):
        return False
    values = list(params.values())
    is_entry = [value is None or isinstance(value, dict) for value in values]
    return all(is_entry) and any(isinstance(value, dict) for value in values)


def _layer_entry(params, layer_type):
    """The entry of per-layer parameters for ``layer_type``; other parameters as they are."""
    if not _is_per_layer(params):
        return params
    if layer_type is None:
        raise ValueError(
            f"the config's RoPE parameters are per layer type ({sorted(params)}); pass "
            "layer_type= one of them"
        )
    if layer_type not in params:
        raise ValueError(f"layer_type={layer_type!r} is not one of {sorted(params)}")
    if params[layer_type] is None:
        raise ValueError(f"layer_type={layer_type!r} has no RoPE parameters in the config")
    return params[layer_type]


def _base_inv_freq(theta: float, rotary_dim: int, device) -> torch.Tensor:
    exponents = torch.arange(0, rotary_dim, 2, dtype=torch.int64).to(device, torch.float32)
    return 1.0 / (theta ** (exponents / rotary_dim))


def _required(params: RopeParameters, name: str):
    value = getattr(params, name)
    if value is None:
        raise ValueError(f"{name}=None: rope_type={params.rope_type!r} needs it")
    return value


def _dynamic(params: RopeParameters, seq_len, device) -> torch.Tensor:
    factor = _required(params, "factor")
    max_pos = _required(params, "max_position_embeddings")
    length = max_pos if seq_len is None else max(int(seq_len), max_pos)
    dim = params.rotary_dim
    theta = params.rope_theta * (factor * length / max_pos - (factor - 1)) ** (dim / (dim - 2))
    return _base_inv_freq(theta, dim, device)


def _llama3(params: RopeParameters, device) -> torch.Tensor:
    factor = _required(params, "factor")
    low, high = _required(params, "low_freq_factor"), _required(params, "high_freq_factor")
    original = _required(params, "original_max_position_embeddings")
    inv_freq = _base_inv_freq(params.rope_theta, params.rotary_dim, device)
    wavelength = 2 * math.pi / inv_freq
    slow = wavelength > original / low  # long wavelengths: interpolate fully
    fast = wavelength < original / high  # short wavelengths: keep
    scaled = torch.where(slow, inv_freq / factor, inv_freq)
    blend = (original / wavelength - low) / (high - low)
    blended = (1 - blend) * scaled / factor + blend * scaled
    return torch.where(~slow & ~fast, blended, scaled)


def _yarn_mscale(factor: float, mscale: float = 1.0) -> float:
    return 1.0 if factor <= 1 else YARN_MSCALE_SLOPE * mscale * math.log(factor) + 1.0


def _yarn(params: RopeParameters, device) -> tuple[torch.Tensor, float]:
    original = _required(params, "original_max_position_embeddings")
    factor = params.factor
    if factor is None:
        factor = _required(params, "max_position_embeddings") / original
    attention = params.attention_factor
    if attention is None:
        if params.mscale and params.mscale_all_dim:
            attention = _yarn_mscale(factor, params.mscale) / _yarn_mscale(
                factor, params.mscale_all_dim
            )
        else:
            attention = _yarn_mscale(factor)
    beta_fast = params.beta_fast or YARN_BETA_FAST
    beta_slow = params.beta_slow or YARN_BETA_SLOW
    dim, theta = params.rotary_dim, params.rope_theta

    def dim_turning(turns: float) -> float:
        # The dim index whose frequency turns `turns` times over `original` positions.
        return dim * math.log(original / (turns * 2 * math.pi)) / (2 * math.log(theta))

    low, high = dim_turning(beta_fast), dim_turning(beta_slow)
    if params.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += YARN_RAMP_EPS
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    keep = (1 - ramp).to(device)  # 1: extrapolate (fast dims), 0: interpolate (slow dims)
    powers = theta ** (torch.arange(0, dim, 2).to(device, torch.float32) / dim)
    inv_freq = (1.0 / (factor * powers)) * (1 - keep) + (1.0 / powers) * keep
    return inv_freq, float(attention)


def rope_init(
    params: RopeParameters, *, seq_len: int | None = None, device=None
) -> tuple[torch.Tensor, float]:
    """``(inv_freq, attention_factor)``: (rotary_dim // 2,) fp32 on ``device``, and a float.

    ``seq_len`` matters for ``dynamic`` only (the longest position + 1 of the call).
    """
    rope_type = params.rope_type
    if rope_type not in ROPE_TYPES:
        raise NotImplementedError(f"rope_type={rope_type!r} is not supported; one of {ROPE_TYPES}")
    dim = params.rotary_dim
    if dim < 2 or dim % 2:
        raise ValueError(
            f"rotary_dim={dim} (head_dim={params.head_dim} * partial_rotary_factor="
            f"{params.partial_rotary_factor}) must be even and at least 2"
        )
    if rope_type == "default":
        return _base_inv_freq(params.rope_theta, dim, device), 1.0
    if rope_type == "linear":
        return _base_inv_freq(params.rope_theta, dim, device) / _required(params, "factor"), 1.0
    if rope_type == "dynamic":
        return _dynamic(params, seq_len, device), 1.0
    if rope_type == "llama3":
        return _llama3(params, device), 1.0
    return _yarn(params, device)
